"""A mesh of release nodes on 127.0.0.1 for the bench/ scripts: build, start, join, wait until
every node is online, run the CLI against a node's data dir, stop everything and clean up.
Standard library only."""
import contextlib, json, os, shutil, signal, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "buildnet")


def cli(data, *args):
    """Runs `buildnet` against the node of `data`; its stdout, or exit with its error line."""
    out = subprocess.run([BIN, "--data-dir", data, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"buildnet {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def cli_json(data, *args):
    return json.loads(cli(data, *args, "--format", "json"))


def _start(data, name, config, join=None, token=None):
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "node-config.json"), "w") as f:
        f.write(config)
    args = [BIN, "up", "--listen", "127.0.0.1:0", "--data-dir", data, "--name", name]
    if join:
        args += ["--join", join, "--token", token]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(600):
        if os.path.exists(os.path.join(data, "address")):
            return proc, open(os.path.join(data, "address")).read().strip()
        time.sleep(0.05)
    raise SystemExit(f"node {name} did not start")


@contextlib.contextmanager
def mesh(names, config, prefix, ready=lambda node: True, timeout=120, build=True):
    """Builds the release binary, starts `names[0]` and joins the others with builder tokens,
    each with `config` as its node-config.json, and waits until every node is online and
    `ready(node)` holds for each (a node as `pool nodes --format json` lists it). Yields
    (work dir, {name: data dir}); stops the nodes and removes the work dir afterwards.
    `build=False` uses BIN as it is (a caller comparing an older binary sets BIN)."""
    if build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix=prefix)
    dirs = {name: os.path.join(work, name) for name in names}
    procs = []
    try:
        first = dirs[names[0]]
        p, url = _start(first, names[0], config)
        procs.append(p)
        for name in names[1:]:
            token = cli_json(first, "token", "create", "--role", "builder")["token"]
            p, _ = _start(dirs[name], name, config, url, token)
            procs.append(p)
        deadline = time.time() + timeout
        while True:
            nodes = cli_json(first, "pool", "nodes")["nodes"]
            if len(nodes) == len(names) and all(n["status"] == "online" and ready(n) for n in nodes):
                break
            if time.time() > deadline:
                raise SystemExit("the mesh did not become ready")
            time.sleep(0.1)
        yield work, dirs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
