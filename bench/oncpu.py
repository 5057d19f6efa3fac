#!/usr/bin/env python3
"""Who is on the CPUs in each phase of a cold C build (bench/phases.py's phases), by the
`sched_switch` tracepoint: the exact time every thread ran, summed per program (comm) within
the phase, for BuildNet's runs and make's, medians over runs. Says what shares the cores with
the compilers and what keeps a core busy or idle while the link runs.

Usage: python3 bench/oncpu.py [--runs 6] [--bin PATH] [--top 12]
Needs perf (root or a low perf_event_paranoid); everything listens on 127.0.0.1.
"""
import argparse, collections, os, re, statistics, subprocess, sys

import builds
import localmesh
from phases import TRACEPOINTS, phases, spans, traced_runs

SWITCH = re.compile(r"\[(\d+)\]\s+(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*==> next_comm=(.*?) next_pid=(\d+)")
OTHER = re.compile(r"\s(\d+\.\d+):\s+sched:(sched_process_\w+): (.*)")


def parse(data):
    text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    ev, runs = [], []  # (time, kind, text); per cpu (start, end, comm) on-cpu intervals
    on = {}
    for line in text.splitlines():
        m = SWITCH.search(line)
        if m:
            cpu, t, prev, _pp, nxt, npid = m.groups()
            t = float(t)
            if cpu in on:
                start, comm, pid = on[cpu]
                if pid != "0":
                    runs.append((start, t, comm))
            on[cpu] = (t, nxt, npid)
            continue
        m = OTHER.search(line)
        if m:
            ev.append((float(m.group(1)), m.group(2), m.group(3)))
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


def busy(runs, lo, hi):
    per = collections.Counter()
    for s, e, comm in runs:
        a, b = max(s, lo), min(e, hi)
        if b > a:
            per[comm] += (b - a) * 1000
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--bin", help=builds.BIN_HELP)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    ev, runs = traced_runs(args.bin, args.runs, parse, TRACEPOINTS + ["sched:sched_switch"])
    make = os.path.realpath(subprocess.run(["sh", "-c", "command -v make"], capture_output=True, text=True).stdout.strip())
    for label, program in (("buildnet", localmesh.BIN), ("make", make)):
        ws = list(windows(ev, program))
        print(f"== {label}: {len(ws)} runs; CPU-ms per phase (median over runs), by program")
        for phase in ("start", "compile", "gap", "link", "tail"):
            spans = [next((lo, hi) for name, lo, hi in bounds if name == phase) for bounds in ws]
            per_run = [busy(runs, lo, hi) for lo, hi in spans]
            comms = collections.Counter()
            for c in per_run:
                comms.update(c)
            walls = [(hi - lo) * 1000 for lo, hi in spans]
            total = statistics.median([sum(c.values()) for c in per_run])
            top = ", ".join(f"{k} {v/len(ws):.1f}" for k, v in comms.most_common(args.top))
            print(f"  {phase:<8} wall {statistics.median(walls):6.1f}  busy {total:6.1f}  | {top}")


if __name__ == "__main__":
    sys.exit(main())
