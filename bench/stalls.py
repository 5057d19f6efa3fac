#!/usr/bin/env python3
"""Where BuildNet's processes wait in the kernel during cold builds: every switch away from one of
the node's threads in uninterruptible sleep (`sched:sched_switch` with `prev_state=D`, kernel call
chains from `perf record -a -g`) over cold c-compdb builds on the three-node mesh of
bench/builds.py, counted per build by process kind and by the kernel function that decides what
the wait is (an `fsync`, a discard, a lock taken in an `open`, a namespace teardown, ...).

A wait in the fork server holds up every package start and exit of its node; one on a blocking
thread holds that thread; the ledger's `fsync` is the durability the ledger promises. This is how
the fork server's waits on its children's `execve` (opening `/proc/<pid>/ns/mnt`) and on
namespace teardowns were found (issue 14; ARCHITECTURE.md, *The fork server's waits*).

Usage: python3 bench/stalls.py [--runs 4] [--bin PATH]   (builds target/release/buildnet unless
--bin). Standard library and perf; everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, collections, os, subprocess, time

import builds
import localmesh
from localmesh import cli

# The kernel functions that name a wait, most telling first; a chain with none of them is
# counted under its third frame.
KINDS = ["proc_ns_get_link", "synchronize_rcu_expedited", "blkdev_issue_discard", "do_fsync",
         "do_renameat2", "ext4_evict_inode", "rwsem_down_read_slowpath", "__mutex_lock"]


def kind_of(frames):
    return next((k for k in KINDS if k in frames), frames[2] if len(frames) > 2 else "?")


def process_kind(comm, pid, servers):
    """The fork servers (`sandbox-exec --serve`), the daemons' blocking pool, their other threads."""
    if pid in servers:
        return "fork server"
    if comm.startswith("tokio-rt"):
        return "blocking thread"
    return "daemon: " + comm if not comm.startswith(os.path.basename(localmesh.BIN)[:15]) else "daemon"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--bin", help=builds.BIN_HELP)
    args = ap.parse_args()
    with builds.compdb_mesh(args.bin, "bn-stalls-", settled=True) as (work, alpha, project):
        for _ in range(3):
            cli(alpha, "build", "--project", project, "--force")
        pgrep = lambda pattern: set(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split())
        mine = pgrep(f"{localmesh.BIN} (up|sandbox-exec) ")
        servers = {int(p) for p in pgrep("sandbox-exec --serve") & mine}
        data = os.path.join(work, "stalls.data")
        perf = subprocess.Popen(["perf", "record", "-a", "-g", "-e", "sched:sched_switch", "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        time.sleep(0.5)
        for _ in range(args.runs):
            cli(alpha, "build", "--project", project, "--force")
        perf.send_signal(2)
        perf.wait()
        script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,trace,ip,sym"],
                                capture_output=True, text=True).stdout
    counts = collections.Counter()
    for block in script.split("\n\n"):
        lines = block.strip().split("\n")
        if not lines or "prev_state=D" not in lines[0]:
            continue
        head = lines[0].split()
        comm, pid = head[0], int(head[1]) if head[1].isdigit() else -1
        if str(pid) not in mine and pid not in servers:
            continue
        frames = [l.split()[1].split("+")[0] for l in lines[1:] if len(l.split()) > 1]
        frames = [f for f in frames if not f.startswith(("__schedule", "schedule"))]
        counts[(process_kind(comm, pid, servers), kind_of(frames))] += 1
    print(f"Waits in uninterruptible sleep per cold c-compdb build ({args.runs} builds, 3 nodes)")
    print(f"{'process':<18} {'wait':<28} {'per build':>9}")
    for (proc, kind), n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{proc:<18} {kind:<28} {n / args.runs:>9.1f}")


if __name__ == "__main__":
    main()
