#!/usr/bin/env python3
"""Where a cold C build's time goes against make's, by the kernel's own clock: the
`sched_process_exec` and `sched_process_exit` tracepoints (`perf record -a`, so root or a low
`perf_event_paranoid`) over cold c-compdb builds on the three-node mesh of bench/builds.py and
`make -B -jN` runs of the same project, each run cut into

  start    the CLI's (or make's) exec to the first cc1
  compile  to the last `as` exiting before the link
  gap      to the link's collect2 — cores idle in between
  link     to the linker exiting
  tail     to the CLI's (or make's) exit

and the medians printed side by side. It is how the 17–39 ms wait between the last compile and
the link was found (issue 14; ARCHITECTURE.md, *The wait before the link*).

Usage: python3 bench/phases.py [--runs 8] [--bin PATH]   (builds target/release/buildnet unless
--bin). Standard library and perf; everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, os, re, statistics, subprocess, sys, time

import builds
import localmesh
from localmesh import cli


TRACEPOINTS = ["sched:sched_process_exec", "sched:sched_process_exit"]


def traced_runs(bin_path, runs, read, tracepoints=TRACEPOINTS):
    """Cold c-compdb builds on the mesh of bench/builds.py and `make -B -jN` runs of the same
    project, interleaved, under `perf record -a` of `tracepoints`; returns `read(perf.data)`,
    read before the mesh is stopped."""
    with builds.compdb_mesh(bin_path, "bn-phases-") as (work, a, project):
        jobs = builds.total_cores(a)
        cli(a, "build", "--project", project, "--force")
        data = os.path.join(work, "perf.data")
        events = [x for t in tracepoints for x in ("-e", t)]
        perf = subprocess.Popen(["perf", "record", "-a", *events, "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        time.sleep(0.5)
        for _ in range(runs):
            cli(a, "build", "--project", project, "--force")
            time.sleep(0.05)
            subprocess.run(["make", "-s", "-B", f"-j{jobs}", "-C", project], check=True, capture_output=True)
            time.sleep(0.05)
        perf.send_signal(2)
        perf.wait()
        return read(data)


def events(data):
    """(time, kind, text) of every traced event, in time order."""
    text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    out = []
    for line in text.splitlines():
        m = re.search(r"\s(\d+\.\d+): sched:(sched_process_\w+): (.*)", line)
        if m:
            out.append((float(m.group(1)), m.group(2), m.group(3)))
    return out


def spans(ev, program):
    """(exec, exit) times of each traced run of `program`."""
    for i, (t, kind, text) in enumerate(ev):
        if kind != "sched_process_exec" or f"filename={program} " not in text + " ":
            continue
        pid = re.search(r"pid=(\d+)", text).group(1)
        end = next((t2 for t2, k2, x2 in ev[i:] if k2 == "sched_process_exit" and f"pid={pid} " in x2), None)
        if end is not None:
            yield t, end


def phases(ev, program):
    """The phases of each run of `program` (its exec to its exit), in ms."""
    rows = []
    for t, end in spans(ev, program):
        win = [x for x in ev if t <= x[0] <= end]
        cc1 = [x[0] for x in win if x[1] == "sched_process_exec" and "cc1" in x[2]]
        link = [x[0] for x in win if x[1] == "sched_process_exec" and "collect2" in x[2]]
        if not cc1 or not link:
            continue
        as_done = [x[0] for x in win if x[1] == "sched_process_exit" and "comm=as " in x[2] and x[0] < link[0]]
        ld_done = [x[0] for x in win if x[1] == "sched_process_exit" and ("comm=ld " in x[2] or "comm=collect2" in x[2])]
        if not as_done or not ld_done:
            continue
        last = max(as_done)
        rows.append({"total": end - t, "start": cc1[0] - t, "compile": last - cc1[0], "gap": link[0] - last,
                     "link": max(ld_done) - link[0], "tail": end - max(ld_done)})
    return [{k: v * 1000 for k, v in r.items()} for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--bin", help=builds.BIN_HELP)
    args = ap.parse_args()
    ev = traced_runs(args.bin, args.runs, events)
    make = subprocess.run(["sh", "-c", "command -v make"], capture_output=True, text=True).stdout.strip()
    columns = ["total", "start", "compile", "gap", "link", "tail"]
    print(f"c-compdb, cold, medians of {args.runs} interleaved runs (ms; make -jN at the same concurrency)")
    print(f"{'':<10}" + "".join(f"{c:>10}" for c in columns))
    for label, program in (("buildnet", localmesh.BIN), ("make", os.path.realpath(make))):
        rows = phases(ev, program)
        if not rows:
            print(f"{label:<10} (no complete run traced)")
            continue
        print(f"{label:<10}" + "".join(f"{statistics.median(r[c] for r in rows):>10.1f}" for c in columns))


if __name__ == "__main__":
    sys.exit(main())
