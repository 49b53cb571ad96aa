"""In-process evaluation: the groups of a generation on a few threads of the driver.

Without Ray's processes (about 6 CPU-seconds of start-up on a 2-core machine, and a torch
import in every worker) a run on one machine starts in a few seconds. The groups train on
`slots` threads at once, one per `cpus_per_job` cores: torch and the C kernels release the
GIL in their loops, so the threads share the cores much as Ray's worker processes do.

Results are the same as one group after another: every group's arithmetic is its own
(its jobs, seeds and thread count), and the results are returned in job order. Two things
keep a network on one thread: a user's `model.factory` (its layers may draw from torch's one
global generator, as dropout does, and threads would interleave the draws) and a GPU.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import torch

from ..problem.data import Splits
from ..train.jobs import TrainJob, TrainResult, TrainSpec
from ..train.core import DeviceData, pick_device
from ..train.worker import groups, train_group
from . import OnResult

log = logging.getLogger("neuroevo_sparse")


def local_slots(num_cpus: int | None, cpus_per_job: float) -> int:
    """How many groups train at once: the cores (resources.num_cpus, else every core this
    process may use) over the cores a job takes, as Ray would count them."""
    if num_cpus is None:
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, int(num_cpus // cpus_per_job))


class LocalEvaluator:
    def __init__(self, spec: TrainSpec, splits: Splits, gpus: float = 0.0, slots: int = 1):
        self.spec = spec
        self.data = DeviceData(splits, pick_device(gpus))
        why = ("the network comes from model.factory, whose layers may draw from torch's global generator"
               if spec.builder.factory is not None else
               "one GPU" if self.data.device != "cpu" else None)
        self.slots = 1 if why else slots
        log.info("local: %d group(s) at a time in this process%s", self.slots,
                 f" ({why}; resources.backend = \"ray\" trains them in parallel)" if why and slots > 1 else "")
        self._pool = (ThreadPoolExecutor(self.slots, thread_name_prefix="neuroevo-train",
                                         initializer=torch.set_num_threads, initargs=(spec.torch_threads,))
                      if self.slots > 1 else None)
        self._warm = False  # whether a group has trained on this evaluator (see evaluate)

    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        batches = groups(jobs, self.spec, self.slots)
        if self._pool is None:
            done = []
            for batch in batches:
                done.append(train_group(batch, self.spec, self.data))
                for result in done[-1] if on_result else ():
                    on_result(result)
            return [r for batch in done for r in batch]
        # torch's thread count is in part process-wide: `run_jobs` setting it on one thread and
        # putting back what it found would race with the others, change the count under a group
        # that is computing and leave the process with another count afterwards. So every
        # thread of the pool finds, sets and puts back the spec's count only, and this thread
        # puts back its own when the generation is done.
        threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.torch_threads)
        out: list[list[TrainResult] | None] = [None] * len(batches)
        indexed = list(enumerate(batches))
        # The evaluator's first group (in a run, the process's first) trains alone. With two
        # groups as a process's first, one of them trained with a different rounding in about 1
        # of 150 fresh runs (a resumed run then differed from the one that never stopped,
        # tests/test_resume.py); never in later groups, nor with the first alone. State that
        # torch or MKL sets up on a kernel's first use, by two threads at once, is the likely
        # cause; it was not pinned down further.
        waves = [indexed[:1], indexed[1:]] if not self._warm else [indexed]
        try:
            for wave in waves:
                self._train_concurrently(wave, out, on_result)
            self._warm = self._warm or bool(batches)
        finally:
            torch.set_num_threads(threads)
        return [r for batch in out for r in batch]  # type: ignore[union-attr]

    def _train_concurrently(self, indexed: list[tuple[int, list[TrainJob]]], out: list,
                            on_result: OnResult | None) -> None:
        """Train the groups of `indexed` (index, jobs) at once on the pool, each result into
        `out` at its index."""
        futures = {self._pool.submit(train_group, batch, self.spec, self.data): i for i, batch in indexed}
        pending = set(futures)
        try:
            while pending:
                # Callbacks run here, in the driver's thread, as groups finish (progress bars move).
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    out[futures[future]] = future.result()
                    for result in out[futures[future]] if on_result else ():
                        on_result(result)
        except BaseException:  # Ctrl-C, a failing callback: no group that has not started starts
            for future in pending:
                future.cancel()
            wait(pending)
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
