#!/usr/bin/env python3
"""Build benchmark: BuildNet on a mesh of three local nodes against `make -j2` doing the same
work on the same machine. Prints medians of repeated runs:

  (a) 200 packages whose command is `true`   — per-package overhead
  (b) examples/c-hello                        — a real compile + link + check

Usage: python3 bench/builds.py [--runs N]   (builds target/release/buildnet first)
Standard library only; everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, os, shutil, statistics, subprocess, sys, time

from localmesh import ROOT, cli, mesh

# No start-up benchmark: it would load the cores the builds are timed on.
NO_BENCH_ON_START = '{"benchmark": {"on_start": false}}'


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    ready = lambda n: n["cores"] > 0
    with mesh(["alpha", "beta", "gamma"], NO_BENCH_ON_START, "bn-bench-", ready) as (work, dirs):
        a = dirs["alpha"]
        # (a) 200 packages of `true`.
        trues = os.path.join(work, "trues")
        os.makedirs(trues)
        with open(os.path.join(trues, "buildnet.toml"), "w") as f:
            for i in range(200):
                f.write(f'[packages.p{i}]\ncommand = ["true"]\n')
        with open(os.path.join(trues, "Makefile"), "w") as f:
            f.write(".PHONY: all " + " ".join(f"p{i}" for i in range(200)) + "\nall: " + " ".join(f"p{i}" for i in range(200)) + "\n")
            for i in range(200):
                f.write(f"p{i}:\n\t@true\n")

        # (b) the C example, and the same work as a Makefile.
        chello = os.path.join(work, "c-hello")
        shutil.copytree(os.path.join(ROOT, "examples", "c-hello"), chello)
        with open(os.path.join(chello, "Makefile"), "w") as f:
            f.write("all: app\n\t./app --check >/dev/null\n"
                    "obj/%.o: src/%.c src/greet.h\n\t@mkdir -p obj\n\tgcc -O2 -c $< -o $@\n"
                    "app: obj/add.o obj/greeting.o obj/main.o\n\tgcc $^ -o app\n")

        results = {}
        for label, project, packages in [("200 x true", trues, 200), ("c-hello", chello, 4)]:
            cold, cached, make = [], [], []
            for _ in range(runs):
                cold.append(timed(lambda: cli(a, "build", "--project", project, "--force")))
                cached.append(timed(lambda: cli(a, "build", "--project", project)))
                make.append(timed(lambda: subprocess.run(["make", "-s", "-B", "-j2", "-C", project], check=True, capture_output=True)))
            results[label] = (packages, statistics.median(cold), statistics.median(cached), statistics.median(make))

        print(f"BuildNet on 3 local nodes vs make -j2, medians of {runs} runs (wall time of the whole CLI command)")
        print(f"{'work':<12} {'buildnet cold':>14} {'cached':>10} {'make -j2':>10} {'cold/make':>10} {'cached/cold':>12} {'overhead/pkg':>13}")
        for label, (n, cold, cached, make) in results.items():
            print(f"{label:<12} {cold*1000:>12.0f}ms {cached*1000:>8.0f}ms {make*1000:>8.0f}ms {cold/make:>10.1f} {cached/cold:>12.2f} {(cold-make)/n*1000:>11.2f}ms")


if __name__ == "__main__":
    sys.exit(main())
