//! One package's work as it crosses machines: the files by digest, the command, the result, and
//! the typed reasons a remote run did not happen.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_field, check_name, BadPath, NodeId};

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
    /// Bytes; a build request's must be its blob's (checked as the build starts).
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
    /// The tools and runtimes the package declared: the only ones beyond the system's own
    /// locations its sandbox lets it use.
    #[serde(default)]
    pub tools: Vec<String>,
}

impl Task {
    /// Checks every path and name of a task before any of it touches a disk: the build id and
    /// the package become directory names of the sandbox, each file is laid out at its path and
    /// each output read from its path. Used wherever a task enters a node (a peer's request, the
    /// executor), so a task from anywhere cannot name a place outside its sandbox.
    /// `(table, path)` when the package is an expansion of a pattern package, named
    /// `table[path]` with a single-name table and a project path.
    fn expansion(&self) -> Option<(&str, &str)> {
        let (table, path) = self.package.strip_suffix(']')?.split_once('[')?;
        (check_name(table).is_ok() && super::check_path(path).is_ok()).then_some((table, path))
    }

    /// The package's sandbox directory name: the package itself, or for an expansion (whose
    /// name holds a path) its table and a digest of the whole name.
    pub fn sandbox_name(&self) -> String {
        match self.expansion() {
            Some((table, _)) => format!("{table}-{}", &blake3::hash(self.package.as_bytes()).to_hex()[..16]),
            None => self.package.clone(),
        }
    }

    pub fn check_paths(&self) -> Result<(), BadPath> {
        check_name(&self.build_id).map_err(|e| BadPath::new("task.build_id", &self.build_id, e))?;
        // A build's directory sits beside the node's own entries of its sandboxes' root (the
        // pool of emptied sandboxes, `.free`): a requester's build id may not name one.
        if self.build_id.starts_with('.') {
            return Err(BadPath::new("task.build_id", &self.build_id, "starts with '.', which build ids never do"));
        }
        if self.expansion().is_none() {
            check_name(&self.package).map_err(|e| BadPath::new("task.package", &self.package, e))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            check_field(|| format!("task.files[{i}].path"), &f.path)?;
            if !seen.insert(f.path.as_str()) {
                return Err(BadPath::new(format!("task.files[{i}].path"), &f.path, "appears twice"));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            check_field(|| format!("task.outputs[{i}]"), o)?;
        }
        Ok(())
    }

    /// The action key: what determines the result. Unchanged key ⇒ cache hit.
    ///
    /// It is the BLAKE3 of a JSON document — `{"env", "files": [[path, digest, executable]…]
    /// sorted by path, "invocation", "outputs", "tools", "v": 1}`, keys in that order — written
    /// straight into the hasher. (It used to be built as a `serde_json::Value` from a sorted copy
    /// of the files and then printed: the same bytes, but a build computes a key per package at
    /// its estimate and again at placement, and that copy and tree were ~9 % of a node's CPU in
    /// a cached build of a 30-package C project; issue 14.)
    pub fn action_key(&self, tool_versions: &[(String, String)]) -> String {
        /// The key's document, fields in the order a JSON object's keys print (sorted).
        #[derive(Serialize)]
        struct KeyDoc<'a> {
            env: &'a std::collections::BTreeMap<String, String>,
            files: Vec<(&'a str, &'a str, bool)>,
            invocation: &'a Invocation,
            outputs: &'a [String],
            tools: &'a [(String, String)],
            v: u32,
        }
        let mut files: Vec<(&str, &str, bool)> =
            self.files.iter().map(|f| (f.path.as_str(), f.digest.as_str(), f.executable)).collect();
        // Paths are unique in a checked task; sorting the triples orders them as the files were.
        files.sort_unstable();
        let doc = KeyDoc {
            env: &self.env,
            files,
            invocation: &self.invocation,
            outputs: &self.outputs,
            tools: tool_versions,
            v: ACTION_KEY_VERSION,
        };
        let mut hasher = blake3::Hasher::new();
        // Writing into a hasher cannot fail, and these types always serialize.
        let _ = serde_json::to_writer(&mut hasher, &doc);
        hasher.finalize().to_hex().to_string()
    }
}

