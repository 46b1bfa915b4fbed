"""A Ray cluster of its own on this machine: a head node and worker nodes started with
``ray start ... --block`` under subprocess, on free ports, stopped by their own process
ids (never ``ray stop``: other Ray instances may run on the machine). Ray gives every
node the machine's address even when asked for 127.0.0.1 (``resolve_ip_for_localhost``);
the nodes are still told apart by their ports and node ids.

    with RayCluster(nodes=2, cpus_per_node=1) as cluster:
        subprocess.run([..., "--address", cluster.address])
        cluster.node_ids()   # the alive nodes' ids (a Ray client of the test, short-lived)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."  # what `ray start` prints once its node is up


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (held open together while choosing)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (None: no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[tuple[int, str], str]:
    """``(pid, start time) -> command line`` of every live process below ``root`` or in
    the session ``root`` leads (an orphan keeps its session); the start time tells a
    process from a later one that reuses its pid."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    commands: dict[int, str] = {}
    sessions: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":  # a zombie is gone, only not yet reaped
            continue
        try:
            commands[pid] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        parents[pid], starts[pid] = int(fields[1]), fields[19]
        if int(fields[3]) == root and pid != root:
            sessions.add(pid)
    found = {(pid, starts[pid]): commands.get(pid, "") for pid in sessions}
    for pid in parents:
        p = pid
        while p in parents and p > 1:
            p = parents[p]
            if p == root:
                found[(pid, starts[pid])] = commands.get(pid, "")
                break
    return found


def alive(pid: int, start: str | None = None) -> bool:
    """The process runs (not a zombie) and, when ``start`` is given, is that one."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


class RayCluster:
    """See the module docstring. ``nodes`` counts the head; every node gets
    ``cpus_per_node`` CPUs, its own ports and a small object store."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, start_timeout_s: float = 180):
        self.nodes = nodes
        self.cpus = cpus_per_node
        self.timeout = start_timeout_s
        # short: Ray's socket paths under the temp dir must stay below 108 characters
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        # every process seen below the nodes, (pid, start time) -> command (checked at stop)
        self.known: dict[tuple[int, str], str] = {}
        # Token authentication of its own: a token in the environment of the nodes and of
        # every driver (``client_env``), whatever ~/.ray/auth_token holds. (Ray turns
        # token auth on when that file exists, but a driver given an explicit address
        # never reads it: it needs RAY_AUTH_MODE=token.)
        self.client_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env = {**os.environ, **self.client_env}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(name, None)

    # ---- start / stop ------------------------------------------------------------------

    def _node_args(self) -> list[str]:
        node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = free_ports(6)
        base = 20000 + (os.getpid() * 7 + len(self.procs) * 997) % 30000
        worker_lo = next(
            lo for lo in range(base, 60000, 211) if all(_free(p) for p in (lo, lo + 199))
        )
        return [
            "--num-cpus", str(self.cpus),
            "--num-gpus", "0",
            "--node-ip-address", "127.0.0.1",
            "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env),
            "--metrics-export-port", str(metrics),
            "--min-worker-port", str(worker_lo),
            "--max-worker-port", str(worker_lo + 199),
            "--object-store-memory", str(200 * 1024 * 1024),
            "--disable-usage-stats",
            "--block",
        ]  # fmt: skip

    def _spawn(self, args: list[str], name: str) -> None:
        log = self.temp_dir / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RAY, "start", *args], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)

    def start(self, attempts: int = 3) -> Self:
        """Starts the head, then the other nodes. A node has 30 s (fixed in Ray) to
        register; on a loaded machine it may miss that: the whole cluster is then stopped
        and started again, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_nodes()
                return self
            except BaseException as exc:
                self.stop()
                if attempt == attempts or not isinstance(exc, RuntimeError | TimeoutError):
                    raise
                self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
                self.procs, self.logs = [], []
                self.port = free_ports(1)[0]
                self.address = f"127.0.0.1:{self.port}"
        return self

    def _start_nodes(self) -> None:
        client_port = free_ports(1)[0]
        self._spawn(
            [
                "--head", "--port", str(self.port),
                "--ray-client-server-port", str(client_port),
                "--include-dashboard", "false",
                "--temp-dir", str(self.temp_dir),
                *self._node_args(),
            ],
            "head",
        )  # fmt: skip
        self._wait_nodes(1)
        for i in range(1, self.nodes):
            self._spawn(["--address", self.address, *self._node_args()], f"node{i}")
        self._wait_nodes(self.nodes)

    def _wait_nodes(self, n: int) -> None:
        """Until ``n`` nodes said "Ray runtime started." (their logs; asking the cluster
        would start a Ray client a second, which a loaded machine cannot spare), then
        checks the cluster has them all."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited early:\n{self.log_tail()}")
            started = sum(
                STARTED in log.read_text(errors="replace") for log in self.logs if log.is_file()
            )
            if started >= n:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(
                f"{n} Ray node(s) not up in {self.timeout:.0f} s:\n{self.log_tail()}"
            )
        while True:  # registered with the GCS a moment after starting
            try:
                if len(self.node_ids()) >= n:
                    return
                problem = "too few nodes"
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{n} Ray node(s) not registered ({problem}):\n{self.log_tail()}"
                )
            time.sleep(2.0)

    def node_ids(self) -> list[str]:
        """Ids of the alive nodes, asked by a short-lived driver (the test process never
        joins the cluster, so it stays free to use its own Ray)."""
        self.remember()
        code = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False, "
            "logging_level='ERROR'); "
            "print('\\n'.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                env=self.env, check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"cannot list the nodes: {exc.stderr[-3000:]}") from None
        return [line for line in out.stdout.split() if len(line) > 20]

    def remember(self) -> None:
        for proc in self.procs:
            self.known.update(descendants(proc.pid))

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.is_file() else ""
            parts.append(f"--- {log.name}\n{text[-chars:]}")
        return "\n".join(parts)

    def stop(self, timeout_s: float = 60) -> list[str]:
        """Stops the nodes (worker nodes first, then the head), each by its own pid, then
        kills whatever of theirs is left. Returns the command lines of processes that had
        to be killed after the graceful stop (empty: a clean stop)."""
        self.remember()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(*key) for key in self.known):
            time.sleep(0.5)
        leftover = []
        for (pid, start), cmd in self.known.items():
            if alive(pid, start):  # one of ours still: the same pid AND start time
                leftover.append(cmd)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftover

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
