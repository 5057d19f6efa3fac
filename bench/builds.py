#!/usr/bin/env python3
"""Build benchmark: BuildNet on a mesh of three local nodes against `make -jN` doing the same
work on the same machine at the same total concurrency (N = the cores of every node the build
may use). Prints medians of repeated, interleaved runs:

  (a) 200 packages whose command is `true`, on three nodes   — per-package overhead
  (a') the same with --local-only, on one node               — the same, without the mesh
  (b) examples/c-hello (4 packages)                           — compile + link + check
  (c) examples/c-compdb through `buildnet init` (30 packages)  — 29 compiles and a link

`overhead/pkg` is (buildnet cold - make) / packages: what a package costs beyond its command.
The daemons' and packages' CPU time per package (from /proc, `cpu/pkg`) against make's and its
children's (`make cpu/pkg`), and a cached build's CPU (the CLI process and the daemons, `cached
cpu`), say where it goes when the machine, not the wall clock, is the limit — on a loaded
machine they hold still where wall times do not. `make nop` is `make` again right after its own
build, with nothing to do (for the C projects; the `true`s are phony targets that make reruns):
the floor a cached rebuild is held against. `cached` is `buildnet build` again with nothing
changed, which the CLI answers itself ("Up to date", as make and ninja do: see README); `asked` is
the same with `--ask-node`, which sends the request and has the node find every package in its
cache (and record the build), for a binary that has that flag.

Usage: python3 bench/builds.py [--runs N] [--bin PATH] [--only LABEL]   (builds target/release/buildnet
first; --bin times another binary as it is, e.g. a copy from before a change, for a baseline;
--only runs the workloads whose label contains LABEL)
Standard library only; everything listens on 127.0.0.1 and is stopped at the end.
Targets (issue 14): overhead/pkg <= 1 ms for (a); (c) within 1.05x of make; cached <= 1 % of cold.
"""
import argparse, contextlib, os, resource, shutil, statistics, subprocess, sys, time

import localmesh
from localmesh import ROOT, cli, cli_json, mesh

# No benchmark, at start or scheduled (a node never measured is due at once): it would load
# the cores the builds are timed on.
QUIET = '{"benchmark": {"on_start": false, "interval_hours": 0}}'
BIN_HELP = "time this binary as it is instead of building target/release/buildnet"


@contextlib.contextmanager
def three_nodes(bin_path, prefix):
    """The mesh these build benchmarks time on: alpha, beta and gamma, release nodes on 127.0.0.1
    with no benchmark of their own, built first unless `bin_path` (`--bin`) names a binary to
    run as it is. Yields (work dir, data dir by name)."""
    if bin_path:
        localmesh.BIN = os.path.abspath(bin_path)
    ready = lambda n: n["cores"] > 0
    with mesh(["alpha", "beta", "gamma"], QUIET, prefix, ready, build=not bin_path) as (work, dirs):
        yield work, dirs


# How long a file must sit unchanged before the CLI's stamps vouch for it (builds::inputs::SETTLED_NS,
# 2 s): a user's tree between edits, which the scripts wait for where they time what a user sees.
SETTLE_S = 2.2


@contextlib.contextmanager
def compdb_mesh(bin_path, prefix, settled=False):
    """examples/c-compdb (through `buildnet init`) on the three-node mesh of `three_nodes`, its
    sources `settled` first if asked. Yields (work dir, alpha's data dir, project dir)."""
    with three_nodes(bin_path, prefix) as (work, dirs):
        project = c_compdb(work)
        if settled:
            time.sleep(SETTLE_S)
        yield work, dirs["alpha"], project


def total_cores(data):
    """The cores of every node in the pool of the node of `data`: make's -j at the same concurrency."""
    return sum(n["cores"] for n in cli_json(data, "pool", "nodes")["nodes"])
