#!/usr/bin/env python3
"""Launch benchmark: what starting one contained package costs, without a daemon. Compares, at
each containment level, the one-shot launcher (an exec of `buildnet sandbox-exec -- true` per
package, as the daemon did before the fork server) with the fork server (`buildnet sandbox-exec
--serve`, driven here over its socketpair exactly as the daemon drives it: one SOCK_SEQPACKET
message with the spec, the environment and the package's stdout and stderr), and `true` run
directly as the floor. Prints, per path, the median wall time from the request to the package's
end as reported (the one-shot launcher reaped; the fork server's `Exited` answer) and the mean
CPU time (user + system) of everything started for it, from rusage and /proc in clock ticks,
over interleaved rounds (for the fork server, with what closing the package's mount namespace,
handed over with its `Started` and closed after its exit, costs this process). For the fork server also the median time from
the request to its `Started` answer (the package has exec'd): what making the package's child
costs its start — with namespaces, a child made ahead (issue 14) takes the clone and its mounts
off it, when the machine had a core free while the package before ran.

Usage: python3 bench/launch.py [--bin PATH] [--runs N]   (builds target/release/buildnet first
unless --bin is given). As root, packages at landlock+namespaces run as nobody (65534), as on a
root node.
Standard library only.
"""
import argparse, array, json, os, resource, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ["none", "landlock", "landlock+namespaces"]


def children_cpu_ms():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000


class Server:
    """A fork server on a socketpair, as the daemon starts it."""

    def __init__(self, binary):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([binary, "sandbox-exec", "--serve"], stdin=theirs, env={})
        theirs.close()
        self.next_id = 1

    def run(self, spec, env):
        """Starts one package and waits for its exit; returns (status, cpu_ms as reported, the
        descriptors that came with the answers: the package's mount namespace, handed over with
        `Started`, which the caller closes after the exit, as the daemon's `launcher-ns` thread
        does, outside the timed path, and the seconds from the request to the `Started` answer)."""
        rid, self.next_id = self.next_id, self.next_id + 1
        out_r, out_w = os.pipe()
        request = json.dumps({"id": rid, "spec": spec, "env": env}).encode()
        # The package's stdout and stderr: one pipe for both, as a terminal would be.
        fds = array.array("i", [out_w, out_w]).tobytes()
        sent = time.perf_counter()
        self.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        attached = array.array("i")

        def answer():
            message, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
            for level, kind, data in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    attached.frombytes(data[: len(data) - len(data) % 4])
            return json.loads(message)

        started = answer()
        to_start = time.perf_counter() - sent
        os.close(out_w)
        assert "Started" in started, started
        exited = answer()
        assert "Exited" in exited, exited
        os.read(out_r, 65536)
        os.close(out_r)
        return exited["Exited"]["status"], exited["Exited"]["cpu_ms"], list(attached), to_start

    def cpu_ms(self):
        """The server's own CPU time and its reaped packages', from /proc."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")

    def close(self):
        self.sock.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", help="the buildnet binary (default: build target/release/buildnet)")
    ap.add_argument("--runs", type=int, default=200, help="launches per path and level")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin) if args.bin else os.path.join(ROOT, "target", "release", "buildnet")
    if not args.bin:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    root = os.geteuid() == 0
    sandbox = tempfile.mkdtemp(prefix="bn-launch-")
    os.chmod(sandbox, 0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": sandbox, "TMPDIR": sandbox}
    server = Server(binary)
    print(f"{'path':<34} {'wall median':>12} {'cpu/launch':>11} {'to Started':>11}")
    try:
        for level in LEVELS:
            user = 65534 if root and level == "landlock+namespaces" else None
            spec = {"dir": sandbox, "read_only": [], "level": level, "user": user, "argv": ["true"]}
            oneshot = [binary, "sandbox-exec", "--dir", sandbox, "--level", level]
            if user is not None:
                oneshot += ["--user", str(user)]
            oneshot += ["--", "true"]
            walls = {"one-shot": [], "fork server": [], "true": []}
            to_start = []
            cpu = {k: 0.0 for k in walls}
            # The server's CPU is taken over the whole level, not per launch: a launcher that
            # answered before it exited (the binaries before the one-clone launch did) is reaped
            # after its answer, outside any one launch's window.
            server_before = server.cpu_ms()
            for _ in range(args.runs):
                for path in walls:
                    before = 0 if path == "fork server" else children_cpu_ms()
                    t = time.perf_counter()
                    attached = []
                    if path == "fork server":
                        status, _, attached, started = server.run(spec, list(env.items()))
                        to_start.append(started)
                    else:
                        argv = oneshot if path == "one-shot" else ["true"]
                        status = subprocess.run(argv, env=env, cwd=sandbox).returncode
                    walls[path].append(time.perf_counter() - t)
                    assert status == 0, (path, level, status)
                    after = 0 if path == "fork server" else children_cpu_ms()
                    cpu[path] += after - before
                    # Letting go of the namespace tears it down: the daemon pays that, so it counts.
                    mine = time.process_time()
                    for fd in attached:
                        os.close(fd)
                    cpu[path] += (time.process_time() - mine) * 1000
            time.sleep(0.5)
            cpu["fork server"] += server.cpu_ms() - server_before
            for path, w in walls.items():
                if path == "true" and level != LEVELS[0]:
                    continue
                label = "true (no launcher)" if path == "true" else f"{path}, {level}"
                start = f"{statistics.median(to_start)*1000:>9.2f}ms" if path == "fork server" else ""
                print(f"{label:<34} {statistics.median(w)*1000:>10.2f}ms {cpu[path]/args.runs:>9.2f}ms {start:>11}")
    finally:
        server.close()
        os.rmdir(sandbox)


if __name__ == "__main__":
    sys.exit(main())
