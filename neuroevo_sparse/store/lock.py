"""One writer per run directory: an exclusive lock held for the writer's whole life.

    RUN_DIR/.writer.lock   the lock itself (an OS file lock, `filelock`: flock on Unix); never deleted
    RUN_DIR/writer.json    who holds it: host, pid, since when (UTC), which command; removed on release

Two processes writing one run directory lose history: each removes the other's temporary
files, and a resume drops the history parts written after its checkpoint while the other
writer still needs them. So `run`, `resume` and `evolve` hold this lock from before their
first write to after their last; a second writer is refused with one line naming the holder,
and changes nothing. The OS releases the lock of a process that dies (SIGKILL, OOM, power
loss of the holder), so a dead holder's lock is simply taken, and its leftover writer.json
says whose it was. A holder that is ending (a SIGKILL pending, exiting, a zombie: a supervised
run whose `neuroevo` parent was just killed is sent SIGKILL by the kernel) frees the lock in a
moment, so a writer that finds one waits for it rather than refusing. Readers (`inspect`,
`plot`, `export`, `load_run`) never take it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger("neuroevo_sparse")

LOCK = ".writer.lock"
HOLDER = "writer.json"
ENDING_WAIT_S = 15.0  # how long a writer waits for a holder that is ending to be gone


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's writer lock."""


class WriterLock:
    """The writer lock of the run directory `path` (which must exist), for `command`."""

    def __init__(self, path: str | Path, command: str):
        self.path = Path(path)
        self.command = command
        self._lock = FileLock(self.path / LOCK, timeout=0, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> "WriterLock":
        """Take the lock, or raise RunDirLocked naming the holder. Logs a takeover from a
        holder that ended without releasing it."""
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            holder = self._holder(wait_s=2.0)
            if not (ending(holder) and self._acquire_within(ENDING_WAIT_S)):
                raise RunDirLocked(f"{self.path} is being written by another process ({describe(holder)}): "
                                   f"a run directory has one writer at a time; wait for it to end or stop it, "
                                   f"then resume") from None
        previous = self._holder(wait_s=0.0)
        if previous is not None:
            log.warning("took over the writer lock of %s from %s, which ended without releasing it",
                        self.path, describe(previous))
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": self.command}
        tmp = self.path / f".{HOLDER}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path / HOLDER)
        return self

    def _acquire_within(self, seconds: float) -> bool:
        try:
            self._lock.acquire(timeout=seconds)
            return True
        except Timeout:
            return False

    def release(self) -> None:
        """Let go of the lock (a no-op if not held); the holder record goes first, so a record
        found beside a free lock always means its writer died."""
        if not self._lock.is_locked:
            return
        try:
            (self.path / HOLDER).unlink(missing_ok=True)
        finally:
            self._lock.release(force=True)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _holder(self, wait_s: float) -> dict[str, Any] | None:
        """The holder's record; a writer that just took the lock writes it a moment later."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                record = json.loads((self.path / HOLDER).read_text())
                if isinstance(record, dict):
                    return record
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def ending(record: dict[str, Any] | None) -> bool:
    """Whether the holder `record` names is a process of this host that is ending: SIGKILL
    pending, exiting, or a zombie. The OS frees its lock in a moment (Linux's /proc; False where
    that cannot be told)."""
    if not isinstance(record, dict) or record.get("host") != socket.gethostname():
        return False
    try:
        pid = int(record["pid"])
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        fields = stat[stat.rindex(")") + 2:].split()
        state, flags = fields[0], int(fields[6])
        pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    PF_EXITING = 0x4
    return state in ("Z", "X") or bool(flags & PF_EXITING) or bool(pending >> (signal.SIGKILL - 1) & 1)


def describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return f"no {HOLDER} record yet"
    return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, since {record.get('since', '?')}, "
            f"`neuroevo {record.get('command', '?')}`")
