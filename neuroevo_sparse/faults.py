"""Fault injection for crash tests: `NEUROEVO_FAULT=<point>@<generation>` SIGKILLs the process
when it reaches that point of that generation.

A kill at a random time rarely lands inside a checkpoint write; these named points let tests
kill the process exactly there and prove that a resume still gives the uninterrupted result.
Points: "mid-generation" (after the first result of a generation arrived),
"history-written" (part written, checkpoint not yet), "checkpoint-files" (checkpoint files
written into the temporary directory, no manifest yet), "checkpoint-renamed" (renamed into
place, LATEST not yet updated). `NEUROEVO_FAULT=hang:job@<generation>` makes a Ray task of
that generation hang (sleep) instead, as a deadlocked task would.
`NEUROEVO_FAULT=wait:<point>@<generation>` makes the process wait at that point until the file
named by `NEUROEVO_FAULT_RELEASE` exists (and says it waits by creating that name + ".waiting"):
a test can then act while the process is known to be
there (another writer tried while this one holds the run directory). Without the variable
this is a no-op.
"""

from __future__ import annotations

import os
import signal
import time


def point(name: str, generation: int) -> None:
    spec = os.environ.get("NEUROEVO_FAULT")
    if spec and spec == f"{name}@{generation}":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec and spec == f"wait:{name}@{generation}":
        release = os.environ.get("NEUROEVO_FAULT_RELEASE", "")
        open(release + ".waiting", "w").close()
        deadline = time.monotonic() + 600
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)


def hang(name: str, generation: int) -> None:
    spec = os.environ.get("NEUROEVO_FAULT")
    if spec and spec == f"hang:{name}@{generation}":
        time.sleep(10 ** 6)
