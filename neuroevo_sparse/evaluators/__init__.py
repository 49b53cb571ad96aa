"""Evaluators train a list of TrainJobs and return their TrainResults in the same order.

`resources.backend = "auto"` (the default) picks `local` on one machine and `ray` when a
cluster is named (`choose`). `local` trains in the driver process, on a thread per
`cpus_per_job` cores (one machine, no Ray to start); `ray` spreads jobs over Ray workers on one machine or a cluster. Both run the
same `worker.train_group` on the same groups, with the same thread count, so they give
bit-identical results for the same jobs.

Owns: where jobs run, how they are grouped onto slots, retries, timeouts and a lost cluster.

May import: train, problem, config, faults.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Protocol

from ..config.schema import Experiment, ResourcesConfig
from ..problem.data import Splits
from ..train.jobs import TrainJob, TrainResult, TrainSpec

OnResult = Callable[[TrainResult], None]

log = logging.getLogger("neuroevo_sparse")


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


def choose(resources: ResourcesConfig) -> tuple[str, str]:
    """The backend a run uses ("local" or "ray") and why, in words. On one machine a local Ray's
    start, its workers' torch imports and its shutdown are time the run does not need, and
    results are the same on both: "auto" takes Ray only for a cluster that is named."""
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if resources.backend == "local":
        return "local", 'resources.backend = "local"'
    if resources.backend == "ray":
        return "ray", 'resources.backend = "ray"' + (f", cluster at {address}" if address else
                                                      ", no cluster named: a local Ray is started")
    if address:
        where = "resources.address" if resources.address else "RAY_ADDRESS"
        return "ray", f"a Ray cluster is named ({where} = {address})"
    return "local", ("one machine, no Ray cluster named (--address, resources.address or RAY_ADDRESS); "
                     'resources.backend = "ray" starts a local Ray instead')


def connect(exp: Experiment, factory: Callable | None) -> Cluster | None:
    """Start or join what the evaluator runs on (Ray) now, before the data and the network are
    ready, so that the start-ups overlap; None for the local backend. `factory`: the resolved
    `model.factory`, whose code Ray may have to ship. Logs the backend and why, once."""
    backend, why = choose(exp.resources)
    log.info("backend: %s (%s)", "in this process" if backend == "local" else "Ray", why)
    if backend == "local":
        return None
    from .ray import RayCluster
    return RayCluster(exp.resources, factory)


def make(exp: Experiment, spec: TrainSpec, splits: Splits, cluster: Cluster | None = None) -> Evaluator:
    """The evaluator of `exp`, on `cluster` if `connect` gave one (it then owns and closes it)."""
    if choose(exp.resources)[0] == "local":
        from .local import LocalEvaluator, local_slots
        r = exp.resources
        return LocalEvaluator(spec, splits, r.gpus_per_job, local_slots(r.num_cpus, r.cpus_per_job))
    from .ray import RayEvaluator
    return RayEvaluator(spec, splits, exp.resources, cluster)
