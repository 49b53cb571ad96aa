"""Evaluators train a list of TrainJobs and return their TrainResults in the same order.

`local` trains in the driver process, on a thread per `cpus_per_job` cores (one machine, no
Ray to start); `ray` spreads jobs over Ray workers on one machine or a cluster. Both run the
same `worker.train_group` on the same groups, with the same thread count, so they give
bit-identical results for the same jobs.

Owns: where jobs run, how they are grouped onto slots, retries, timeouts and a lost cluster.

May import: train, problem, config, faults.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..config.schema import Experiment
from ..problem.data import Splits
from ..train.jobs import TrainJob, TrainResult, TrainSpec

OnResult = Callable[[TrainResult], None]


class ClusterLost(RuntimeError):
    """The Ray cluster stopped answering; the run cannot go on without it."""


class Evaluator(Protocol):
    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        ...

    def close(self) -> None:
        ...


class Cluster(Protocol):
    def close(self) -> None:
        ...


def connect(exp: Experiment, factory: Callable | None) -> Cluster | None:
    """Start or join what the evaluator runs on (Ray) now, before the data and the network are
    ready, so that the start-ups overlap; None for the local backend. `factory`: the resolved
    `model.factory`, whose code Ray may have to ship."""
    if exp.resources.backend == "local":
        return None
    from .ray import RayCluster
    return RayCluster(exp.resources, factory)


def make(exp: Experiment, spec: TrainSpec, splits: Splits, cluster: Cluster | None = None) -> Evaluator:
    """The evaluator of `exp`, on `cluster` if `connect` gave one (it then owns and closes it)."""
    if exp.resources.backend == "local":
        from .local import LocalEvaluator, local_slots
        r = exp.resources
        return LocalEvaluator(spec, splits, r.gpus_per_job, local_slots(r.num_cpus, r.cpus_per_job))
    from .ray import RayEvaluator
    return RayEvaluator(spec, splits, exp.resources, cluster)
