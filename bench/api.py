#!/usr/bin/env python3
"""HTTP API benchmark: `GET /api/pool` (authenticated with an observer key, a three-node pool
behind it) against `GET /api/health` (no key, no actor: the server's own ceiling) on the same
node in the same run, with wrk at 64 connections. Prints the medians of interleaved runs:
requests per second and latency percentiles.

Usage: python3 bench/api.py [--runs N] [--seconds S] [--connections C]
       (builds target/release/buildnet first; needs `wrk`, e.g. apt-get install -y wrk)
Standard library only; everything listens on 127.0.0.1 and is stopped at the end.
Targets (issue 14): /api/pool >= 20 000 req/s at 64 connections with p99 < 10 ms.
"""
import argparse, os, re, shutil, statistics, subprocess, sys

from localmesh import cli, mesh

# No benchmarks, now or scheduled: they would load the cores the server is timed on.
QUIET = '{"benchmark": {"on_start": false, "interval_hours": 0}}'

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url, seconds, connections, key=None):
    """One wrk run: (requests/s, {percentile: ms}, non-2xx responses)."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if key:
        args[1:1] = ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[int(pct)] = float(value) * UNITS_MS[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, lat, int(bad.group(1)) if bad else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    ready = lambda n: n["cores"] > 0
    with mesh(["alpha", "beta", "gamma"], QUIET, "bn-api-", ready) as (_work, dirs):
        alpha = dirs["alpha"]
        base = open(os.path.join(alpha, "address")).read().strip()
        key = cli(alpha, "key", "create", "--role", "observer", "--name", "wrk").strip().splitlines()[-1].strip()
        results = {"/api/health": [], "/api/pool": []}
        for _ in range(a.runs):
            results["/api/health"].append(wrk(base + "/api/health", a.seconds, a.connections))
            results["/api/pool"].append(wrk(base + "/api/pool", a.seconds, a.connections, key))
        print(f"wrk -t2 -c{a.connections} -d{a.seconds}s against one node of three on this machine, "
              f"medians of {a.runs} interleaved runs")
        print(f"{'endpoint':<12} {'req/s':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'non-2xx':>8}")
        for path, runs in results.items():
            med = lambda f: statistics.median(f(r) for r in runs)
            print(f"{path:<12} {med(lambda r: r[0]):>9.0f} {med(lambda r: r[1].get(50, 0)):>6.2f}ms "
                  f"{med(lambda r: r[1].get(90, 0)):>6.2f}ms {med(lambda r: r[1].get(99, 0)):>6.2f}ms "
                  f"{max(r[2] for r in runs):>8}")
        pool = results["/api/pool"]
        rps, p99 = statistics.median(r[0] for r in pool), statistics.median(r[1].get(99, 0) for r in pool)
        verdict = "met" if rps >= 20000 and p99 < 10 else "not met"
        print(f"target /api/pool >= 20000 req/s with p99 < 10 ms: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
