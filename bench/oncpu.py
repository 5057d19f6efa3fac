#!/usr/bin/env python3
"""Who is on the CPUs in each phase of a cold C build (bench/phases.py's phases), by the
`sched_switch` tracepoint: the exact time every thread ran, summed per program (comm) within
the phase, for BuildNet's runs and make's, medians over runs. Says what shares the cores with
the compilers and what keeps a core busy or idle while the link runs.

BuildNet's own processes share one program name, so they are told apart by process: `CLI` (the
`buildnet build` runs), `daemon:<thread>` (the three nodes' threads), `fork server` (each node's
`sandbox-exec --serve`) and `package set-up` (a package's process before its exec: containment,
and the exec itself until the kernel renames it). make's children before their exec count as
`make`, as they are its forks.

Usage: python3 bench/oncpu.py [--runs 6] [--bin PATH] [--top 12]
Needs perf (root or a low perf_event_paranoid); everything listens on 127.0.0.1.
"""
import argparse, collections, os, re, statistics, subprocess, sys

import builds
import localmesh
from phases import TRACEPOINTS, phases, spans, traced_runs

# perf script -F pid,tid,cpu,time,event,trace: the sample's pid/tid is the task switched out.
SWITCH = re.compile(r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*==> next_comm=(.*?) next_pid=(\d+)")
EXEC = re.compile(r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+sched:sched_process_exec:")
OTHER = re.compile(r"\s(\d+\.\d+):\s+sched:(sched_process_\w+): (.*)")


def parse(data):
    fields = "pid,tid,cpu,time,event,trace"
    text = subprocess.run(["perf", "script", "-F", fields, "-i", data], capture_output=True, text=True).stdout
    ev, runs = [], []  # (time, kind, text); (start, end, comm, process) on-cpu intervals
    on = {}  # cpu -> (when the task now on it came on, its name then, its tid)
    for line in text.splitlines():
        m = SWITCH.search(line)
        if m:
            process, tid, cpu, t, prev, _pp, nxt, npid = m.groups()
            t = float(t)
            if cpu in on and tid != "0":
                start, name, was = on[cpu]
                # The name it came on with, if it is the task that came on (perf may lose events).
                runs.append((start, t, (name if was == tid else None) or prev, process))
            on[cpu] = (t, nxt, npid)
            continue
        m = OTHER.search(line)
        if m:
            ev.append((float(m.group(1)), m.group(2), m.group(3)))
            # An exec renames the task mid-slice: what ran before it counts under the old name.
            x = EXEC.search(line)
            if x and on.get(x.group(3), (0, "", ""))[2] == x.group(2):
                process, tid, cpu, t = x.group(1), x.group(2), x.group(3), float(x.group(4))
                start, name, _ = on[cpu]
                runs.append((start, t, name, process))
                on[cpu] = (t, None, tid)
    return ev, runs


def windows(ev, program):
    """(start, compile, gap, link, tail) windows of each run of `program`, as time pairs."""
    out = []
    for t0, t_end in spans(ev, program):
        rows = phases([x for x in ev if t0 <= x[0] <= t_end], program)
        if not rows:
            continue
        row, s = rows[0], t0
        bounds = []
        for k in ("start", "compile", "gap", "link", "tail"):
            e = s + row[k] / 1000
            bounds.append((k, s, e))
            s = e
        out.append(bounds)
    return out


def namer(ev, runs, program):
    """Names what ran: the comm, or for BuildNet's own program which of its processes it was."""
    comm = os.path.basename(program)[:15]
    cli = {re.search(r"pid=(\d+)", x).group(1) for _, k, x in ev
           if k == "sched_process_exec" and f"filename={program} " in x + " "}
    # The daemons are the processes whose threads are async runtimes; each one's fork server is
    # the process of the program's name that ran longest besides them (packages come and go).
    daemons = {p for _, _, c, p in runs if c.startswith(("tokio-rt", "actix-rt"))}
    own = collections.Counter()
    for s, e, c, p in runs:
        if c == comm and p not in daemons and p not in cli:
            own[p] += e - s
    servers = {p for p, _ in own.most_common(len(daemons))}

    def name(c, p):
        if p in cli:
            return "CLI"
        if p in daemons:
            return f"daemon:{c}"
        if p in servers:
            return "fork server"
        return "package set-up" if c == comm else c
    return name


def busy(runs, lo, hi, name):
    per = collections.Counter()
    for s, e, comm, process in runs:
        a, b = max(s, lo), min(e, hi)
        if b > a:
            per[name(comm, process)] += (b - a) * 1000
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--bin", help=builds.BIN_HELP)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    ev, runs = traced_runs(args.bin, args.runs, parse, TRACEPOINTS + ["sched:sched_switch"])
    make = os.path.realpath(subprocess.run(["sh", "-c", "command -v make"], capture_output=True, text=True).stdout.strip())
    name = namer(ev, runs, localmesh.BIN)
    for label, program in (("buildnet", localmesh.BIN), ("make", make)):
        ws = list(windows(ev, program))
        print(f"== {label}: {len(ws)} runs; CPU-ms per phase (median over runs), by program")
        for phase in ("start", "compile", "gap", "link", "tail"):
            spans = [next((lo, hi) for name, lo, hi in bounds if name == phase) for bounds in ws]
            per_run = [busy(runs, lo, hi, name) for lo, hi in spans]
            comms = collections.Counter()
            for c in per_run:
                comms.update(c)
            walls = [(hi - lo) * 1000 for lo, hi in spans]
            total = statistics.median([sum(c.values()) for c in per_run])
            top = ", ".join(f"{k} {v/len(ws):.1f}" for k, v in comms.most_common(args.top))
            print(f"  {phase:<8} wall {statistics.median(walls):6.1f}  busy {total:6.1f}  | {top}")


if __name__ == "__main__":
    sys.exit(main())
