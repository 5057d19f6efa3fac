#!/usr/bin/env python3
"""Do BuildNet's benchmarks agree with the reference tools on the same machine?

  storage  `buildnet test storage DIR` against fio (direct I/O, the same file size, 1 MiB
           sequential blocks, 4 KiB random blocks, one job, queue depth 1, psync engine)
  cpu      `buildnet test cpu` parallel efficiency against `sysbench cpu` with 1 and N threads
  network  `buildnet test network` between two local nodes beside iperf3 on the same loopback

Prints medians of --runs repetitions side by side, the ratio BuildNet / reference, and whether
it is inside the issue's bound (storage ±25 %, CPU efficiency ±10 %; network is reported only:
BuildNet's figure is over the encrypted mesh link, iperf3's over a bare TCP socket).

Usage: python3 bench/agreement.py [--runs N] [--size-mb N] [--dir DIR] [--markdown]
Installs fio, sysbench and iperf3 with apt-get when they are missing (Debian).
Everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

from localmesh import cli_json, mesh

NO_BENCH_ON_START = '{"benchmark": {"on_start": false}}'


def ensure_tools():
    missing = [t for t in ["fio", "sysbench", "iperf3"] if shutil.which(t) is None]
    if missing:
        print(f"installing {', '.join(missing)} with apt-get…", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, stdout=subprocess.DEVNULL)


def fio(directory, size_mb, rw, bs, seconds=None):
    path = os.path.join(directory, "fio.test")
    args = ["fio", "--name=agreement", f"--filename={path}", f"--size={size_mb}M", f"--bs={bs}", f"--rw={rw}",
            "--direct=1", "--ioengine=psync", "--iodepth=1", "--numjobs=1", "--output-format=json"]
    if rw == "write":
        args.append("--end_fsync=1")
    if seconds:
        args += ["--time_based", f"--runtime={seconds}"]
    out = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    job = out["jobs"][0]
    return job["read"] if "read" in rw else job["write"]


def fio_storage(directory, size_mb, random_secs):
    # Write the file first (fio preallocates it, as BuildNet does), then read it.
    w = fio(directory, size_mb, "write", "1M")
    r = fio(directory, size_mb, "read", "1M")
    rr = fio(directory, size_mb, "randread", "4k", random_secs)
    rw = fio(directory, size_mb, "randwrite", "4k", random_secs)
    os.remove(os.path.join(directory, "fio.test"))
    return {
        "seq_write_mbps": w["bw_bytes"] / 1e6,
        "seq_read_mbps": r["bw_bytes"] / 1e6,
        "random_read_iops": rr["iops"],
        "random_write_iops": rw["iops"],
        "read_latency_us": rr["clat_ns"]["mean"] / 1000 + rr.get("slat_ns", {}).get("mean", 0) / 1000,
    }


def sysbench_eps(threads, seconds):
    out = subprocess.run(["sysbench", "cpu", f"--threads={threads}", f"--time={seconds}", "run"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if "events per second" in line:
            return float(line.split(":")[1])
    raise SystemExit("sysbench printed no events per second")


def iperf3_mbps(seconds):
    port = 5201 + os.getpid() % 1000
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            c = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                               capture_output=True, text=True)
            try:
                return json.loads(c.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError):
                time.sleep(0.2)  # the server was not listening yet
        raise SystemExit("iperf3 did not connect")
    finally:
        server.kill()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--dir", help="directory on the volume to test (default: a temporary one)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    opts = ap.parse_args()
    ensure_tools()
    rows = []
    with mesh(["alpha", "beta"], NO_BENCH_ON_START, "bn-agree-") as (work, dirs):
        a, b = dirs["alpha"], dirs["beta"]
        directory = opts.dir or os.path.join(work, "volume")
        os.makedirs(directory, exist_ok=True)
        # Storage: the same file size, block sizes and one-second random phases on both sides.
        ours, theirs = [], []
        for _ in range(opts.runs):
            ours.append(cli_json(a, "test", "storage", directory, "--size-mb", str(opts.size_mb)))
            theirs.append(fio_storage(directory, opts.size_mb, 1))
        method = ours[0]["method"]
        for key, label, unit in [("seq_read_mbps", "sequential read", "MB/s"),
                                 ("seq_write_mbps", "sequential write", "MB/s"),
                                 ("random_read_iops", "random 4 KiB read", "IOPS"),
                                 ("random_write_iops", "random 4 KiB write", "IOPS"),
                                 ("read_latency_us", "4 KiB read latency", "µs")]:
            mine = statistics.median(r[key] for r in ours)
            ref = statistics.median(r[key] for r in theirs)
            spread = (min(r[key] for r in ours), max(r[key] for r in ours), min(r[key] for r in theirs), max(r[key] for r in theirs))
            rows.append((f"storage {label} ({unit})", mine, f"fio ({method})", ref, 0.25, spread))

        # CPU: parallel efficiency from one thread and every core, 3 s per phase on both sides,
        # the two tools interleaved so they see the same conditions.
        n = os.cpu_count() or 1
        ours_eff, effs = [], []
        for _ in range(opts.runs):
            ours_eff.append(cli_json(a, "test", "cpu", "--seconds", "3")["cpu"]["parallel_efficiency"])
            effs.append(sysbench_eps(n, 3) / (sysbench_eps(1, 3) * n))
        rows.append((f"CPU parallel efficiency ({n} threads)", statistics.median(ours_eff), "sysbench cpu 1 vs N",
                     statistics.median(effs), 0.10, (min(ours_eff), max(ours_eff), min(effs), max(effs))))

        # Network: the mesh link between the two nodes beside iperf3 on the same loopback.
        up, down = [], []
        for _ in range(opts.runs):
            r = cli_json(b, "test", "network", "alpha", "--size-mb", "64")
            up.append(r["upload_mbps"])
            down.append(r["download_mbps"])
        refs = [iperf3_mbps(3) for _ in range(opts.runs)]
        ref = statistics.median(refs)
        rows.append(("network upload, mesh link (Mbit/s)", statistics.median(up), "iperf3 TCP loopback", ref, None,
                     (min(up), max(up), min(refs), max(refs))))
        rows.append(("network download, mesh link (Mbit/s)", statistics.median(down), "iperf3 TCP loopback", ref, None,
                     (min(down), max(down), min(refs), max(refs))))

    print(f"medians of {opts.runs} runs, storage file {opts.size_mb} MB in {directory if opts.dir else 'a temporary directory'}")
    if opts.markdown:
        print("| Measure | BuildNet (range) | Reference | Reference (range) | BuildNet / reference | Bound |")
        print("|---|---:|---|---:|---:|---|")
    for label, mine, ref_name, ref, bound, (lo, hi, rlo, rhi) in rows:
        ratio = mine / ref if ref else float("nan")
        verdict = "reported" if bound is None else ("within" if abs(ratio - 1) <= bound else "OUTSIDE") + f" ±{bound:.0%}"
        if opts.markdown:
            print(f"| {label} | {mine:,.2f} ({lo:,.2f}–{hi:,.2f}) | {ref_name} | {ref:,.2f} ({rlo:,.2f}–{rhi:,.2f}) "
                  f"| {ratio:.2f} | {verdict} |")
        else:
            print(f"{label:42} BuildNet {mine:12,.2f} [{lo:,.2f}–{hi:,.2f}]   {ref_name:22} {ref:12,.2f} "
                  f"[{rlo:,.2f}–{rhi:,.2f}]   ratio {ratio:5.2f}  {verdict}")


if __name__ == "__main__":
    main()
