//! One package's work as it crosses machines: the files by digest, the command, the result, and
//! the typed reasons a remote run did not happen.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::NodeId;

/// Output kept for history and error messages.
pub const TAIL_BYTES: usize = 16 * 1024;

/// A file of a build: where it goes, what it holds, whether it is executable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct FileRef {
    /// Project-relative, `/`-separated.
    pub path: String,
    /// BLAKE3 of the contents, 64 hex digits.
    pub digest: String,
    pub executable: bool,
    pub size: u64,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Invocation {
    Argv(Vec<String>),
    Shell(String),
}

/// One package's work, self-contained: any node holding the blobs can run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub build_id: String,
    pub package: String,
    pub invocation: Invocation,
    pub env: std::collections::BTreeMap<String, String>,
    /// Inputs and dependencies' outputs.
    pub files: Vec<FileRef>,
    pub outputs: Vec<String>,
}

impl Task {
    /// The action key: what determines the result. Unchanged key ⇒ cache hit.
    pub fn action_key(&self, tool_versions: &[(String, String)]) -> String {
        let mut files = self.files.clone();
        files.sort();
        let doc = serde_json::json!({
            "v": 1,
            "invocation": self.invocation,
            "env": self.env,
            "files": files.iter().map(|f| (&f.path, &f.digest, f.executable)).collect::<Vec<_>>(),
            "outputs": self.outputs,
            "tools": tool_versions,
        });
        blake3::hash(doc.to_string().as_bytes()).to_hex().to_string()
    }
}

/// What running a task did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskResult {
    pub exit_code: Option<i32>,
    pub outputs: Vec<FileRef>,
    /// The last [`TAIL_BYTES`] of stdout and stderr together.
    pub output_tail: String,
    pub duration_ms: u64,
    /// CPU time (user + system) of the command and the descendants it waited for: over the
    /// duration, how many cores the package really kept busy.
    #[serde(default)]
    pub cpu_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl TaskResult {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.exit_code == Some(0)
    }
}

/// A package to run on another node, with the leases it needs there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub task_id: u64,
    pub task: Task,
    pub cores: u64,
    pub memory_bytes: Option<u64>,
    /// The requester's coordinator epoch; the owner refuses a stale one.
    pub epoch: u64,
    /// The storage volume the configuration selected on the receiver, if any; used only when
    /// it is one of the receiver's own volumes.
    #[serde(default)]
    pub volume: Option<String>,
}

/// Why a package did not run (or did not finish) where it was sent. These travel between nodes,
/// so the requester acts on the variant, never on text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum RemoteError {
    /// The link to the node closed, or it was not online: try another node.
    #[error("lost node {0}")]
    LostNode(NodeId),
    /// The node has no room now (the lease it could not get): try later or elsewhere.
    #[error("busy: {0}")]
    Busy(String),
    /// The node will not run it (its configuration says why): try another node.
    #[error("refused: {0}")]
    Refused(String),
    /// The build was cancelled; the process group was killed.
    #[error("cancelled")]
    Cancelled,
    /// The executor is not running (the node is shutting down).
    #[error("the executor stopped")]
    Stopped,
    /// The executor itself failed (not the package: that is a [`TaskResult`] with an error).
    #[error("{0}")]
    Failed(String),
}
