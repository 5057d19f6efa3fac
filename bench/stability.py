#!/usr/bin/env python3
"""Benchmark stability: runs `buildnet test cpu` and `buildnet test storage` N times on one local
node and prints, per figure, the median and the largest deviation from it in %. Baselines in the
same run, interleaved with ours so both see the same machine:

  CPU      sysbench cpu (one thread, then every core) when `sysbench` is on PATH
  storage  fio on the same file size and block size (direct I/O, psync: 1 MiB sequential write
           and read, 4 KiB random read and write) when `fio` is on PATH

Usage: python3 bench/stability.py [--runs 5] [--seconds S] [--size-mb 256] [--no-storage]
                                  [--no-cpu] [--bin PATH] [--json]
Builds target/release/buildnet first (or uses --bin, e.g. an older binary for a before/after).
Standard library only; the node listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys

import localmesh
from localmesh import cli_json, mesh

# No start-up benchmark: the runs measured here are the only load the script adds.
NO_BENCH_ON_START = '{"benchmark": {"on_start": false}}'
# Ours spends its default random_secs (2 s) half reading, half writing: fio gets the same second.
RANDOM_SECS = 1


def spread(values):
    """(median, largest deviation from the median in %)."""
    med = statistics.median(values)
    dev = max(abs(v - med) for v in values) / med * 100 if med else 0.0
    return med, dev


def sysbench(threads, seconds):
    out = subprocess.run(["sysbench", "cpu", f"--threads={threads}", f"--time={seconds}", "run"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"events per second:\s*([\d.]+)", out).group(1))


def fio(directory, name, rw, bs, size_mb, runtime=None):
    """One fio job on a fresh file in `directory`; MB/s for sequential jobs, IOPS for random."""
    path = os.path.join(directory, f"fio-{name}.dat")
    args = ["fio", f"--name={name}", f"--filename={path}", f"--size={size_mb}M", f"--bs={bs}",
            f"--rw={rw}", "--direct=1", "--ioengine=psync", "--output-format=json"]
    if runtime:
        args += ["--time_based", f"--runtime={runtime}"]
    try:
        job = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)["jobs"][0]
    finally:
        if os.path.exists(path):
            os.remove(path)
    side = job["write" if "write" in rw else "read"]
    return side["bw_bytes"] / 1e6 if bs == "1M" else side["iops"]


def row(label, values, unit, disturbed=None):
    """One printed figure; `disturbed[i]` marks a run BuildNet itself found disturbed."""
    med, dev = spread(values)
    return {"figure": label, "unit": unit, "median": med, "max_dev_pct": dev, "runs": values,
            "disturbed": disturbed or [False] * len(values)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, help="buildnet test cpu --seconds (default: the CLI's)")
    ap.add_argument("--size-mb", type=int, default=256, help="storage test file size")
    ap.add_argument("--no-storage", action="store_true")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--bin", help="use this buildnet binary instead of building target/release")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.bin:
        localmesh.BIN = os.path.abspath(args.bin)
    has_sysbench, has_fio = shutil.which("sysbench"), shutil.which("fio")
    load_before = f"{os.getloadavg()[0]:.2f}"
    cpu_args = ["test", "cpu"] + (["--seconds", str(args.seconds)] if args.seconds else [])
    rows = []
    with mesh(["solo"], NO_BENCH_ON_START, "bn-stability-", lambda n: n["cores"] > 0,
              build=not args.bin) as (work, dirs):
        node = dirs["solo"]
        cpu, base = [], {1: [], 2: []}
        for _ in range(0 if args.no_cpu else args.runs):
            cpu.append(cli_json(node, *cpu_args)["cpu"])
            if has_sysbench:
                threads = cpu[-1]["threads"]
                secs = max(1, round(cpu[-1]["duration_ms"] / 2000))
                base[1].append(sysbench(1, secs))
                base[2].append(sysbench(threads, secs))
        disturbed = [c.get("disturbed") for c in cpu if c.get("disturbed")]
        if cpu:
            threads = cpu[0]["threads"]
            marks = [bool(c.get("disturbed")) for c in cpu]
            rows.append(row("cpu single (units/s)", [c["single_core_score"] for c in cpu], "units/s", marks))
            rows.append(row(f"cpu all {threads} threads", [c["multi_core_score"] for c in cpu], "units/s", marks))
            rows.append(row("cpu efficiency", [c["parallel_efficiency"] for c in cpu], "", marks))
        if cpu and has_sysbench:
            rows.append(row("sysbench 1 thread", base[1], "events/s"))
            rows.append(row(f"sysbench {threads} threads", base[2], "events/s"))

        if not args.no_storage:
            target = os.path.join(work, "volume")
            os.makedirs(target)
            ours, theirs = [], {k: [] for k in ("write", "read", "randread", "randwrite")}
            for _ in range(args.runs):
                s = cli_json(node, "test", "storage", target, "--size-mb", str(args.size_mb))
                ours.append(s)
                if has_fio:
                    theirs["write"].append(fio(target, "seqwrite", "write", "1M", args.size_mb))
                    theirs["read"].append(fio(target, "seqread", "read", "1M", args.size_mb))
                    theirs["randread"].append(fio(target, "randread", "randread", "4k", args.size_mb, RANDOM_SECS))
                    theirs["randwrite"].append(fio(target, "randwrite", "randwrite", "4k", args.size_mb, RANDOM_SECS))
            for key, label, unit in [("seq_write_mbps", "write", "MB/s"), ("seq_read_mbps", "read", "MB/s"),
                                     ("random_read_iops", "randread", "IOPS"),
                                     ("random_write_iops", "randwrite", "IOPS")]:
                r = row(f"storage {label} ({ours[0]['method']}, {args.size_mb} MB)", [s[key] for s in ours], unit)
                if has_fio:
                    f = row(f"fio {label}", theirs[label], unit)
                    r["vs_fio"] = r["median"] / f["median"] if f["median"] else None
                    rows.append(r)
                    rows.append(f)
                else:
                    rows.append(r)

    if args.json:
        print(json.dumps({"runs": args.runs, "figures": rows, "cpu_disturbed_runs": disturbed}))
        return
    print(f"{args.runs} runs on one node, interleaved with the baselines; load average "
          f"{load_before} before, {os.getloadavg()[0]:.2f} at the end")
    print(f"{'figure':<34} {'median':>12} {'max dev':>9} {'vs fio':>7}  runs")
    for r in rows:
        vs = f"{r['vs_fio']:.2f}" if r.get("vs_fio") else ""
        runs = ", ".join((f"{v:.0f}" if r["median"] > 10 else f"{v:.3f}") + ("*" if d else "")
                         for v, d in zip(r["runs"], r["disturbed"]))
        print(f"{r['figure']:<34} {r['median']:>12.1f} {r['max_dev_pct']:>8.1f}% {vs:>7}  {runs}")
    if disturbed:
        print(f"* {len(disturbed)} CPU runs said other work disturbed them (not advertised): "
              + "; ".join(disturbed))


if __name__ == "__main__":
    sys.exit(main())