/// The version of the action key's document: a new one misses every cached result.
pub const ACTION_KEY_VERSION: u32 = 1;

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

    /// Whether this result answers a task that declares `declared`: a success names exactly
    /// those outputs, at their paths and in their order (what an executor collects), and a
    /// failure names none. A node's result that does not — a broken or hostile member's, naming
    /// others, leaving one out or repeating one — is not taken: its outputs would go on to
    /// later packages as inputs and to the CLI. Says what is wrong otherwise.
    pub fn answers(&self, declared: &[String]) -> Result<(), String> {
        let paths = || self.outputs.iter().map(|f| f.path.as_str());
        let answers =
            if self.success() { paths().eq(declared.iter().map(String::as_str)) } else { self.outputs.is_empty() };
        if answers {
            return Ok(());
        }
        let shown =
            |paths: Vec<&str>| paths.iter().map(|p| format!("'{}'", p.escape_debug())).collect::<Vec<_>>().join(", ");
        Err(format!(
            "its result names the outputs [{}] but the package declares [{}]",
            shown(paths().take(8).collect()),
            shown(declared.iter().map(String::as_str).collect())
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        let file = |path: &str| FileRef { path: path.into(), digest: "0".repeat(64), executable: false, size: 1 };
        Task {
            build_id: "b_0123456789ab".into(),
            package: "app".into(),
            invocation: Invocation::Shell("true".into()),
            env: Default::default(),
            files: vec![file("src/a.c"), file("src/b.c")],
            outputs: vec!["out/app".into()],
            tools: vec![],
        }
    }

    #[test]
    fn a_result_answers_only_with_the_outputs_its_package_declares() {
        let declared: Vec<String> = vec!["obj/a.o".into(), "app".into()];
        let result = |exit: i32, outputs: &[&str]| TaskResult {
            exit_code: Some(exit),
            outputs: outputs
                .iter()
                .map(|p| FileRef { path: p.to_string(), digest: "0".repeat(64), executable: false, size: 1 })
                .collect(),
            output_tail: String::new(),
            duration_ms: 1,
            cpu_ms: 1,
            error: None,
        };
        assert_eq!(result(0, &["obj/a.o", "app"]).answers(&declared), Ok(()));
        assert_eq!(result(1, &[]).answers(&declared), Ok(()), "a failure names none");
        assert_eq!(result(0, &[]).answers(&[]), Ok(()));
        for (exit, named) in [
            (0, &["obj/a.o", "app", "src/main.c"][..]),
            (0, &["obj/a.o"][..]),
            (0, &["app", "obj/a.o"][..]),
            (0, &["obj/a.o", "obj/a.o"][..]),
            (0, &["obj/a.o", ".git/hooks/pre-commit"][..]),
            (1, &["src/main.c"][..]),
        ] {
            let why = result(exit, named).answers(&declared).expect_err("refused");
            assert!(why.ends_with("but the package declares ['obj/a.o', 'app']"), "{why}");
        }
    }

    #[test]
    fn a_task_naming_a_place_outside_its_sandbox_is_refused() {
        assert_eq!(task().check_paths(), Ok(()));
        type Spoil = fn(&mut Task);
        let cases: Vec<(Spoil, &str)> = vec![
            (|t| t.files[1].path = "../../../../x".into(), "task.files[1].path: '../../../../x' has a '..'"),
            (|t| t.files[0].path = "/tmp/x".into(), "task.files[0].path: '/tmp/x' is absolute"),
            (|t| t.files[1].path = "src/a.c".into(), "task.files[1].path: 'src/a.c' appears twice"),
            (|t| t.outputs.push("../admin.key".into()), "task.outputs[1]: '../admin.key' has a '..'"),
            (|t| t.build_id = "../..".into(), "task.build_id: '../..' has a '..'"),
            (|t| t.package = "a/b".into(), "task.package: 'a/b' must be a single name"),
            (|t| t.package = "t[../x]".into(), "task.package: 't[../x]' must be a single name"),
            (|t| t.build_id = ".free".into(), "task.build_id: '.free' starts with '.'"),
            (|t| t.files[0].path = ".tmp/a.c".into(), "task.files[0].path: '.tmp/a.c' is under '.tmp'"),
            (|t| t.outputs[0] = ".tmp/app".into(), "task.outputs[0]: '.tmp/app' is under '.tmp'"),
        ];
        for (spoil, want) in cases {
            let mut t = task();
            spoil(&mut t);
            let e = t.check_paths().expect_err(want).to_string();
            assert!(e.starts_with(want), "got '{e}', want '{want}…'");
        }
        // A pattern package's expansion names a project path; its sandbox is one directory.
        let expansion = Task { package: "thumbs[images/a/b.jpg]".into(), ..task() };
        assert_eq!(expansion.check_paths(), Ok(()));
        let dir = expansion.sandbox_name();
        assert!(dir.starts_with("thumbs-") && check_name(&dir).is_ok(), "{dir}");
    }

    /// Keys already in nodes' action caches must still be found: the key is the hash of the same
    /// bytes the `serde_json::Value` it used to be built as printed.
    #[test]
    fn the_action_key_is_the_one_nodes_have_cached() {
        let written_before = |t: &Task, tools: &[(String, String)]| {
            let mut files = t.files.clone();
            files.sort();
            let doc = serde_json::json!({
                "v": 1,
                "invocation": t.invocation,
                "env": t.env,
                "files": files.iter().map(|f| (&f.path, &f.digest, f.executable)).collect::<Vec<_>>(),
                "outputs": t.outputs,
                "tools": tools,
            });
            blake3::hash(doc.to_string().as_bytes()).to_hex().to_string()
        };
        let mut argv = task();
        argv.invocation = Invocation::Argv(vec!["cc".into(), "-c".into(), "a \"quoted\" é\n".into()]);
        argv.env = [("Z".to_string(), "1".to_string()), ("A".to_string(), "x=y".to_string())].into();
        argv.files.reverse();
        argv.files[0].executable = true;
        argv.files.push(FileRef { path: "include/z.h".into(), digest: "f".repeat(64), executable: false, size: 9 });
        let tools = [("gcc".to_string(), "12.2.0".to_string()), ("ar".to_string(), "2.40".to_string())];
        for (t, tools) in [(task(), &[][..]), (argv.clone(), &tools[..]), (argv, &[][..])] {
            assert_eq!(t.action_key(tools), written_before(&t, tools));
        }
        // Pinned: a change of the document's form shows here, not as every cache entry missing.
        assert_eq!(&task().action_key(&[])[..16], "03de62d1c9839bdc");
    }
}
