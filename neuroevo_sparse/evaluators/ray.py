"""Evaluation on Ray: a local Ray started for the run, or an existing cluster (`--address`).

What is sent where: the dataset splits are put in the object store once per run; each Ray
task carries one group of jobs (`training.vectorise_group` individuals for vectorised
models, one otherwise) as plain arrays (masks and weights, ~5 bytes per weight) and seeds;
the task returns the trained weights and metrics. Workers keep the
dataset as tensors on their device between tasks, so a GPU receives it once per worker.

Faults: a task whose worker process or node dies is retried by Ray (`resources.max_retries`);
one that still fails is recorded as failed and gets the worst fitness. A job that raises or
times out is a failure of that individual only. If the cluster itself stops answering,
`ClusterLost` is raised and the driver stops with its last checkpoint.
"""

from __future__ import annotations

import logging
import os

from ..config import ResourcesConfig
from ..data import Splits
from ..jobs import TrainJob, TrainResult, TrainSpec
from ..training import DeviceData, pick_device
from ..worker import groups, train_group
from . import ClusterLost, OnResult

log = logging.getLogger(__name__)

# A worker process keeps each run's dataset on its device between tasks.
_WORKER_DATA: dict[str, DeviceData] = {}



def _import_ray(local: bool):
    """Import Ray; a Ray started for one run listens on loopback only (what Ray itself does
    on macOS and Windows), so a laptop run opens no port to the network. Read by Ray at
    import time, so it only applies if Ray was not imported before."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    import ray.exceptions
    return ray


def _train_task(spec: TrainSpec, jobs: list[TrainJob], splits: Splits, data_key: str,
                gpus: float) -> list[TrainResult]:
    data = _WORKER_DATA.get(data_key)
    if data is None:
        _WORKER_DATA.clear()  # one run's data at a time per worker
        data = _WORKER_DATA[data_key] = DeviceData(splits, pick_device(gpus))
    return train_group(jobs, spec, data)


class RayEvaluator:
    def __init__(self, spec: TrainSpec, splits: Splits, resources: ResourcesConfig):
        self.spec = spec
        self.started_ray = False
        address = resources.address or os.environ.get("RAY_ADDRESS")
        self.ray = ray = _import_ray(local=not address)
        if not ray.is_initialized():
            if address:
                log.info("joining the Ray cluster at %s", address)
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
            else:
                ray.init(num_cpus=resources.num_cpus, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=True)
                self.started_ray = True
        cluster = ray.cluster_resources()
        gpus = resources.gpus_per_job
        if gpus > 0 and cluster.get("GPU", 0) == 0:
            log.warning("resources.gpus_per_job = %s but the Ray cluster has no GPU: training on CPU", gpus)
            gpus = 0.0
        self.gpus = gpus
        self.slots = max(1, int(cluster.get("CPU", 1) // resources.cpus_per_job))
        log.info("Ray: %d node(s), %s CPU, %s GPU; %s CPU and %s GPU per job",
                 len(ray.nodes()), cluster.get("CPU", 0), cluster.get("GPU", 0),
                 resources.cpus_per_job, gpus)
        self.data_ref = ray.put(splits)
        self.data_key = self.data_ref.hex()
        self.task = ray.remote(_train_task).options(
            num_cpus=resources.cpus_per_job, num_gpus=gpus,
            max_retries=resources.max_retries, retry_exceptions=False)

    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        ray = self.ray
        try:
            batches = groups(jobs, self.spec)
            refs = [self.task.remote(self.spec, batch, self.data_ref, self.data_key, self.gpus) for batch in batches]
            index = {ref: i for i, ref in enumerate(refs)}
            done: list[list[TrainResult] | None] = [None] * len(batches)
            pending = list(refs)
            warned = False
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = index[ref]
                    done[i] = self._collect(ref, batches[i])
                    if self.gpus > 0 and done[i][0].device == "cpu" and not warned:
                        log.warning("a job given %s GPU by Ray trained on the CPU: CUDA is not available "
                                    "to torch on worker %s", self.gpus, done[i][0].worker)
                        warned = True
                    for result in done[i] if on_result else ():
                        on_result(result)
            return [r for batch in done for r in batch]  # type: ignore[union-attr]
        except (ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError,
                ray.exceptions.RpcError, ConnectionError) as e:
            raise ClusterLost(f"the Ray cluster stopped answering: {type(e).__name__}: {e}") from e

    def _collect(self, ref, jobs: list[TrainJob]) -> list[TrainResult]:
        ex = self.ray.exceptions
        # Failures of the worker or node rather than of the job, left after Ray's retries.
        infrastructure = (ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError,
                          ex.OwnerDiedError, ex.TaskCancelledError)
        try:
            return self.ray.get(ref)
        except infrastructure as e:
            error = f"worker lost after retries: {type(e).__name__}: {str(e)[:300]}"
        except ex.RayTaskError as e:
            error = f"{type(e).__name__}: {str(e)[:300]}"
        return [TrainResult(j.individual_id, j.weights, status="failed", error=error) for j in jobs]

    def close(self) -> None:
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
