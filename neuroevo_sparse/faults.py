"""Fault injection for crash tests: `NEUROEVO_FAULT=<point>@<generation>` SIGKILLs the process
when it reaches that point of that generation.

A kill at a random time rarely lands inside a checkpoint write; these named points let tests
kill the process exactly there and prove that a resume still gives the uninterrupted result.
Points: "mid-generation" (after the first result of a generation arrived),
"history-written" (part written, checkpoint not yet), "checkpoint-files" (checkpoint files
written into the temporary directory, no manifest yet), "checkpoint-renamed" (renamed into
place, LATEST not yet updated). `NEUROEVO_FAULT=hang:job@<generation>` makes a Ray task of
that generation hang (sleep) instead, as a deadlocked task would. Without the variable this
is a no-op.
"""

from __future__ import annotations

import os
import signal
import time


def point(name: str, generation: int) -> None:
    spec = os.environ.get("NEUROEVO_FAULT")
    if spec and spec == f"{name}@{generation}":
        os.kill(os.getpid(), signal.SIGKILL)


def hang(name: str, generation: int) -> None:
    spec = os.environ.get("NEUROEVO_FAULT")
    if spec and spec == f"hang:{name}@{generation}":
        time.sleep(10 ** 6)
