"""A Ray cluster of `ray start` nodes on this machine, as a cluster of several machines is
started: a head and worker nodes, each its own raylet and object store, token authentication
on (Ray 2.60's default for `ray start --head`).

Each cluster has a token, a temp directory and a mark in its environment of its own, so that
`stop` ends exactly the processes its nodes started (GCS, raylets, agents, workers, found by
the mark), never another cluster on the machine, as `ray stop` would. Ray binds the nodes to
127.0.0.1 as asked, though on Linux it advertises the machine's interface address: the
traffic between the nodes never leaves the machine either way.

    with RayNodes(nodes=2, cpus=1) as cluster:     # benchmarks/ray_bytes.py, tests/test_ray.py
        subprocess.run([..., "--address", cluster.address], env=cluster.driver_env())
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

ROOT = Path(__file__).resolve().parents[1]
MARK = "NEUROEVO_RAY_NODES"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNodes:
    def __init__(self, nodes: int = 2, cpus: float = 1, ray: str | None = None, timeout_s: float = 180):
        self.ray = ray or str(Path(sys.executable).with_name("ray"))
        self.mark = secrets.token_hex(8)
        # Short: Ray's Unix sockets live under it, and their paths may not exceed 107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="rn", dir="/tmp")
        self.token = secrets.token_hex(32)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        try:
            self._start(["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                         f"--dashboard-port={free_port()}", "--include-dashboard=false"], cpus, timeout_s)
            for _ in range(nodes - 1):
                self._start([f"--address={self.address}"], cpus, timeout_s)
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """The environment of every process of this cluster: its token and temp directory, this
        checkout first on the path (workers import what the driver imports), and the mark."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}  # "0" refuses a second node
        path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_TMPDIR": self.tmp,
                "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)), MARK: self.mark}

    def driver_env(self) -> dict[str, str]:
        """For a driver in another process: the cluster's environment without its mark, so that
        `stop` leaves the driver alone."""
        return {k: v for k, v in self.env().items() if k != MARK}

    def _start(self, args: list[str], cpus: float, timeout_s: float) -> None:
        p = subprocess.run([self.ray, "start", *args, "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                            "--disable-usage-stats"], capture_output=True, text=True, env=self.env(),
                           timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-2000:]}")

    def processes(self) -> list[int]:
        return processes(self.mark, self.tmp)

    def stop(self, grace_s: float = 5.0) -> None:
        """End this cluster's processes (`stop`) and remove its temp directory."""
        stop(self.mark, self.tmp, grace_s)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "RayNodes":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# What only Ray's own processes have on their command line: its binaries, its worker and agent
# titles, and the scripts of its package.
RAY_PROCESS = (b"gcs_server", b"raylet", b"ray::", b"default_worker", b"site-packages/ray/")


def processes(mark: str, tmp: str, ray_only: bool = False) -> list[int]:
    """The processes started under `mark` and `tmp` (a cluster's, or a test session's): those
    whose environment holds the mark (GCS, raylets, monitors), or that hold a file of the temp
    directory open (Ray's agents and workers, which overwrite their environment with their
    process title), and their children. Never this process or its parents. `ray_only`: of
    those, only Ray's own (RAY_PROCESS), where the mark is also in other processes' environment
    (a test session's children inherit it)."""
    needle, tmp = f"{MARK}={mark}".encode(), tmp.rstrip(os.sep) + os.sep
    spared = set(_ancestors(os.getpid()))
    parent: dict[int, int] = {}
    mine: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        pid = int(entry.name)
        try:
            parent[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if needle in (entry / "environ").read_bytes().split(b"\0") or any(
                    os.readlink(fd).startswith(tmp) for fd in (entry / "fd").iterdir()):
                mine.add(pid)
        except OSError:  # gone, or not ours to read
            continue
    grown = True
    while grown:
        children = {pid for pid, ppid in parent.items() if ppid in mine} - mine
        mine |= children
        grown = bool(children)
    if ray_only:
        mine = {pid for pid in mine if _is_ray(pid)}
    return sorted(mine)


def _is_ray(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(part in cmdline for part in RAY_PROCESS)


def stop(mark: str, tmp: str, grace_s: float = 5.0, ray_only: bool = False) -> None:
    """End the processes of `processes(mark, tmp)`: SIGTERM, then SIGKILL what is left after
    `grace_s`. Unlike `ray stop`, which ends every Ray of the user on the machine."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = processes(mark, tmp, ray_only)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        if not pids:
            break


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        out.append(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its parent reaps it
