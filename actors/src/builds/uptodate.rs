//! Up to date without asking the node: what lets `buildnet build` answer "nothing changed" by
//! itself, as make and ninja do, instead of sending a request whose every package the node would
//! find in its cache.
//!
//! Two files in the node's data dir make that safe:
//! - [`TOOLS_FILE`], kept by the daemon ([`PoolTools`]): one digest of the tool versions of every
//!   node it knows, its own and each peer's advert, rewritten whenever one changes. An action key
//!   holds the versions of the tools a package uses, so a changed version may change a result.
//! - one [`Record`] per project under [`RECORDS_DIR`], kept by the CLI: the digest of the last
//!   request it completed through that node, the tools line it read before sending it, and the
//!   stamps of the inputs it hashed and of the outputs it wrote back.
//!
//! A build is up to date when its request would be byte for byte the recorded one (the inputs'
//! stamps let unchanged files keep their digests without being read), the tools line is the
//! recorded one, and every recorded output is still the file written, by its stamp or, when the
//! stamp was taken too close to a change to vouch for it, by its digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::inputs::{Stamp, Watch};
use super::runner::BuildRequest;
use crate::cas::{self, FileRef};
use crate::mesh::PeerView;
use crate::node::NodeStatus;
use crate::wire::NodeId;

/// The daemon's line of tool versions, in its data dir.
pub const TOOLS_FILE: &str = "pool-tools";
/// The CLI's records, one file per project, in the node's data dir.
pub const RECORDS_DIR: &str = "up-to-date";
/// A record's format; a record of another version is not read.
const RECORD_VERSION: u32 = 3;

type Versions = BTreeMap<String, Option<String>>;

/// Writes [`TOOLS_FILE`]: the node sets its own tools at start and after each rescan, the pool the
/// peers' whenever the peer table changes; the file changes only when the versions do.
pub struct PoolTools {
    path: PathBuf,
    state: Mutex<ToolsState>,
}

#[derive(Default)]
struct ToolsState {
    local: Option<(NodeId, [u8; 32])>,
    /// Each peer's versions as a digest, with the advert they were read from: a peer table
    /// arrives on every liveness change, and only a new advert is read again (a simulation
    /// holds hundreds of engines, each with hundreds of peers).
    peers: BTreeMap<NodeId, (Arc<NodeStatus>, [u8; 32])>,
    written: Option<String>,
}

/// One node's tool versions as a digest.
fn digest_of(versions: &Versions) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    // Writing into a hasher cannot fail, and a map of strings always serializes.
    let _ = serde_json::to_writer(&mut hasher, versions);
    *hasher.finalize().as_bytes()
}

impl PoolTools {
    pub fn new(data_dir: &Path) -> Arc<PoolTools> {
        let path = data_dir.join(TOOLS_FILE);
        // A line from before this start is not this node's: it is written again once known.
        let _ = std::fs::remove_file(&path);
        Arc::new(PoolTools { path, state: Mutex::default() })
    }

    pub fn set_local(&self, node: &NodeId, versions: Versions) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.local = Some((node.clone(), digest_of(&versions)));
        self.write(&mut state);
    }

    pub fn set_peers(&self, peers: &[PeerView]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        let mut next = BTreeMap::new();
        for peer in peers {
            let Some(advert) = &peer.advert else { continue };
            let digest = match state.peers.get(&peer.node_id) {
                Some((seen, digest)) if Arc::ptr_eq(seen, advert) => *digest,
                known => {
                    let fresh = digest_of(&advert.resources.tool_versions());
                    changed |= known.is_none_or(|(_, digest)| *digest != fresh);
                    fresh
                }
            };
            next.insert(peer.node_id.clone(), (advert.clone(), digest));
        }
        changed |= next.len() != state.peers.len();
        state.peers = next;
        if changed {
            self.write(&mut state);
        }
    }

    /// Writes the line if the node's own tools are known and the digest changed: beside the file,
    /// then renamed over it, so a reader sees the old line or the new one. The line also holds
    /// this binary's version and the action key's, so an upgraded node is asked again.
    fn write(&self, state: &mut ToolsState) {
        let Some((local, own)) = &state.local else { return };
        let mut all: BTreeMap<&NodeId, &[u8; 32]> = state.peers.iter().map(|(id, (_, d))| (id, d)).collect();
        all.insert(local, own);
        let mut hasher = blake3::Hasher::new();
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(&crate::wire::ACTION_KEY_VERSION.to_le_bytes());
        for (id, digest) in all {
            hasher.update(id.as_str().as_bytes());
            hasher.update(digest);
        }
        let line = hasher.finalize().to_hex().to_string();
        if state.written.as_ref() == Some(&line) {
            return;
        }
        // One writer per data dir (the lock): a fixed name, which a write killed midway leaves
        // for the next one to overwrite.
        match replace(&self.path, &self.path.with_extension("new"), format!("{line}\n").as_bytes()) {
            Ok(()) => state.written = Some(line),
            Err(e) => {
                // The old line must not outlive the versions it stood for.
                let _ = std::fs::remove_file(&self.path);
                state.written = None;
                log::warn!("{}: {e}; builds will ask the node even when nothing changed", self.path.display());
            }
        }
    }
}

