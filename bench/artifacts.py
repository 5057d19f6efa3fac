#!/usr/bin/env python3
"""Artifact round trip: a package on `beta` writes a large output (zeros from /dev/zero), the
mesh carries it to `alpha`, the CLI writes it back into the project. Samples the peak resident
size (VmHWM) of both nodes and of the CLI while that runs, and fails if any exceeds the bound.

Usage: python3 bench/artifacts.py [--mb 1024] [--limit-mb 100]
(builds target/release/buildnet first; standard library only; everything on 127.0.0.1.)
"""
import argparse, os, subprocess, sys, threading, time

from localmesh import BIN, cli, cli_json, mesh

# No benchmarks at all: the memory benchmark takes 256 MiB on purpose, which is not what this
# measures.
NO_BENCHMARKS = '{"benchmark": {"on_start": false, "interval_hours": 0}}'


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def node_pid(data):
    """The pid of the `buildnet up` serving data dir `data`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"up" in args and data.encode() in args:
                return int(entry)
    raise SystemExit(f"no node for {data}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024, help="size of the output in MiB")
    ap.add_argument("--limit-mb", type=int, default=100, help="largest peak RSS allowed per process")
    args = ap.parse_args()
    with mesh(["alpha", "beta"], NO_BENCHMARKS, "bn-artifacts-", lambda n: n["cores"] > 0) as (work, dirs):
        a, b = dirs["alpha"], dirs["beta"]
        beta_id = next(n["id"] for n in cli_json(a, "pool", "nodes")["nodes"] if n["name"] == "beta")
        cli(a, "config", "create", "--name", "on-beta", "--node", f"{beta_id}:1")
        project = os.path.join(work, "project")
        os.makedirs(project)
        with open(os.path.join(project, "buildnet.toml"), "w") as f:
            f.write(f'[packages.big]\nshell = "dd if=/dev/zero of=out/big.bin bs=1M count={args.mb} status=none"\n'
                    'outputs = ["out/big.bin"]\n')
        pids = {"alpha": node_pid(a), "beta": node_pid(b)}
        peaks = {"alpha": 0, "beta": 0, "cli": 0}
        done = threading.Event()

        def sample():
            while not done.is_set():
                for name, pid in list(pids.items()):
                    peaks[name] = max(peaks[name], status_kb(pid, "VmHWM:"), status_kb(pid, "VmRSS:"))
                time.sleep(0.01)

        start = time.perf_counter()
        proc = subprocess.Popen([BIN, "--data-dir", a, "build", "--config", "on-beta", "--project", project],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pids["cli"] = proc.pid
        sampler = threading.Thread(target=sample)
        sampler.start()
        out, err = proc.communicate()
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"the build failed: {out}{err}")
        size = os.path.getsize(os.path.join(project, "out", "big.bin"))
        if size != args.mb << 20:
            raise SystemExit(f"the output has {size} bytes, not {args.mb} MiB")
        history = cli_json(a, "history", "-n", "1")["builds"][0]
        detail = cli_json(a, "history", history["id"])
        node = detail["packages"][0]["node"]
        print(f"{args.mb} MiB output built on beta ({'yes' if node == beta_id else 'NO: ' + node}), "
              f"returned to the project in {elapsed:.1f} s ({args.mb / elapsed:.0f} MiB/s end to end)")
        for name in ("alpha", "beta", "cli"):
            print(f"  peak RSS {name:5}: {peaks[name] / 1024:6.1f} MiB")
        worst = max(peaks.values()) / 1024
        if node != beta_id or worst >= args.limit_mb:
            sys.exit(f"FAIL: peak {worst:.1f} MiB (limit {args.limit_mb} MiB)")


if __name__ == "__main__":
    main()
