"""What a worker runs: a group of jobs, trained together where the config allows it.

The evaluators split a generation's jobs into groups with `groups` and hand each group to
`train_group`. On a CPU a member's arithmetic does not depend on the group it is in (its own
seed, its own rows of every batched op, truly sparse layers chosen for the run, and a group of
one on the same path; tests/test_worker.py checks it bit for bit), so
groups may follow the cores: with `training.vectorise_group = "auto"` every slot of the
evaluator gets one group, and the results are the same on a laptop and on a cluster.
"""

from __future__ import annotations

from .jobs import TrainJob, TrainResult, TrainSpec
from .core import DeviceData, train
from .vectorised import score_many, train_many

# The most jobs in one "auto" group: a Ray task that is retried redoes its whole group, and a
# group's memory grows with it.
MAX_GROUP = 32


def groups(jobs: list[TrainJob], spec: TrainSpec, slots: int = 1) -> list[list[TrainJob]]:
    """Consecutive groups of jobs: single jobs if not vectorised (test-only jobs, which are
    short, are grouped whatever the path); else `spec.group` at a time, or, for "auto", as
    many groups as `slots` (that many groups train at once), as even as can be and of at
    least 2 jobs each (a group of one costs a batched pass for one individual)."""
    if not (spec.vectorise or (jobs and jobs[0].test_only)):
        return [[j] for j in jobs]
    if spec.group is not None:
        return [jobs[i: i + spec.group] for i in range(0, len(jobs), spec.group)]
    n = len(jobs)
    if n == 0:
        return []
    count = max(1, min(slots, n // 2), -(-n // MAX_GROUP))
    size, extra = divmod(n, count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [jobs[a:b] for a, b in zip(bounds, bounds[1:])]


def train_group(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData) -> list[TrainResult]:
    """One result per job, in order: the group in one vectorised pass if the spec says so
    (MLPs there also run their sparse layers as one block-diagonal sparse matmul), else one
    job after another."""
    # A group of one takes the group's path too: the per-individual path rounds differently,
    # and which jobs end up alone in a group depends on the number of workers.
    if not jobs:
        return []
    if jobs[0].test_only:
        return score_many(jobs, spec, data)
    if spec.vectorise:
        return train_many(jobs, spec, data)
    return [train(j, spec, data) for j in jobs]