/// Writes `bytes` to `tmp` beside `path` and renames it over `path`, so a reader sees the old
/// file or the new one.
fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(tmp, bytes).and_then(|()| std::fs::rename(tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(tmp);
    })
}

/// The tools line in `data_dir`, if the daemon wrote one and is still running (it holds the
/// data dir's lock, `node::lock_data_dir`): a line left by a node killed, or whose machine
/// stopped, is kept true by nobody, so it is not trusted.
pub fn read_tools(data_dir: &Path) -> Option<String> {
    if !crate::node::data_dir_in_use(data_dir) {
        return None;
    }
    let line = std::fs::read_to_string(data_dir.join(TOOLS_FILE)).ok()?;
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

/// What the CLI keeps of the last build of one project it completed through one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    v: u32,
    /// [`request_digest`] of the request with `force` cleared (a forced build's outputs answer
    /// the same request without it).
    pub request: String,
    /// The tools line as read before the request was sent.
    pub tools: String,
    pub build_id: String,
    pub packages: usize,
    /// The request's `local_only`: with `force` cleared, the one part of a recorded request
    /// that comes from the command line rather than the project (a build with a saved
    /// configuration or template keeps no record).
    pub local_only: bool,
    /// The inputs whose stamps vouch for their digests (see `inputs::snapshot_known`).
    pub inputs: BTreeMap<String, FileRef>,
    pub stamps: BTreeMap<String, Stamp>,
    /// What else the request was made from, when all of it had settled: see [`Record::unchanged`].
    pub watch: Option<Watch>,
    /// The CLI executable that made the request ([`cli_stamp`]): another one may make requests
    /// another way, so only a request made again vouches across a change of binary.
    pub cli: Option<Stamp>,
    pub outputs: Vec<WrittenOutput>,
}

/// One output as the CLI left it in the project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrittenOutput {
    /// The output's path in the project, as the manifest declares it.
    pub path: String,
    /// Where it was written: `path` with any link inside the project on the way resolved. A
    /// check resolves `path` again and requires the same place.
    pub place: PathBuf,
    pub digest: String,
    pub executable: bool,
    pub stamp: Stamp,
    /// Whether the stamp was taken long enough after the file's last change to vouch for it.
    pub settled: bool,
}

/// A record's settled outputs by place (see [`Record::vouched`]).
pub struct Vouched<'a>(std::collections::HashMap<&'a Path, &'a WrittenOutput>);

impl Vouched<'_> {
    /// Whether the output a build wants at `place` with `digest` (and `executable` or not) is
    /// already there because the record's settled stamp says the file is the one it wrote with
    /// that digest: a build whose outputs are unchanged (forced, or after one source changed)
    /// then reads none of them again (the CLI hashed every output in place after every build, a
    /// large artifact each time). A stamp that has not settled, or changed, vouches for nothing:
    /// the caller reads the file.
    pub fn holds(&self, place: &Path, digest: &str, executable: bool) -> bool {
        self.0.get(place).is_some_and(|o| {
            o.digest == digest
                && o.executable == executable
                && std::fs::symlink_metadata(place).is_ok_and(|m| m.is_file() && Stamp::of(&m) == o.stamp)
        })
    }
}

