"""What a worker runs: a group of jobs, trained together where the config allows it.

The evaluators split a generation's jobs into groups with `groups` (fixed by the config, not
by the number of workers, so the arithmetic, and with it the results, is the same on a
laptop and on a cluster) and hand each group to `train_group`.
"""

from __future__ import annotations

from .jobs import TrainJob, TrainResult, TrainSpec
from .training import DeviceData, score_test, train
from .vectorised import score_many, train_many


def groups(jobs: list[TrainJob], spec: TrainSpec) -> list[list[TrainJob]]:
    """Consecutive groups of `training.vectorise_group` jobs (single jobs if not vectorised;
    test-only jobs, which are short, in groups of that size whatever the path)."""
    size = spec.training.vectorise_group if spec.vectorise or (jobs and jobs[0].test_only) else 1
    return [jobs[i: i + size] for i in range(0, len(jobs), size)]


def train_group(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData) -> list[TrainResult]:
    """One result per job, in order: the group in one vectorised pass if the spec says so
    (MLPs there also run their sparse layers as one block-diagonal sparse matmul), else one
    job after another."""
    if jobs and jobs[0].test_only:
        if spec.vectorise and len(jobs) > 1:
            return score_many(jobs, spec, data)
        return [score_test(j, spec, data) for j in jobs]
    if spec.vectorise and len(jobs) > 1:
        return train_many(jobs, spec, data)
    return [train(j, spec, data) for j in jobs]
