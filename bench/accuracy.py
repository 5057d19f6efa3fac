#!/usr/bin/env python3
"""How good are BuildNet's build-time estimates on builds they have not seen?

Two release nodes on 127.0.0.1, each offering one core (so the pool's two cores are this
machine's two cores, not an oversubscribed six), both benchmarked at start-up as a user's nodes
would be. For each project:

  1. three recorded builds under the configuration "both" (a core on each node), the first one
     predicted with no history (input sizes only), then
  2. for each configuration it has not been built with — "alpha" (one core here), "beta" (one
     core on the peer), "one-core" (one core anywhere) and --local-only — the estimate is taken
     first and then the build is run, --runs times each.

Prints every prediction beside the real duration (the build's own recorded duration), the mean
absolute percentage error (MAPE) and how often the real time fell inside the stated confidence
range, for "no history" and "after three builds" separately.

Projects: examples/c-hello (four small compiles and a link) and a generated C project (six
sources of a few thousand functions each, compiled at -O2, then linked) — real compiler work.

Usage: python3 bench/accuracy.py [--runs N] [--functions N]
Standard library only; needs gcc. Everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse, os, shutil, statistics, sys

from localmesh import ROOT, cli_json, mesh

ONE_CORE = '{"resource_limits": {"cpu": {"max_cores": 1}}}'


def benchmarked(node):
    """Both nodes benchmark themselves after start-up, one after the other."""
    return bool(node["benchmarks"].get("cpu")) and not node["benchmarks"]["running"]


def generated_project(path, sources, functions):
    """Six C files of `functions` small functions each, compiled separately, then linked."""
    os.makedirs(os.path.join(path, "src"), exist_ok=True)
    toml = []
    for s in range(sources):
        with open(os.path.join(path, "src", f"part{s}.c"), "w") as f:
            for i in range(functions):
                f.write(f"int f{s}_{i}(int x) {{ int y = x * {i + 3}; for (int k = 0; k < (x & 7); k++) "
                        f"y = (y << 1) ^ (k * {i + 1}); return y % {i + 97}; }}\n")
            f.write(f"int part{s}(void) {{ return f{s}_0(1) + f{s}_{functions - 1}(2); }}\n")
        toml.append(f'[packages.part{s}]\ncommand = ["gcc", "-O2", "-c", "src/part{s}.c", "-o", "obj/part{s}.o"]\n'
                    f'inputs = ["src/part{s}.c"]\noutputs = ["obj/part{s}.o"]\ntools = ["gcc"]\n')
    with open(os.path.join(path, "src", "main.c"), "w") as f:
        f.write("".join(f"int part{s}(void);\n" for s in range(sources)))
        f.write("int main(void) { return (" + " + ".join(f"part{s}()" for s in range(sources)) + ") == 0; }\n")
    objs = " ".join(f"obj/part{s}.o" for s in range(sources))
    toml.append(f'[packages.app]\nshell = "gcc -O2 src/main.c {objs} -o app"\ninputs = ["src/main.c"]\n'
                f'deps = [{", ".join(repr(f"part{s}").replace(chr(39), chr(34)) for s in range(sources))}]\n'
                f'outputs = ["app"]\ntools = ["gcc"]\n')
    with open(os.path.join(path, "buildnet.toml"), "w") as f:
        f.write("\n".join(toml))


def predict_and_build(a, project, flags):
    e = cli_json(a, "build", "--project", project, "--estimate", "--force", *flags)
    b = cli_json(a, "build", "--project", project, "--force", *flags)
    if b["status"] != "succeeded":
        raise SystemExit(f"build failed: {b.get('error')}")
    return e, b["duration_ms"]


def summarize(label, rows):
    if not rows:
        return
    errors = [abs(p - r) / r for _, p, lo, hi, r in rows]
    inside = sum(1 for _, p, lo, hi, r in rows if lo <= r <= hi)
    print(f"{label}: MAPE {statistics.mean(errors):.1%} over {len(rows)} builds, median error "
          f"{statistics.median(errors):.1%}, real time inside the stated range {inside}/{len(rows)} "
          f"({inside / len(rows):.0%})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="builds per unseen configuration")
    ap.add_argument("--functions", type=int, default=1500, help="functions per generated source")
    opts = ap.parse_args()
    cold, learned = [], []
    with mesh(["alpha", "beta"], ONE_CORE, "bn-accuracy-", benchmarked, timeout=300) as (work, dirs):
        a = dirs["alpha"]
        nodes = cli_json(a, "pool", "nodes")["nodes"]
        ids = {n["name"]: n["id"] for n in nodes}
        for name, nodes_field in [("both", [f"{ids['alpha']}:1", f"{ids['beta']}:1"]),
                                  ("alpha", [f"{ids['alpha']}:1"]),
                                  ("beta", [f"{ids['beta']}:1"])]:
            cli_json(a, "config", "create", "--name", name, *[x for n in nodes_field for x in ("--node", n)])
        cli_json(a, "config", "create", "--name", "one-core", "--cores", "1")

        chello = os.path.join(work, "c-hello")
        shutil.copytree(os.path.join(ROOT, "examples", "c-hello"), chello)
        gen = os.path.join(work, "generated")
        generated_project(gen, 6, opts.functions)

        print(f"{'project':<10} {'configuration':<14} {'history':<8} {'estimate':>9} {'range':>15} {'real':>8} {'error':>7}")
        for name, project in [("c-hello", chello), ("generated", gen)]:
            unseen = [("alpha", ["--config", "alpha"]), ("beta", ["--config", "beta"]),
                      ("one-core", ["--config", "one-core"]), ("local-only", ["--local-only"])]
            # No history yet: the estimate from input sizes, then the first of three recorded
            # builds under "both".
            for i in range(3):
                e, real = predict_and_build(a, project, ["--config", "both"])
                if i == 0:
                    row = ("both", e["total_duration_ms"], e["low_ms"], e["high_ms"], real)
                    cold.append(row)
                    print(f"{name:<10} {'both':<14} {'none':<8} {row[1]:>7}ms {row[2]:>6}–{row[3]:<6}ms {real:>6}ms "
                          f"{abs(row[1] - real) / real:>6.0%}")
            before = len(learned)
            for label, flags in unseen:
                for _ in range(opts.runs):
                    e, real = predict_and_build(a, project, flags)
                    row = (label, e["total_duration_ms"], e["low_ms"], e["high_ms"], real)
                    learned.append(row)
                    print(f"{name:<10} {label:<14} {'learned':<8} {row[1]:>7}ms {row[2]:>6}–{row[3]:<6}ms {real:>6}ms "
                          f"{abs(row[1] - real) / real:>6.0%}")
            summarize(f"  {name}, after history", learned[before:])
    print()
    summarize("No history (input sizes only)", cold)
    summarize("After history (unseen configurations)", learned)


if __name__ == "__main__":
    sys.exit(main())