impl Record {
    pub fn new(request: String, tools: String, build_id: String, packages: usize, local_only: bool) -> Record {
        Record {
            v: RECORD_VERSION,
            request,
            tools,
            build_id,
            packages,
            local_only,
            inputs: BTreeMap::new(),
            stamps: BTreeMap::new(),
            watch: None,
            cli: None,
            outputs: Vec::new(),
        }
    }

    /// Whether the request would be the recorded one, told without making it: the manifest,
    /// the directories read and every input are as they were by stamps that had settled
    /// (`inputs::Watch`), and the command line asks the same. Only the inputs' stamps are read,
    /// not the files; false means only that the request has to be made and compared.
    pub fn unchanged(&self, root: &Path, local_only: bool) -> bool {
        // A watch is kept only with a stamp for every input (`inputs::Snapshot::watch`).
        let Some(watch) = &self.watch else { return false };
        local_only == self.local_only
            && self.cli.is_some()
            && self.cli == cli_stamp()
            && watch.holds(root)
            && self.stamps.iter().all(|(path, stamp)| {
                std::fs::symlink_metadata(root.join(path)).is_ok_and(|m| m.is_file() && Stamp::of(&m) == *stamp)
            })
    }

    /// The record file of the project at `root` (canonical) in `data_dir`.
    pub fn path(data_dir: &Path, root: &Path) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let name = blake3::hash(root.as_os_str().as_bytes()).to_hex();
        data_dir.join(RECORDS_DIR).join(format!("{}.json", &name[..32]))
    }

    /// The record at `path`, if there is one this version can read.
    pub fn read(path: &Path) -> Option<Record> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice::<Record>(&text).ok().filter(|r| r.v == RECORD_VERSION)
    }

    /// Writes the record beside its place and renames it over, the directory made if missing.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Several CLIs may write at once: a name of each one's own (`sweep` removes what a killed
        // one left).
        let tmp = path.with_extension(format!("{:016x}", rand::random::<u64>()));
        replace(path, &tmp, &serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }

    /// Adds an output just written or found in place at `place`; false if it is not a regular
    /// file there any more. `checked_from`: when the caller began to write or check the outputs
    /// (not now): the stamp vouches for the content only if the file's last change came 2 s
    /// before that (`Stamp::settled_before`), so a change made after the file was written or
    /// checked is never taken for the content recorded, however late the stamp is taken.
    pub fn add_output(&mut self, place: &Path, file: &FileRef, checked_from: i128) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(place) else { return false };
        if !meta.is_file() {
            return false;
        }
        let stamp = Stamp::of(&meta);
        self.outputs.push(WrittenOutput {
            path: file.path.clone(),
            place: place.to_path_buf(),
            digest: file.digest.clone(),
            executable: file.executable,
            settled: stamp.settled_before(checked_from),
            stamp,
        });
        true
    }

    /// Whether every output is still in place: the same file by a settled stamp, else a regular
    /// file (not a link) with the recorded digest and executable bit. Answers how many had to be
    /// hashed and the stamp each output had when it was checked (for [`Record::resettled`]), or
    /// None when one is missing or differs.
    pub fn outputs_in_place(&self) -> Option<InPlace> {
        use std::os::unix::fs::PermissionsExt;
        let mut in_place = InPlace { hashed: 0, stamps: Vec::with_capacity(self.outputs.len()) };
        for out in &self.outputs {
            let meta = std::fs::symlink_metadata(&out.place).ok()?;
            if !meta.is_file() {
                return None;
            }
            let stamp = Stamp::of(&meta);
            if out.settled && stamp == out.stamp {
                in_place.stamps.push(stamp);
                continue;
            }
            // Read through a descriptor that is the regular file itself: a link put at its name
            // since the look above fails the open instead of being followed, and the stamp kept
            // is the one of the file read.
            let (mut file, meta) = crate::exec::layout::open_regular(&out.place, "output", String::new).ok()?;
            in_place.stamps.push(Stamp::of(&meta));
            let executable = meta.permissions().mode() & 0o111 != 0;
            let (digest, _) = cas::hash_reader(&mut file, &out.place).ok()?;
            if digest != out.digest || executable != out.executable {
                return None;
            }
            in_place.hashed += 1;
        }
        Some(in_place)
    }

    /// The outputs this record's settled stamps vouch for, by place, for a build to ask of each
    /// output it writes back ([`Vouched::holds`]) in one lookup, not a scan of every output.
    pub fn vouched(&self) -> Vouched<'_> {
        Vouched(self.outputs.iter().filter(|o| o.settled).map(|o| (o.place.as_path(), o)).collect())
    }

    /// Whether the record had outputs and none of them is in the project any more: then no
    /// check can answer from it again (see [`sweep`]). A record without outputs is kept.
    fn places_gone(&self) -> bool {
        !self.outputs.is_empty() && self.outputs.iter().all(|o| std::fs::symlink_metadata(&o.place).is_err())
    }

    /// The record with the stamps of outputs that have settled since it was written, or that
    /// were touched or rewritten with the same content and have settled since (so the next check
    /// need not hash them); None when nothing would change. `in_place` is what
    /// [`Record::outputs_in_place`] answered: each output's stamp as that check saw it, before
    /// reading the file, so a change made during or after the check gives the file another
    /// stamp than the one kept. `checked_from` was taken before that check: a stamp settled
    /// against it last changed before the check read the file.
    pub fn resettled(&self, in_place: &InPlace, checked_from: i128) -> Option<Record> {
        let settled_now = |(out, stamp): (&WrittenOutput, &Stamp)| {
            let new = !out.settled || *stamp != out.stamp;
            Some(*stamp).filter(|s| new && s.settled_before(checked_from))
        };
        let stamps: Vec<Option<Stamp>> = self.outputs.iter().zip(&in_place.stamps).map(settled_now).collect();
        if stamps.iter().all(Option::is_none) {
            return None;
        }
        let mut record = self.clone();
        for (out, stamp) in record.outputs.iter_mut().zip(stamps) {
            if let Some(stamp) = stamp {
                out.stamp = stamp;
                out.settled = true;
            }
        }
        Some(record)
    }
}

