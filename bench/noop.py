#!/usr/bin/env python3
"""What a build with nothing to do costs, against make finding nothing to do on the same project.

On the three-node mesh of bench/builds.py, with examples like its c-compdb (30 packages), once
the project's files have settled (2 s: see ARCHITECTURE.md, *Up to date from stamps alone*):

  after a build   `buildnet build` right after a cold `buildnet build --force`, and `make -s -jN`
                  right after `make -B -jN` (N = the nodes' cores), each time (what
                  bench/builds.py's `cached` and `make nop` columns measure: buildnet checks the
                  outputs just written by their content)
  interleaved     once everything has settled, the same two commands and `buildnet --version`
                  (the binary's own start), one after the other, many times over, with nothing
                  built in between (buildnet reads no file but its record)

and prints the medians. Both answers say "up to date"; the second block is the steady state.

Usage: python3 bench/noop.py [--rounds 60] [--builds 11] [--bin PATH]   (builds target/release/
buildnet unless --bin). Standard library only; everything listens on 127.0.0.1 and is stopped at
the end.
"""
import argparse, statistics, subprocess, time

import builds
import localmesh
from localmesh import cli


def timed(cmd):
    """Wall time of one command in ms, and its standard output."""
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return (time.perf_counter() - start) * 1000, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--builds", type=int, default=11)
    ap.add_argument("--bin", help=builds.BIN_HELP)
    args = ap.parse_args()
    with builds.compdb_mesh(args.bin, "bn-noop-", settled=True) as (_, a, project):
        jobs = f"-j{builds.total_cores(a)}"  # make at the nodes' total concurrency, as bench/builds.py runs it
        noop = [localmesh.BIN, "--data-dir", a, "build", "--project", project]
        make_nop = ["make", "-s", jobs, "-C", project]
        after = {"buildnet": [], "make": []}
        for _ in range(args.builds):
            cli(a, "build", "--project", project, "--force")
            ms, said = timed(noop)
            if not said.startswith("Up to date"):
                raise SystemExit(f"expected an up-to-date answer, got: {said.strip()}")
            after["buildnet"].append(ms)
            subprocess.run(["make", "-s", "-B", jobs, "-C", project], check=True, capture_output=True)
            after["make"].append(timed(make_nop)[0])
        # The steady state: what the builds above wrote settles, and one answer takes the new stamps
        # into the record (make -B rewrote the outputs buildnet wrote), so none is read again.
        time.sleep(builds.SETTLE_S)
        timed(noop)
        interleaved = {"buildnet": [], "make": [], "--version": []}
        for _ in range(args.rounds):
            ms, said = timed(noop)
            if not said.startswith("Up to date") or "checked by content" in said:
                raise SystemExit(f"expected an answer from stamps alone, got: {said.strip()}")
            interleaved["buildnet"].append(ms)
            interleaved["make"].append(timed(make_nop)[0])
            interleaved["--version"].append(timed([localmesh.BIN, "--version"])[0])
        print(f"c-compdb on 3 local nodes, nothing to do; medians in ms ({args.builds} builds, {args.rounds} rounds)")
        print(f"{'':14} {'buildnet build':>15} {'make ' + jobs:>10} {'buildnet --version':>19}")
        print(f"{'after a build':14} {statistics.median(after['buildnet']):>15.2f} "
              f"{statistics.median(after['make']):>10.2f} {'':>19}")
        print(f"{'interleaved':14} {statistics.median(interleaved['buildnet']):>15.2f} "
              f"{statistics.median(interleaved['make']):>10.2f} {statistics.median(interleaved['--version']):>19.2f}")


if __name__ == "__main__":
    main()