HZ = os.sysconf("SC_CLK_TCK")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def children_cpu_ms():
    """CPU time of the processes this script started and waited for (the CLI, make and its jobs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def daemons_cpu_ms():
    """CPU time of every node daemon and its fork server, and of the packages they reaped, in ms."""
    pids = []
    for what in (" up", " sandbox-exec --serve"):
        pids += subprocess.run(["pgrep", "-f", localmesh.BIN + what], capture_output=True, text=True).stdout.split()
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) * 1000 / HZ  # utime stime cutime cstime
    return total


def trues(work, n=200):
    path = os.path.join(work, "trues")
    os.makedirs(path)
    with open(os.path.join(path, "buildnet.toml"), "w") as f:
        for i in range(n):
            f.write(f'[packages.p{i}]\ncommand = ["true"]\n')
    names = " ".join(f"p{i}" for i in range(n))
    with open(os.path.join(path, "Makefile"), "w") as f:
        f.write(f".PHONY: all {names}\nall: {names}\n")
        for i in range(n):
            f.write(f"p{i}:\n\t@true\n")
    return path


def c_hello(work):
    path = os.path.join(work, "c-hello")
    shutil.copytree(os.path.join(ROOT, "examples", "c-hello"), path)
    with open(os.path.join(path, "Makefile"), "w") as f:
        f.write("all: app\n\t./app --check >/dev/null\n"
                "obj/%.o: src/%.c src/greet.h\n\t@mkdir -p obj\n\tgcc -O2 -c $< -o $@\n"
                "app: obj/add.o obj/greeting.o obj/main.o\n\tgcc $^ -o app\n")
    return path


def c_compdb(work):
    path = os.path.join(work, "c-compdb")
    os.makedirs(path)
    subprocess.run(["sh", os.path.join(ROOT, "examples", "c-compdb", "generate.sh"), path], check=True,
                   capture_output=True)
    subprocess.run([localmesh.BIN, "init", path], check=True, capture_output=True)
    with open(os.path.join(path, "Makefile"), "w") as f:
        f.write("OBJS := $(patsubst src/%.c,obj/%.o,$(wildcard src/*.c))\n"
                "all: cc\n"
                "obj/%.o: src/%.c $(wildcard include/*.h)\n\t@mkdir -p obj\n\tcc -O2 -Iinclude -c $< -o $@\n"
                "cc: $(OBJS)\n\tcc $^ -o cc\n")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", help=BIN_HELP)
    ap.add_argument("--only", help="run only the workloads whose label contains this (e.g. c-compdb)")
    args = ap.parse_args()
    runs = args.runs
    with three_nodes(args.bin, "bn-bench-") as (work, dirs):
        a = dirs["alpha"]
        nodes = cli_json(a, "pool", "nodes")["nodes"]
        all_cores = total_cores(a)
        own_cores = next(n["cores"] for n in nodes if n["name"] == "alpha")
        cases = [  # label, project, packages, CLI flags, make -j, whether make has a no-op
            ("200 x true", trues(work), 200, [], all_cores, False),
            ("  local-only", os.path.join(work, "trues"), 200, ["--local-only"], own_cores, False),
            ("c-hello", c_hello(work), 4, [], all_cores, True),
            ("c-compdb", c_compdb(work), 30, [], all_cores, True),
        ]
        results = {}
        for label, project, packages, extra, jobs, has_nop in cases:
            if args.only and args.only not in label:
                continue
            cold, cached, make, cpu, cached_cpu, make_cpu, make_nop, asked = [], [], [], [], [], [], [], []
            can_ask = "--ask-node" in cli(a, "build", "--help")
            for _ in range(runs):
                before = daemons_cpu_ms()
                cold.append(timed(lambda: cli(a, "build", "--project", project, "--force", *extra)))
                cpu.append((daemons_cpu_ms() - before) / packages)
                before = daemons_cpu_ms() + children_cpu_ms()
                cached.append(timed(lambda: cli(a, "build", "--project", project, *extra)))
                cached_cpu.append(daemons_cpu_ms() + children_cpu_ms() - before)
                if can_ask:
                    asked.append(timed(lambda: cli(a, "build", "--project", project, "--ask-node", *extra)))
                before = children_cpu_ms()
                make.append(timed(lambda: subprocess.run(["make", "-s", "-B", f"-j{jobs}", "-C", project],
                                                         check=True, capture_output=True)))
                make_cpu.append((children_cpu_ms() - before) / packages)
                if has_nop:
                    make_nop.append(timed(lambda: subprocess.run(["make", "-s", f"-j{jobs}", "-C", project],
                                                                 check=True, capture_output=True)))
            nop = statistics.median(make_nop) if make_nop else None
            asked_median = statistics.median(asked) if asked else None
            results[label] = (packages, jobs,
                              *(statistics.median(x) for x in (cold, cached, make, cpu, cached_cpu, make_cpu)), nop,
                              asked_median)

        print(f"BuildNet on 3 local nodes ({all_cores} cores in all) vs make -jN at the same concurrency, "
              f"medians of {runs} runs (wall time of the whole CLI command)")
        print(f"{'work':<13} {'buildnet cold':>14} {'cached':>9} {'make':>13} {'cold/make':>10} "
              f"{'cached/cold':>12} {'overhead/pkg':>13} {'cpu/pkg':>9} {'make cpu/pkg':>13} {'cached cpu':>11} "
              f"{'make nop':>9} {'asked':>9} {'asked/cold':>11}")
        ms = lambda t: f"{t*1000:>7.1f}ms" if t is not None else f"{'—':>9}"
        for label, (n, jobs, cold, cached, make, cpu, cached_cpu, make_cpu, nop, asked) in results.items():
            asked_share = f"{asked/cold*100:>10.1f}%" if asked is not None else f"{'—':>11}"
            print(f"{label:<13} {cold*1000:>12.0f}ms {cached*1000:>7.1f}ms {make*1000:>7.0f}ms -j{jobs:<3} "
                  f"{cold/make:>10.2f} {cached/cold*100:>11.1f}% {(cold-make)/n*1000:>11.2f}ms {cpu:>7.2f}ms "
                  f"{make_cpu:>11.2f}ms {cached_cpu:>9.1f}ms {ms(nop)} {ms(asked)} {asked_share}")


if __name__ == "__main__":
    sys.exit(main())
