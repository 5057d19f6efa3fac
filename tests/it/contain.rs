//! A builder stays a builder: packages run contained (Landlock, PID and mount namespaces, an
//! unprivileged user when the node is root) on the node that receives the build and on a peer,
//! see nothing of the node's data dir or processes, get a minimal environment, and what they
//! print is not shown to observers. Each attack is tried with a builder key through the binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{self, wait_all_online, wait_until, Start, TestNode};
use serde_json::Value;

/// `buildnet build` with `key` (not the admin key) against `node`.
fn build_as(node: &TestNode, key: &str, project: &Path, extra: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(["build", "--project"])
        .arg(project)
        .args(extra)
        .args(["--address", &node.url, "--token", key])
        .env_remove("BUILDNET_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run buildnet")
}

/// A package that tries to leave its sandbox and reports what it could do into `out/report.txt`.
fn hostile_project(dir: &Path, data_dir: &Path) {
    let key = data_dir.join("admin.key");
    let escape = dir.join("escaped-from-sandbox");
    let script = format!(
        "mkdir -p out; {{ \
         echo uid=$(id -u); \
         echo processes=$(ls /proc | grep -c '^[0-9]'); \
         cat {key} && echo READ-ABSOLUTE; \
         cat ../../../admin.key && echo READ-RELATIVE; \
         ls {data} && echo LISTED-DATA-DIR; \
         touch /tmp/buildnet-escape-$$ && echo WROTE-TMP; \
         echo x > {escape} && echo WROTE-PROJECT; \
         echo x > ../../../planted && echo WROTE-DATA-DIR; \
         setsid sleep 317.5 & \
         env | sort | sed 's/^/env:/'; \
         }} > out/report.txt 2>&1; true",
        key = key.display(),
        data = data_dir.display(),
        escape = escape.display(),
    );
    let manifest = format!(
        "[packages.hostile]\nshell = \"{}\"\noutputs = [\"out/report.txt\"]\nenv = {{ DECLARED = \"yes\" }}\n",
        script.replace('\\', "\\\\").replace('"', "\\\"")
    );
    std::fs::write(dir.join("buildnet.toml"), manifest).expect("manifest");
}

fn no_process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().all(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| !String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
            .unwrap_or(true)
    })
}