/// What [`Record::outputs_in_place`] found when every output was in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    /// How many outputs were read and hashed (no settled stamp vouched for them).
    pub hashed: usize,
    /// Each output's stamp as the check saw it, in the record's order.
    stamps: Vec<Stamp>,
}

/// The stamp of the running executable: a rebuilt or upgraded `buildnet` has another inode or
/// other times. None if it cannot be told (then nothing is answered from stamps alone).
pub fn cli_stamp() -> Option<Stamp> {
    let exe = std::env::current_exe().ok()?;
    std::fs::symlink_metadata(exe).ok().filter(|m| m.is_file()).map(|m| Stamp::of(&m))
}

/// Removes what a CLI killed between writing a record and renaming it left beside `record`
/// (anything in its directory that is not a record and is older than ten minutes, so a write
/// under way is left alone), and, at most once a day ([`RECORDS_SWEPT`]), the records no check
/// can use again: those of another format, and those none of whose outputs is where it was
/// written (the project was deleted or moved, or a CI job's checkout removed). A CI runner that
/// builds each job in a fresh directory would otherwise keep one record per job for ever.
pub fn sweep(record: &Path) {
    let Some(dir) = record.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let older_than = |m: &std::fs::Metadata, secs| {
        m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > secs)
    };
    let marker = dir.join(RECORDS_SWEPT);
    let records_due = !std::fs::metadata(&marker).is_ok_and(|m| !older_than(&m, RECORDS_SWEEP_SECS));
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path == marker {
            continue;
        }
        if path.extension().is_some_and(|e| e == "json") {
            if records_due && path != record {
                records.push(path);
            }
            continue;
        }
        if entry.metadata().is_ok_and(|m| m.is_file() && older_than(&m, 600)) {
            let _ = std::fs::remove_file(&path);
        }
    }
    if !records_due {
        return;
    }
    // Marked first: CLIs finishing builds at once do not all read every record.
    if std::fs::write(&marker, b"").is_err() {
        return;
    }
    for path in records {
        // A record being replaced now is its project in use: a rename over the path just read
        // would be removed with it, so one younger than a minute is left alone.
        let young = std::fs::symlink_metadata(&path).map_or(true, |m| !older_than(&m, 60));
        if !young && no_use(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether the record at `path` can answer no check again: one of this format whose outputs
/// are all gone, one of an older format (or none: unreadable). A newer BuildNet's record is
/// its business: two versions may share a data dir.
fn no_use(path: &Path) -> bool {
    #[derive(Deserialize)]
    struct Format {
        v: u32,
    }
    let Ok(text) = std::fs::read(path) else { return false };
    match serde_json::from_slice::<Format>(&text) {
        Err(_) => true,
        Ok(f) if f.v < RECORD_VERSION => true,
        Ok(f) if f.v > RECORD_VERSION => false,
        Ok(_) => Record::read(path).is_none_or(|r| r.places_gone()),
    }
}

/// In [`RECORDS_DIR`]: when the records were last looked through by [`sweep`].
const RECORDS_SWEPT: &str = ".swept";
const RECORDS_SWEEP_SECS: u64 = 24 * 3600;

/// The digest [`Record::request`] holds: BLAKE3 of the request's JSON (the caller clears `force`).
pub fn request_digest(request: &BuildRequest) -> String {
    let mut hasher = blake3::Hasher::new();
    // Writing into a hasher cannot fail, and a request always serializes.
    let _ = serde_json::to_writer(&mut hasher, request);
    hasher.finalize().to_hex().to_string()
}

/// Nanoseconds since the epoch, as file times count them.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128
}

/// What a stamp must have settled before, for a check that began at `checked_from`: that time,
/// unless the clock has gone back since (then a later change could look older than the check,
/// so nothing counts as settled, and the next check reads the files again).
pub fn settled_reference(checked_from: i128) -> i128 {
    if now_ns() < checked_from {
        i128::MIN
    } else {
        checked_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(git: &str) -> Versions {
        BTreeMap::from([("git".to_string(), Some(git.to_string())), ("make".to_string(), None)])
    }

    #[test]
    fn the_tools_line_is_written_once_the_node_knows_its_own_and_again_only_when_a_version_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The last run's line is not trusted from the moment a node takes the data dir, before
        // its start has got as far as its tools.
        std::fs::write(dir.path().join(TOOLS_FILE), "stale\n").expect("a line left behind");
        let lock = crate::node::lock_data_dir(dir.path()).expect("the node's lock");
        assert_eq!(read_tools(dir.path()), None, "the line left behind");
        let tools = PoolTools::new(dir.path());
        tools.set_peers(&[]);
        assert_eq!(read_tools(dir.path()), None, "not before the node's own tools are known");
        let me = NodeId::from_public_key(&[7; 32]);
        tools.set_local(&me, versions("2.40.0"));
        let first = read_tools(dir.path()).expect("written");
        std::fs::remove_file(dir.path().join(TOOLS_FILE)).expect("remove");
        tools.set_local(&me, versions("2.40.0"));
        assert_eq!(read_tools(dir.path()), None, "the same versions are not written again");
        tools.set_local(&me, versions("2.41.0"));
        let second = read_tools(dir.path()).expect("written");
        assert_ne!(first, second, "a new version, a new line");
        lock.release();
        assert_eq!(read_tools(dir.path()), None, "a line no running node keeps true is not trusted");
    }

    #[test]
    fn a_sweep_removes_old_leftovers_beside_a_record_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = Record::path(dir.path(), Path::new("/some/project"));
        Record::new("r".into(), "t".into(), "b".into(), 1, false).write(&record).expect("write");
        let records = record.parent().expect("dir");
        let (old, fresh) = (records.join("x.0123456789abcdef"), records.join("y.fedcba9876543210"));
        for f in [&old, &fresh] {
            std::fs::write(f, "partial").expect("leftover");
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).expect("open").set_modified(long_ago).expect("age it");
        sweep(&record);
        assert!(!old.exists(), "an old leftover goes");
        assert!(fresh.exists(), "a write that may be under way stays");
        assert!(Record::read(&record).is_some(), "the record stays");
    }

    #[test]
    fn once_a_day_a_sweep_removes_the_records_no_check_can_use_again() {
        let data = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("project");
        let place = project.path().join("out.txt");
        std::fs::write(&place, "alpha").expect("write");
        let (digest, size) = cas::hash_file(&place).expect("hash");
        let file = FileRef { path: "out.txt".into(), digest, executable: false, size };
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let age = |p: &Path| std::fs::File::options().write(true).open(p).and_then(|f| f.set_modified(long_ago));
        let write = |root: &str, place: Option<&Path>| {
            let path = Record::path(data.path(), Path::new(root));
            let mut record = Record::new("r".into(), "t".into(), "b".into(), 1, false);
            if let Some(place) = place {
                assert!(record.add_output(place, &file, now_ns()));
            }
            record.write(&path).expect("write");
            path
        };
        let (live, gone, without_outputs) =
            (write("/live", Some(&place)), write("/gone", Some(&place)), write("/no-outputs", None));
        let other_format = live.with_file_name("0123456789abcdef0123456789abcdef.json");
        std::fs::write(&other_format, r#"{"v": 1}"#).expect("old record");
        let newer_format = live.with_file_name("fedcba9876543210fedcba9876543210.json");
        std::fs::write(&newer_format, format!(r#"{{"v": {}}}"#, RECORD_VERSION + 1)).expect("newer record");
        // The project of `gone` is deleted: its record names a place that is no more.
        let mut record = Record::read(&gone).expect("read");
        record.outputs[0].place = project.path().join("deleted/out.txt");
        record.write(&gone).expect("write");
        let fresh_gone = write("/fresh", None);
        let mut fresh = Record::read(&fresh_gone).expect("read");
        fresh.outputs = record.outputs.clone();
        fresh.write(&fresh_gone).expect("write");
        for p in [&live, &gone, &without_outputs, &other_format, &newer_format] {
            age(p).expect("age it");
        }
        let current = write("/current", Some(&place));

        sweep(&current);
        assert!(!gone.exists(), "a record whose outputs are all gone goes");
        assert!(!other_format.exists(), "a record of an older format goes");
        assert!(newer_format.exists(), "a newer BuildNet's record is its own business");
        for (kept, why) in [
            (&live, "outputs in place"),
            (&without_outputs, "nothing to tell by"),
            (&fresh_gone, "written within the minute: its project may be in use"),
            (&current, "the record just written"),
        ] {
            assert!(kept.exists(), "kept: {why}");
        }

        // Not again within the day: a record gone meanwhile stays until the next day's sweep.
        age(&fresh_gone).expect("age it");
        sweep(&current);
        assert!(fresh_gone.exists(), "swept once a day");
        let a_day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(RECORDS_SWEEP_SECS + 60);
        std::fs::File::options()
            .write(true)
            .open(current.with_file_name(RECORDS_SWEPT))
            .and_then(|f| f.set_modified(a_day_ago))
            .expect("a day later");
        sweep(&current);
        assert!(!fresh_gone.exists(), "the next day's sweep removes it");
        assert!(live.exists() && current.exists(), "and keeps what can answer");
    }

    /// `out.txt` holding "alpha" in `dir`, and the output it is.
    fn output_file(dir: &Path) -> (PathBuf, FileRef) {
        let place = dir.join("out.txt");
        std::fs::write(&place, "alpha").expect("write");
        let (digest, size) = cas::hash_file(&place).expect("hash");
        (place, FileRef { path: "out.txt".into(), digest, executable: false, size })
    }

    #[test]
    fn an_output_is_in_place_while_it_is_the_file_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (place, file) = output_file(dir.path());
        let later = now_ns() + 10_000_000_000;

        let mut settled = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(settled.add_output(&place, &file, later));
        assert_eq!(hashed(&settled), Some(0), "a settled stamp vouches: nothing hashed");
        let mut fresh = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(fresh.add_output(&place, &file, now_ns()));
        let checked = fresh.outputs_in_place().expect("in place");
        assert_eq!(checked.hashed, 1, "a stamp taken at the change is checked by content");
        assert!(fresh.resettled(&checked, now_ns()).is_none(), "nothing has settled yet");
        assert!(fresh.resettled(&checked, later).is_some_and(|r| r.outputs[0].settled));

        // Rewritten with the same bytes (`make -B`, `touch`): read while new, then its new stamp
        // is kept once settled, so later checks read nothing again.
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&place, "alpha").expect("the same bytes again");
        let checked = settled.outputs_in_place().expect("in place");
        assert_eq!(checked.hashed, 1, "a new stamp: checked by content");
        assert!(settled.resettled(&checked, now_ns()).is_none(), "the new stamp has not settled yet");
        let kept = settled.resettled(&checked, now_ns() + 10_000_000_000).expect("the new stamp, settled");
        assert_eq!(hashed(&kept), Some(0), "the new stamp vouches");

        std::fs::write(&place, "omega").expect("same size, other bytes");
        assert_eq!(hashed(&settled), None, "the stamp changed and so did the content");
        std::fs::remove_file(&place).expect("remove");
        std::fs::write(dir.path().join("elsewhere"), "alpha").expect("write");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &place).expect("link");
        assert_eq!(hashed(&fresh), None, "a link is never taken for the output");
        assert!(!fresh.clone().add_output(&place, &file, later), "nor recorded as one");
    }

    /// A file changed after the CLI began to write or check the outputs is not recorded as
    /// settled, however long after that its stamp is taken (a CLI stopped, or hashing a large
    /// output): the record would vouch for bytes the file no longer has (found by a tester: the
    /// next `--force` kept the wrong output).
    #[test]
    fn a_change_after_the_outputs_were_checked_is_never_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (place, file) = output_file(dir.path());
        let digest = file.digest.clone();
        let checked_from = now_ns() + 10_000_000_000;
        let mut before = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(before.add_output(&place, &file, checked_from));
        assert!(before.outputs[0].settled, "unchanged since long before the check");
        let checked_from = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&place, "omega").expect("changed after the check began");
        let mut after = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(after.add_output(&place, &file, checked_from));
        assert!(!after.outputs[0].settled, "changed after the check: vouches for nothing");
        assert!(!after.vouched().holds(&place, &digest, false));
    }

    /// How many outputs a check of `record` hashed, None when one was not in place.
    fn hashed(record: &Record) -> Option<usize> {
        record.outputs_in_place().map(|checked| checked.hashed)
    }

    /// The same for a record brought up to date after a check: a file changed after the check
    /// began is not taken as settled (found in a review: the stamp was judged against the time
    /// of the update, after hashing every output), and the stamp kept is the one the check saw
    /// before it read the file, so a change made during the check is seen by the next one
    /// however late the record is brought up to date.
    #[test]
    fn an_output_changed_during_a_check_is_not_resettled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (place, file) = output_file(dir.path());
        let mut fresh = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(fresh.add_output(&place, &file, now_ns()));
        let checked_from = now_ns();
        let checked = fresh.outputs_in_place().expect("in place: the bytes written");
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&place, "omega").expect("changed during the check");
        assert!(fresh.resettled(&checked, checked_from).is_none(), "nothing settled before the check began");
        let late = fresh.resettled(&checked, now_ns() + 10_000_000_000).expect("judged later, the stamp settled");
        assert!(late.outputs[0].settled);
        assert_eq!(hashed(&late), None, "the change has another stamp: read again, and found changed");
    }

    /// A clock that went back since the check began (the check's start is after now) leaves
    /// nothing settled: a change made after the check could otherwise look older than it.
    #[test]
    fn nothing_is_settled_when_the_clock_went_back_since_the_check_began() {
        let before = now_ns() - 1;
        assert_eq!(settled_reference(before), before);
        let ahead = now_ns() + 60_000_000_000;
        assert_eq!(settled_reference(ahead), i128::MIN);
        let dir = tempfile::tempdir().expect("tempdir");
        let (place, file) = output_file(dir.path());
        let mut record = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(record.add_output(&place, &file, settled_reference(ahead)));
        assert!(!record.outputs[0].settled);
    }

    #[test]
    fn a_settled_stamp_vouches_for_the_output_a_build_wants_where_it_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (place, file) = output_file(dir.path());
        let digest = file.digest.clone();
        let mut settled = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(settled.add_output(&place, &file, now_ns() + 10_000_000_000));
        assert!(settled.vouched().holds(&place, &digest, false), "the file written, its stamp settled");
        assert!(!settled.vouched().holds(&place, &"0".repeat(64), false), "not for other content");
        assert!(!settled.vouched().holds(&place, &digest, true), "not for the same bytes wanted executable");
        assert!(!settled.vouched().holds(&dir.path().join("other.txt"), &digest, false), "not for another place");
        let mut fresh = Record::new("r".into(), "t".into(), "b".into(), 1, false);
        assert!(fresh.add_output(&place, &file, now_ns()));
        assert!(!fresh.vouched().holds(&place, &digest, false), "a stamp taken at the change vouches for nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&place, "omega").expect("same size, other bytes");
        assert!(!settled.vouched().holds(&place, &digest, false), "the stamp changed");
        std::fs::remove_file(&place).expect("remove");
        assert!(!settled.vouched().holds(&place, &digest, false), "nor for a file gone");
    }
}
