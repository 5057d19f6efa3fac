#!/usr/bin/env python3
"""Scale: the simulated mesh (N real engines in one process over in-memory links with latency,
jitter and loss), placement of a 10,000-package build over 100 nodes, and ledger sync of
100,000 entries to a fresh peer — each figure beside its target from issue 14.

Usage: python3 bench/scale.py [--nodes 10,50,200] [--latency-ms 2] [--jitter-ms 2] [--loss 0.01]
                              [--skip-placement] [--skip-sync] [--on-disk] [--json]
Builds the benchmarks first (`cargo bench --no-run`, release). Standard library only.
With --json: one JSON object per run, as the benchmarks print them.

The simulated nodes' SQLite files go to /dev/shm when it exists (--on-disk: the system's temp
dir): each real node has a disk of its own, while 200 simulated nodes on one disk queue every
node's fsyncs behind each other (joining 200 nodes writes every roster entry and join entry on
every node, ~N^2 synced commits) and time the disk, not the mesh. Nothing the simulation checks
depends on the files surviving a crash.
"""
import argparse, json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (field, target, how to compare, unit) for the mesh at 200 nodes (issue 14, item 2).
MESH_TARGETS = [
    ("offline_detect_ms", 3000, "<=", "ms"),
    ("coordinator_failover_ms", 5000, "<=", "ms"),
    ("partition_heal_ms", 10000, "<=", "ms"),
    ("lost_entries", 0, "<=", ""),
    ("bytes_per_node_per_s", 20000, "<=", "B/s"),
]
OTHER_TARGETS = [
    ("placement_10k_on_100_ms", 1000, "<=", "ms"),
    ("ledger_sync_100k_ms", 10000, "<=", "ms"),
    ("ledger_sync_peak_rss_mb", 200, "<", "MB"),
]


def bench_binary(name):
    """Builds one benchmark and returns its executable (cargo prints it on stderr)."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "buildnet-actors", "--bench", name, "--no-run"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"building the {name} benchmark failed:\n{out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        line = line.strip()
        if line.startswith("Executable") and f"benches/{name}.rs" in line:
            return line.rsplit("(", 1)[1].rstrip(")")
    sys.exit(f"cargo did not say where the {name} benchmark is")


def run_json(binary, args, env=None):
    """Runs a benchmark with --json; every JSON line it prints."""
    out = subprocess.run([os.path.join(ROOT, binary) if not os.path.isabs(binary) else binary, *args, "--json"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{os.path.basename(binary)} failed: {out.stderr.strip()[-2000:]}")
    rows = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def verdict(value, target, op):
    if value is None:
        return "not measured"
    ok = value <= target if op == "<=" else value < target
    return "meets" if ok else "MISSES"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="10,50,200")
    ap.add_argument("--latency-ms", default="2")
    ap.add_argument("--jitter-ms", default="2")
    ap.add_argument("--loss", default="0.01")
    ap.add_argument("--skip-placement", action="store_true")
    ap.add_argument("--skip-sync", action="store_true")
    ap.add_argument("--on-disk", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sim_env = dict(os.environ)
    if not a.on_disk and os.path.isdir("/dev/shm"):
        sim_env["TMPDIR"] = "/dev/shm"

    rows = []
    sim = bench_binary("mesh_sim")
    for n in a.nodes.split(","):
        rows += run_json(sim, ["--nodes", n.strip(), "--latency-ms", a.latency_ms,
                               "--jitter-ms", a.jitter_ms, "--loss", a.loss], env=sim_env)
        if a.json:
            print(json.dumps(rows[-1]), flush=True)
    # Each benchmark prints one line per run (and, for placement, per shape): the figure is the
    # median over runs, and for placement the slower shape.
    samples = {}
    targets = {t[0] for t in OTHER_TARGETS}
    runs = []
    if not a.skip_placement:
        runs.append(("placement", ["--packages", "10000", "--runs", "3"]))
    if not a.skip_sync:
        runs.append(("ledger_sync", ["--entries", "100000", "--runs", "3"]))
    for name, args in runs:
        for r in run_json(bench_binary(name), args):
            if a.json:
                print(json.dumps(r), flush=True)
            for k, v in r.items():
                if k in targets:
                    samples.setdefault(k, {}).setdefault(r.get("shape", ""), []).append(v)
    others = {k: max(statistics.median(vs) for vs in by_shape.values()) for k, by_shape in samples.items()}
    if a.json:
        return

    print(f"mesh (links: {a.latency_ms} ms latency, {a.jitter_ms} ms jitter, {a.loss} loss)")
    header = f"{'figure':<26}" + "".join(f"{'N=' + str(r['nodes']):>12}" for r in rows) + f"{'target':>12}  at N={rows[-1]['nodes']}"
    print(header)
    for field, target, op, unit in MESH_TARGETS:
        cells = "".join(f"{r.get(field, float('nan')):>12.0f}" for r in rows)
        print(f"{field:<26}{cells}{op + ' ' + str(target):>12}  {verdict(rows[-1].get(field), target, op)}")
    for field in ("all_online_ms", "links_per_node", "cpu_ms_per_node_per_s", "partition_detect_ms"):
        cells = "".join(f"{r.get(field, float('nan')):>12.1f}" for r in rows)
        print(f"{field:<26}{cells}")
    if others or not (a.skip_placement and a.skip_sync):
        print()
        for field, target, op, unit in OTHER_TARGETS:
            value = others.get(field)
            shown = "-" if value is None else f"{value:.0f} {unit}"
            print(f"{field:<26}{shown:>12}{op + ' ' + str(target):>12}  {verdict(value, target, op)}")


if __name__ == "__main__":
    main()