/// Checks what the hostile package reported, and that nothing it tried left a trace.
fn assert_contained(report: &str, runner: &TestNode, project: &Path, root: bool) {
    let admin_key = std::fs::read_to_string(runner.dir.join("admin.key")).expect("admin key");
    assert!(!report.contains(admin_key.trim()), "the package read the admin key:\n{report}");
    for marker in ["READ-ABSOLUTE", "READ-RELATIVE", "LISTED-DATA-DIR", "WROTE-TMP", "WROTE-PROJECT", "WROTE-DATA-DIR"]
    {
        assert!(!report.contains(marker), "{marker}:\n{report}");
    }
    assert!(!project.join("escaped-from-sandbox").exists(), "nothing written into the project by the package");
    assert!(!runner.dir.join("planted").exists(), "nothing written into the data dir");
    let processes: usize =
        report.lines().find_map(|l| l.strip_prefix("processes=")).and_then(|n| n.trim().parse().ok()).expect("count");
    assert!(processes <= 8, "the package sees only its own processes, saw {processes}:\n{report}");
    if root {
        assert!(report.contains("uid=65534"), "a root node runs packages as nobody:\n{report}");
    }
    let env: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("env:")).collect();
    assert!(env.contains(&"DECLARED=yes"), "declared variables are set: {env:?}");
    assert!(env.iter().any(|l| l.starts_with("HOME=")) && env.iter().any(|l| l.starts_with("TMPDIR=")));
    for l in &env {
        let name = l.split('=').next().unwrap_or_default();
        assert!(
            ["DECLARED", "PATH", "HOME", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
            "only declared and minimal variables reach a package, not {l}"
        );
    }
    wait_until("the package's escaped child died with it", Duration::from_secs(5), || {
        no_process_with("sleep 317.5").then_some(())
    });
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_package_cannot_read_keys_write_outside_or_see_the_node_here_or_on_a_peer() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    for n in [&a, &b] {
        assert_eq!(n.get("/api/node").1["sandbox"], "landlock+namespaces", "this kernel offers both");
    }
    let builder = a.key("builder");
    let b_id = b.node_id();
    let out = a.cli(&["config", "create", "--name", "on-beta", "--node", &format!("{b_id}:1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for (runner, extra) in [(&a, vec!["--local-only"]), (&b, vec!["--config", "on-beta"])] {
        let work = tempfile::tempdir().expect("tempdir");
        hostile_project(work.path(), &runner.dir);
        let mut args = extra.clone();
        args.push("--force");
        let out = build_as(&a, &builder, work.path(), &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report = std::fs::read_to_string(work.path().join("out/report.txt")).expect("report");
        assert_contained(&report, runner, work.path(), is_root());
    }
}

#[test]
fn observers_do_not_see_what_packages_print() {
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("buildnet.toml"),
        "[packages.talk]\nshell = \"echo the-package-said-this; echo made > o.txt\"\noutputs = [\"o.txt\"]\n",
    )
    .expect("manifest");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = node.cli_json(&["history", "-n", "1"])["builds"][0]["id"].as_str().expect("id").to_string();
    let keys = [("builder", node.key("builder")), ("observer", node.key("observer"))];
    let key_of = |role: &str| keys.iter().find(|(r, _)| *r == role).map(|(_, k)| k.clone()).expect("key");
    let as_role = |role: &str| -> Value {
        let key = key_of(role);
        let (status, body) = common::http(
            "GET",
            &format!("{}/api/build/{id}", node.url),
            &[("Authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    };
    let built = as_role("builder");
    assert!(built["packages"][0]["output_tail"].as_str().expect("tail").contains("the-package-said-this"));
    let observed = as_role("observer");
    assert_eq!(observed["packages"][0]["output_tail"], "", "{observed}");
    assert_eq!(observed["packages"][0]["state"], "succeeded", "observers still see how builds went");
    let digest = built["packages"][0]["outputs"][0]["digest"].as_str().expect("digest").to_string();
    let fetch = |role: &str| {
        let key = key_of(role);
        common::http(
            "GET",
            &format!("{}/api/blobs/{digest}", node.url),
            &[("Authorization", &format!("Bearer {key}"))],
            None,
        )
        .0
    };
    assert_eq!(fetch("builder"), 200);
    assert_eq!(fetch("observer"), 403, "artifacts are output too");
}

/// With namespaces, a package's TMPDIR is a tmpfs of its own: its temporary files never reach
/// the disk (each was an inode made and freed beside the sandboxes, and on ext4 without a
/// journal every new inode there skipped the ones freed in the last minutes), and they go with
/// the package. Without namespaces it stays a directory of the sandbox.
#[test]
fn a_packages_temporary_files_are_in_memory_of_its_own_and_go_with_it() {
    let node = TestNode::start();
    let level = node.get("/api/node").1["sandbox"].as_str().expect("sandbox level").to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let shell = "stat -f -c %T \"$TMPDIR\" > kind.txt; stat -c %U:%a \"$TMPDIR\" >> kind.txt; \
                 stat -f -c %b:%S \"$TMPDIR\" >> kind.txt; \
                 head -c 1048576 /dev/zero > \"$TMPDIR/big\"; ls \"$TMPDIR\" >> kind.txt";
    std::fs::write(
        work.path().join("buildnet.toml"),
        format!("[packages.temp]\nshell = {shell:?}\noutputs = [\"kind.txt\"]\n"),
    )
    .expect("manifest");
    for _ in 0..2 {
        let out = node.cli(&["build", "--project", work.path().to_str().expect("path"), "--force"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let kind = std::fs::read_to_string(work.path().join("kind.txt")).expect("kind.txt");
        let lines: Vec<&str> = kind.lines().collect();
        if level == "landlock+namespaces" {
            let owner = if is_root() { "nobody:700" } else { "root:700" };
            assert_eq!((lines[0], lines[1], lines[3]), ("tmpfs", owner, "big"), "{kind}");
            // Bounded: the memory over twice the cores, so a package per core fills at most half
            // of it (its pages belong to no process: the OOM killer would pick the daemon).
            let (blocks, block) = lines[2].split_once(':').expect("size");
            let size = blocks.parse::<u64>().expect("blocks") * block.parse::<u64>().expect("block size");
            let memory_kb: u64 = std::fs::read_to_string("/proc/meminfo")
                .expect("meminfo")
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .expect("MemTotal");
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            assert!(size <= memory_kb * 1024 / (2 * cores) + (1 << 20), "{size} bytes: {kind}");
        } else {
            assert_ne!(lines.first(), Some(&"tmpfs"), "{kind}");
        }
    }
    // Nothing of it is left on the node's disk.
    let left = std::process::Command::new("find").arg(&node.dir).args(["-name", "big"]).output().expect("find");
    assert!(left.stdout.is_empty(), "{}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn a_node_that_must_contain_refuses_peers_packages_when_it_cannot() {
    let _serial = common::serial();
    let a = TestNode::start_with(Start::named("alpha"));
    let weak = r#"{"sandbox": {"level": "none", "require": "landlock"}}"#;
    let b = a.join("beta", "builder", Start { config: Some(weak), ..Default::default() });
    wait_all_online(&[&a, &b]);
    assert_eq!(b.get("/api/node").1["sandbox"], "none");
    assert!(b.stderr_text().contains("peers' packages will be refused"), "said at start: {}", b.stderr_text());
    let b_id = b.node_id();
    let out = a.cli(&["config", "create", "--name", "on-beta", "--node", &format!("{b_id}:1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("buildnet.toml"),
        "[packages.one]\nshell = \"echo one > one.txt\"\noutputs = [\"one.txt\"]\n",
    )
    .expect("manifest");
    let out = a.cli(&["build", "--project", work.path().to_str().expect("path"), "--config", "on-beta"]);
    assert!(!out.status.success(), "the only allowed node refuses");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sandbox.require"), "the refusal says why: {err}");
}

/// A node that does not run as root contains its packages in a user namespace of their own: the
/// fork server clones the package into new user, PID and mount namespaces, and the package maps
/// its maker to root there itself. Run here through the real fork server, started as `nobody`.
#[test]
fn an_unprivileged_fork_server_contains_its_package_in_a_user_namespace() {
    use buildnet_actors::exec::contain::{SandboxLevel, Spec, NOBODY};
    use buildnet_actors::exec::forkserver::ForkServer;
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root to start the fork server as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // The daemon starts `<binary> sandbox-exec --serve` with the socket as stdin and an empty
    // environment: this one execs the real binary as nobody.
    let launcher = dir.path().join("as-nobody");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec /usr/bin/setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups {} \"$@\"\n",
            common::BIN
        ),
    )
    .expect("write");
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("mkdir");
    std::fs::set_permissions(&sandbox, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let outside = dir.path().join("outside");

    let server = ForkServer::new(launcher);
    let spec = Spec {
        dir: sandbox.clone(),
        read_only: vec![],
        level: SandboxLevel::Full,
        user: None,
        tmp: Some(sandbox.join(".tmp")),
        given: false,
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "echo pid=$$ uid=$(id -u) processes=$(ls /proc | grep -c '^[0-9]'); touch {} || echo kept-in; \
                 touch .tmp/t && echo tmp=$(stat -f -c %T .tmp)",
                outside.display()
            ),
        ],
    };
    std::fs::create_dir(sandbox.join(".tmp")).expect("mkdir");
    std::fs::set_permissions(sandbox.join(".tmp"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (status, said) = served(&server, &spec);
    assert!(status.success(), "{status:?}: {said}");
    assert!(said.contains("pid=1 uid=0 processes="), "PID 1 and root of its own namespaces: {said}");
    assert!(said.contains("tmp=tmpfs"), "its TMPDIR is a tmpfs of its user namespace's: {said}");
    assert!(!sandbox.join(".tmp/t").exists(), "and went with it");
    assert!(said.contains("kept-in") && !outside.exists(), "Landlock still holds: {said}");
}

/// Inputs reach a contained package as hard links to the node's store when the package runs as
/// another user (`nobody`, the node being root): the link shares the stored object's inode, so a
/// package that writes, truncates, chmods, chowns or touches an input — a source file or a
/// dependency's output — must fail, and the package after it must still see the original bytes.
/// Replacing an input (unlink, then a new file) only changes the package's own sandbox.
#[test]
fn a_package_cannot_change_the_stored_inputs_it_is_handed() {
    use std::os::unix::fs::MetadataExt;
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("data.txt"), "original\n").expect("input");
    let attack = |file: &str| {
        format!(
            "stat -c '{file} links=%h owner=%u mode=%a' {file}; \
             echo evil > {file} && echo {file} WROTE; echo evil >> {file} && echo {file} APPENDED; \
             truncate -s 0 {file} && echo {file} TRUNCATED; chmod 666 {file} && echo {file} CHMODDED; \
             chown $(id -u) {file} && echo {file} CHOWNED; touch -d 2001-01-01 {file} && echo {file} TOUCHED; "
        )
    };
    let manifest = format!(
        "[packages.gen]\nshell = \"echo generated > gen.txt\"\noutputs = [\"gen.txt\"]\n\n\
         [packages.attack]\ninputs = [\"data.txt\"]\ndeps = [\"gen\"]\noutputs = [\"out/report.txt\"]\n\
         shell = '''mkdir -p out; {{ {}{} }} > out/report.txt 2>&1; rm -f data.txt && echo mine > data.txt; true'''\n\n\
         [packages.after]\ninputs = [\"data.txt\"]\ndeps = [\"gen\", \"attack\"]\noutputs = [\"seen.txt\"]\n\
         shell = \"cat data.txt gen.txt > seen.txt\"\n",
        attack("data.txt"),
        attack("gen.txt")
    );
    std::fs::write(work.path().join("buildnet.toml"), manifest).expect("manifest");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let report = std::fs::read_to_string(work.path().join("out/report.txt")).expect("report");
    if is_root() {
        for file in ["data.txt", "gen.txt"] {
            let links: u64 = report
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{file} links=")))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no stat of {file}:\n{report}"));
            assert!(links >= 2, "{file} reached the package as a link to the store:\n{report}");
            assert!(report.contains(&format!("{file} links={links} owner=0 mode=444")), "{report}");
        }
        for what in ["WROTE", "APPENDED", "TRUNCATED", "CHMODDED", "CHOWNED", "TOUCHED"] {
            assert!(!report.contains(what), "the package {what} an input:\n{report}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(work.path().join("seen.txt")).expect("seen"),
        "original\ngenerated\n",
        "the later package saw the original inputs (the attack's report:\n{report})"
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for text in ["original\n", "generated\n"] {
        let digest = blake3::hash(text.as_bytes()).to_hex().to_string();
        let object = node.dir.join("cas").join(&digest[..2]).join(&digest);
        assert_eq!(std::fs::read_to_string(&object).expect("stored object"), text);
        // Its only other links are those a pooled sandbox keeps for the next package (issue 14).
        // The last package's sandbox is emptied after its result went back, so it may still be
        // going for a moment after the build ended.
        let stored_as_it_was = || {
            let meta = std::fs::metadata(&object).expect("metadata");
            let kept = links_under(&node.dir.join("sandboxes"), meta.ino());
            ((meta.mode() & 0o7777, meta.uid(), meta.nlink()), (0o444, me, 1 + kept))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (seen, expected) = loop {
            let (seen, expected) = stored_as_it_was();
            if seen == expected || std::time::Instant::now() > deadline {
                break (seen, expected);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(seen, expected, "{text:?} stored as it was");
    }
    assert_eq!(std::fs::read_to_string(work.path().join("data.txt")).expect("project"), "original\n");
}

/// How many entries under `dir` are hard links to inode `ino`.
fn links_under(dir: &Path, ino: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => links_under(&e.path(), ino),
            _ => u64::from(e.metadata().is_ok_and(|m| m.ino() == ino)),
        })
        .sum()
}

/// A node, its containment level, and a project directory holding `files` (path, text).
fn node_and_project(files: &[(&str, &str)]) -> (TestNode, String, tempfile::TempDir) {
    let node = TestNode::start();
    let level = node.get("/api/node").1["sandbox"].as_str().unwrap_or_default().to_string();
    let work = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("source");
    }
    (node, level, work)
}

/// A sandbox is emptied into a pool and the directories its files went into are kept for the
/// next package that lays out files in the same ones (ext4 pays for every new directory). The
/// package owned them and may have left anything in them: files, links, a link or a file where
/// a directory was, modes. The package after it must find exactly what a new sandbox holds —
/// its own inputs, plain directories of mode 755 — and the kept `obj/` must be the same
/// directory (or this tests nothing).
#[test]
fn a_package_finds_a_clean_sandbox_whatever_the_one_before_left_in_it() {
    let (node, level, work) =
        node_and_project(&[("src/a.c", "a"), ("src/b.c", "b"), ("inc/a.h", "a"), ("inc/b.h", "b")]);
    let manifest = "[packages.first]\ninputs = [\"src/a.c\", \"inc/a.h\"]\noutputs = [\"obj/a.o\"]\n\
         shell = '''stat -c %i obj > obj/a.o; touch obj/left.o .tmp/left; ln -s /etc obj/etc; \
         mkdir -p obj/sub/deep && touch obj/sub/deep/f; chmod 2777 obj; chmod 700 src; \
         rm -r inc && ln -s /etc inc; mkdir mine; touch planted'''\n\n\
         [packages.second]\ninputs = [\"src/b.c\", \"inc/b.h\"]\ndeps = [\"first\"]\noutputs = [\"obj/b.o\"]\n\
         shell = '''{ stat -c '%n %a %i' obj; stat -c '%n %a' src inc; find . | sort; } > obj/b.o'''\n";
    std::fs::write(work.path().join("buildnet.toml"), manifest).expect("manifest");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let first_obj = std::fs::read_to_string(work.path().join("obj/a.o")).expect("first's output");
    let report = std::fs::read_to_string(work.path().join("obj/b.o")).expect("second's report");
    let lines: Vec<&str> = report.lines().collect();
    let (obj, rest) = lines.split_first().expect("a report");
    let listing: Vec<&str> = rest.iter().skip(2).copied().collect();
    assert_eq!(
        listing,
        [".", "./.tmp", "./inc", "./inc/b.h", "./obj", "./obj/a.o", "./obj/b.o", "./src", "./src/b.c"],
        "only its own inputs, its dependency's output and its own report:\n{report}"
    );
    assert!(obj.starts_with("obj 755 "), "{report}");
    assert_eq!(rest[..2], ["src 755", "inc 755"], "{report}");
    if level == "landlock+namespaces" {
        assert_eq!(
            obj.rsplit(' ').next(),
            Some(first_obj.trim()),
            "the second package got the first's obj/ (the pool kept it):\n{report}"
        );
    }
}

/// Packages run under `SCHED_BATCH` (issue 14): a compiler waking does not preempt the daemon,
/// whose few milliseconds between two packages otherwise wait behind every compiler on the
/// machine for a time slice. The policy is inherited, so what a package starts has it too.
#[test]
fn a_package_and_what_it_starts_run_under_batch_scheduling() {
    let (node, level, work) = node_and_project(&[]);
    // Field 41 of stat is the scheduling policy (SCHED_BATCH is 3): the shell's, then `cut`'s.
    let manifest = "[packages.policy]\noutputs = [\"policy.txt\"]\n\
         shell = '''cut -d' ' -f41 /proc/$$/stat > policy.txt; cut -d' ' -f41 /proc/self/stat >> policy.txt'''\n";
    std::fs::write(work.path().join("buildnet.toml"), manifest).expect("manifest");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy = std::fs::read_to_string(work.path().join("policy.txt")).expect("the package's output");
    assert_eq!(policy, "3\n3\n", "the package and its child under SCHED_BATCH (containment: {level})");
    // The node itself keeps the policy it was started with (this test's), or it would gain
    // nothing.
    let policy = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(38)).map(str::to_string)
    };
    assert_eq!(policy(node.child.id()), policy(std::process::id()), "the node under the policy it started with");
}

/// A pooled sandbox keeps the inputs that are hard links to the node's stored objects for a
/// package that wants the same object at the same path (issue 14: a C project's compiles all
/// want the same headers). The package before could not change an object's content, but it
/// could replace the link at an input's path with a file of its own: the next package must
/// still find exactly its inputs — the stored content — and the kept link must be the very one
/// the first package had (or this tests nothing).
#[test]
fn a_kept_input_is_the_stored_one_whatever_the_package_before_put_at_its_path() {
    let (node, level, work) =
        node_and_project(&[("src/x.c", "x\n"), ("src/y.c", "y\n"), ("inc/a.h", "a\n"), ("inc/b.h", "b\n")]);
    let manifest = "[packages.first]\ninputs = [\"src/x.c\", \"inc/a.h\", \"inc/b.h\"]\noutputs = [\"obj/x.o\"]\n\
         shell = '''stat -c '%i %h' inc/b.h > obj/x.o; rm inc/a.h && echo planted > inc/a.h'''\n\n\
         [packages.second]\ninputs = [\"src/y.c\", \"inc/a.h\", \"inc/b.h\"]\ndeps = [\"first\"]\n\
         outputs = [\"obj/y.o\"]\n\
         shell = '''{ cat inc/a.h inc/b.h; stat -c '%i' inc/b.h; find . -type f | sort; } > obj/y.o'''\n";
    std::fs::write(work.path().join("buildnet.toml"), manifest).expect("manifest");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let first = std::fs::read_to_string(work.path().join("obj/x.o")).expect("first's output");
    let report = std::fs::read_to_string(work.path().join("obj/y.o")).expect("second's report");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[..2], ["a", "b"], "the stored inputs, not what the first package planted:\n{report}");
    assert_eq!(
        lines[3..],
        ["./inc/a.h", "./inc/b.h", "./obj/x.o", "./obj/y.o", "./src/y.c"],
        "only its own inputs, its dependency's output and its report:\n{report}"
    );
    let (inode, links) = first.trim().split_once(' ').expect("inode and link count");
    if level == "landlock+namespaces" && links != "1" {
        assert_eq!(lines[2], inode, "the second package got the first's link to inc/b.h (the pool kept it):\n{report}");
    }
}

/// The fork server makes each package's namespaces ahead, while the one before runs (a spare
/// child, issue 14). A mount made on the node after that (a storage volume) must still be where
/// the next package sees it: run here through the real fork server, a package whose sandbox is
/// on a tmpfs mounted after the spare was made writes into that tmpfs, not into the folder under
/// it; and with the tmpfs gone again, the next package in the folder under it.
#[test]
fn a_package_sees_what_was_mounted_after_its_namespaces_were_made_ahead() {
    use buildnet_actors::exec::forkserver::ForkServer;
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ForkServer::new(common::BIN.into());
    let run = |sandbox: &Path, line: &str| -> (bool, String) {
        let (status, said) = served(&server, &fully_contained(sandbox, line));
        (status.success(), said)
    };
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).expect("mkdir");
    // The first package, after which the server has a spare waiting.
    assert_eq!(run(dir.path(), "echo first"), (true, "first\n".into()));
    std::thread::sleep(Duration::from_millis(200));

    let mounted = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&volume).status().expect("mount");
    assert!(mounted.success());
    let sandbox = volume.join("sandbox");
    std::fs::create_dir(&sandbox).expect("a sandbox on the new volume");
    let on_volume = run(&sandbox, "echo on-the-volume > out.txt && echo wrote");
    let in_tmpfs = std::fs::read_to_string(sandbox.join("out.txt"));
    let unmounted = Command::new("umount").arg(&volume).status().expect("umount");
    assert_eq!(on_volume, (true, "wrote\n".into()), "the package found its sandbox on the new mount");
    assert_eq!(in_tmpfs.expect("written into the tmpfs"), "on-the-volume\n");
    assert!(unmounted.success());
    assert!(!sandbox.exists(), "nothing went into the folder under the tmpfs");

    // Unmounted again: the folder under it is what the next package gets.
    std::fs::create_dir(&sandbox).expect("a sandbox in the folder");
    assert_eq!(run(&sandbox, "echo under > out.txt && echo wrote"), (true, "wrote\n".into()));
    assert_eq!(std::fs::read_to_string(sandbox.join("out.txt")).expect("written"), "under\n");
}

/// The daemon holds each package's own mount namespace while it runs, and lets go of it on a
/// thread of its own after the exit, so that the teardown (an RCU grace period) waits on neither
/// the package's result nor the fork server; the server takes it from the spare made ahead rather
/// than after the package's exec. Run here through the real fork server: a package started in a
/// spare finds its `/proc/self/ns/mnt` among this process's open descriptors.
#[test]
fn the_daemon_holds_the_mount_namespace_its_package_runs_in() {
    use buildnet_actors::exec::forkserver::ForkServer;
    if !is_root() {
        eprintln!("skipped: needs root for the package's namespaces");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ForkServer::new(common::BIN.into());
    let spec = |line: &str| fully_contained(dir.path(), line);
    // The first package, after which the server has a spare waiting for the next.
    assert!(served(&server, &spec("true")).0.success());
    std::thread::sleep(Duration::from_millis(200));
    let (_read, write) = std::io::pipe().expect("pipe");
    let write = std::os::fd::OwnedFd::from(write);
    let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
    let running =
        server.start(&spec("readlink /proc/self/ns/mnt > ns.txt; sleep 30"), &env, &write, &write).expect("started");
    let own = wait_until("the package says its namespace", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("ns.txt")).ok().filter(|s| s.ends_with('\n'))
    });
    let own = own.trim().to_string();
    let held = || -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .expect("this process's descriptors")
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|link| link.display().to_string())
            .filter(|link| link.starts_with("mnt:"))
            .collect()
    };
    let while_running = held();
    // SAFETY: kill on the package's own process group.
    unsafe { libc::kill(-(running.pid as i32), libc::SIGKILL) };
    let ended = running.wait(Duration::from_secs(10));
    assert!(own.starts_with("mnt:["), "{own}");
    assert!(while_running.contains(&own), "held while it runs: {own} in {while_running:?}");
    assert!(matches!(ended, Ok(Some(_))), "it ended: {ended:?}");
    wait_until("the namespace is let go of after the exit", Duration::from_secs(10), || {
        (!held().contains(&own)).then_some(())
    });
}

/// `sh -c line` in `sandbox` at the full level (Landlock and namespaces), as the node's own user.
fn fully_contained(sandbox: &Path, line: &str) -> buildnet_actors::exec::contain::Spec {
    use buildnet_actors::exec::contain::{SandboxLevel, Spec};
    Spec {
        dir: sandbox.to_path_buf(),
        read_only: vec![],
        level: SandboxLevel::Full,
        user: None,
        tmp: None,
        given: false,
        argv: vec!["/bin/sh".into(), "-c".into(), line.into()],
    }
}

/// Runs `spec` through `server` with `PATH` as its environment, as the executor does: its exit
/// status and what it printed on stdout and stderr.
fn served(
    server: &buildnet_actors::exec::forkserver::ForkServer,
    spec: &buildnet_actors::exec::contain::Spec,
) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let (mut read, write) = std::io::pipe().expect("pipe");
    let write = std::os::fd::OwnedFd::from(write);
    let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
    let started = server.start(spec, &env, &write, &write).expect("started");
    drop(write);
    let (status, _) = wait_until("the package ends", Duration::from_secs(20), || {
        started.wait(Duration::from_millis(100)).expect("the launcher lives")
    });
    let mut said = String::new();
    read.read_to_string(&mut said).expect("output");
    (status, said)
}

/// A runtime found on the node's PATH through a version manager's shim (pyenv's, asdf's: a script
/// that execs the interpreter from a directory of the manager's own) runs in the sandbox: the
/// node advertises the interpreter the shim leads to, and the sandbox exposes that one's prefix.
/// Exposing only the shim, as before, failed every Python package with exit 127.
#[test]
fn a_runtime_behind_a_version_managers_shim_runs_in_the_sandbox() {
    let _shared = common::shared();
    let asked = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output();
    let Some(real) =
        asked.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        eprintln!("no python3 here: skipped");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let manager = tmp.path().canonicalize().expect("canonical").join("manager");
    let (shims, bin) = (manager.join("shims"), manager.join("versions/3/bin"));
    std::fs::create_dir_all(&shims).expect("shims");
    std::fs::create_dir_all(&bin).expect("versions");
    std::os::unix::fs::symlink(&real, bin.join("python3")).expect("the interpreter");
    common::fake_tool(&shims, "python3", &format!("#!/bin/sh\nexec '{}' \"$@\"\n", bin.join("python3").display()));

    let node = TestNode::start_with(Start { path_prefix: Some(&shims), ..Default::default() });
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).expect("project");
    std::fs::write(
        project.join("buildnet.toml"),
        "[packages.py]\ncommand = [\"python3\", \"-c\", \"open('out.txt', 'w').write('ran in python')\"]\n\
         outputs = [\"out.txt\"]\nruntimes = [{ name = \"python\", version = \">=3\" }]\n",
    )
    .expect("manifest");
    let out = node.cli(&["build", "--project", project.to_str().expect("path")]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(project.join("out.txt")).expect("output"), "ran in python");
    let status = node.cli_json(&["node", "status"]);
    let python = status["resources"]["runtimes"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "python"));
    let advertised = python.and_then(|p| p["path"].as_str()).unwrap_or_default().to_string();
    assert_eq!(advertised, bin.join("python3").display().to_string(), "the interpreter, not the shim: {status}");
}
