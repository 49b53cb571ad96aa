"""Evaluation on Ray: a local Ray started for the run, or an existing cluster (`--address`).

What is sent where: the dataset splits are put in the object store once per run. Each
generation (each `evaluate` call) puts every parent its jobs were made from once, as its
active values and packed masks, however many children it has; each Ray task carries one group
of jobs (`training.vectorise_group` individuals for vectorised models, one otherwise) as seeds
and what each child changed of its parents (wire.py), with references to those parents; it
returns the trained weights as active values, and the metrics. Workers keep the dataset as
tensors on their device between tasks, so a GPU receives it once per worker. The bytes put
and returned per call are in `RayEvaluator.bytes_moved`, and in the log at debug level.

Faults: a task whose worker process or node dies is retried by Ray (`resources.max_retries`);
one that still fails is recorded as failed and gets the worst fitness. A job that raises or
times out is a failure of that individual only. If the cluster itself stops answering,
`ClusterLost` is raised and the driver stops with its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import replace

from ..config.schema import ConfigError, ResourcesConfig
from ..problem.data import Splits
from ..train.jobs import TrainJob, TrainResult, TrainSpec
from ..train.core import DeviceData, pick_device
from ..train.worker import groups, train_group
from .. import faults
from . import ClusterLost, OnResult, wire

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


def _train_task(spec: TrainSpec, jobs: list[TrainJob], packs: list[wire.Packed] | None,
                links: list[tuple[int, ...]] | None, splits: Splits, data_key: str, gpus: float,
                *bases: wire.Packed) -> list[TrainResult] | list[tuple[TrainResult, wire.Packed]]:
    """Train a group. With `packs` (the jobs' arrays, each on the `bases` its `links` name: Ray
    hands over the parents this task's jobs were made from), return each result with its
    weights packed; without, the jobs carry their arrays and the results theirs (the shipping
    before issue #37, `RayEvaluator.shipping = "whole"`)."""
    faults.hang("job", jobs[0].generation)
    data = _WORKER_DATA.get(data_key)
    if data is None:
        _WORKER_DATA.clear()  # one run's data at a time per worker
        data = _WORKER_DATA[data_key] = DeviceData(splits, pick_device(gpus))
    if packs is None:
        return train_group(jobs, spec, data)
    parents = [wire.unpack(b) for b in bases]  # each parent once per task, however many children
    jobs = [replace(job, masks=masks, weights=weights)
            for job, pack, link in zip(jobs, packs, links)
            for masks, weights in [wire.unpack(pack, [parents[i] for i in link])]]
    results = train_group(jobs, spec, data)
    return [(replace(r, weights={}), wire.pack_weights(r.weights, job.masks)) for r, job in zip(results, jobs)]


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, not after Ray's own minutes of retries, when nothing listens there."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" or another form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterLost(f"cannot reach a Ray cluster at {address} ({e.strerror or e}): start it with "
                          f"`ray start --head --port={port}` on {host}, or check --address") from None


def _check_token(ray, address: str, timeout_s: float = 20.0) -> None:
    """Ask the cluster's GCS first, in seconds: a cluster started by `ray start --head` (Ray >=
    2.5x) wants a token, and without it `ray.init` retries for a minute and then says only
    "failed to connect"; a port where something other than Ray listens makes `ray.init` wait
    for minutes, deaf to Ctrl-C. The probe runs in a thread so that this one stays responsive
    to signals and can give up."""
    if ":" not in address or address.startswith("ray://"):
        return
    try:
        from ray._raylet import GcsClient
    except ImportError:  # another Ray: let ray.init speak for itself
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            GcsClient(address=address)
            outcome.append(None)
        except BaseException as e:  # reported by the waiting thread
            outcome.append(e)

    thread = threading.Thread(target=probe, name="neuroevo-gcs-probe", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.2)
    if not outcome:
        raise ClusterLost(f"something listens at {address} but no Ray cluster answered within {timeout_s:.0f} s: "
                          f"check the address (the head's GCS port, 6379 by default) and that `ray start --head` "
                          f"runs there")
    if isinstance(outcome[0], ray.exceptions.AuthenticationError):
        raise ClusterLost(_TOKEN_HELP.format(address=address, detail=str(outcome[0]).split(". Note")[0])) from None


_TOKEN_HELP = ("the Ray cluster at {address} uses token authentication ({detail}): set RAY_AUTH_MODE=token in "
               "this environment, and RAY_AUTH_TOKEN=<token> or the head node's ~/.ray/auth_token on this machine")


def _join_error(address: str, e: Exception) -> Exception:
    """Ray's error on joining, as one line that says what to do."""
    text = str(e)
    if "token" in text.lower() or "auth" in text.lower():
        return ClusterLost(_TOKEN_HELP.format(address=address, detail="no valid token here"))
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return ClusterLost(f"could not join the Ray cluster at {address}: {type(e).__name__}: {first[:300]}")


def _check_fits(nodes: list[dict], cpus: float, gpus: float) -> None:
    """A job that no node can hold would wait forever: say so before the first generation."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    most_cpus = max((r.get("CPU", 0) for r in alive), default=0)
    if cpus > most_cpus:
        raise ConfigError([f"resources.cpus_per_job: {cpus:g} CPUs per job, but the largest node of the Ray "
                           f"cluster has {most_cpus:g}: no job could ever start; lower it"])
    most_gpus = max((r.get("GPU", 0) for r in alive), default=0)
    if gpus > most_gpus:
        raise ConfigError([f"resources.gpus_per_job: {gpus:g} GPUs per job, but the largest node of the Ray "
                           f"cluster has {most_gpus:g}: no job could ever start; lower it"])


def runtime_env(resources: ResourcesConfig, factory) -> dict:
    """Ray's runtime environment for the training tasks: the user's model code that is not
    installed (resources.ship_code), and what resources.py_modules / working_dir add."""
    from ..config.plugins import shipped_modules

    modules: list = shipped_modules(factory) if resources.ship_code else []
    modules += [p for p in resources.py_modules]
    env: dict = {}
    if modules:
        env["py_modules"] = modules
    if resources.working_dir:
        env["working_dir"] = resources.working_dir
    for path in [*resources.py_modules, *filter(None, [resources.working_dir])]:
        if not os.path.exists(path):
            raise ConfigError([f"resources: {path} does not exist (py_modules and working_dir name local "
                               f"directories or .py files to ship to the workers)"])
    return env


class RayCluster:
    """Ray, started for the run or joined (`--address`) before the data and the network are
    ready, so that its start-up (~5 s for a local Ray) overlaps theirs.

    Not done, measured: warm-up tasks that import torch (and torch._dynamo, which the first
    optimiser of a process imports) in the workers during that time gained 0.3 s on 2 cores,
    where every process competes for the same cores, and made Ray run a run's first tiny tasks
    on the one warm worker instead of spreading them."""

    def __init__(self, resources: ResourcesConfig, factory):
        self.started_ray = False
        address = resources.address or os.environ.get("RAY_ADDRESS")
        self.ray = ray = _import_ray(local=not address)
        # Ray uploads local code only for a whole job (ray.init), not per task.
        env = runtime_env(resources, factory)
        if env:
            log.info("Ray: shipping code to the workers: %s", ", ".join(f"{k}={v}" for k, v in env.items()))
        if not ray.is_initialized():
            if address:
                log.info("joining the Ray cluster at %s", address)
                _check_reachable(address)
                _check_token(ray, address)
                try:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                             runtime_env=env or None)
                except Exception as e:
                    raise _join_error(address, e) from e
            else:
                started = time.perf_counter()
                ray.init(num_cpus=resources.num_cpus, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=True, runtime_env=env or None)
                self.started_ray = True
                # On a few cores a local Ray's start, its workers' torch imports and its
                # shutdown are a fixed ~9 s, the whole of a small run: say what skips them.
                log.info("started a local Ray in %.1f s (its workers import torch on their first job); on one "
                         "machine resources.backend = \"local\" trains in this process without it",
                         time.perf_counter() - started)
        elif env:
            log.warning("Ray was initialised before this run, so its code cannot be shipped to the workers "
                        "(Ray takes a runtime environment only in ray.init): pass runtime_env=%s to your "
                        "ray.init, or let the run start Ray", env)

    def close(self) -> None:
        if self.started_ray and self.ray.is_initialized():
            _stop_monitor(self.ray)
            self.ray.shutdown()


def _stop_monitor(ray) -> None:
    """Kill the autoscaler monitor of a Ray started for the run, before ray.shutdown: that
    gives it a second's grace to exit on SIGTERM, which it takes in full, 1.0 of the 1.3 s a
    local Ray's shutdown takes (Ray 2.60). One machine's Ray autoscales nothing. The handle is
    Ray's private one: where another Ray lacks it, the shutdown is Ray's own."""
    try:
        processes = ray._private.worker._global_node.all_processes.get("monitor", [])
    except AttributeError:
        return
    for info in processes:
        try:
            info.process.kill()
            info.process.wait(timeout=1)
        except Exception as e:  # noqa: BLE001 -- ray.shutdown stops it as before
            log.debug("could not stop Ray's monitor early: %s", e)


class RayEvaluator:
    # How jobs cross: "parents" (each parent put once, children as what differs from it);
    # "alone" (each job packed on its own, no parent); "whole" (the shipping before issue #37:
    # each job's arrays inline in its task, ~5 bytes per weight, results dense). Not a
    # setting: benchmarks/ray_bytes.py changes it to measure what the others move.
    shipping = "parents"

    def __init__(self, spec: TrainSpec, splits: Splits, resources: ResourcesConfig,
                 cluster: RayCluster | None = None):
        self.spec = spec
        # Per evaluate() call: the bytes it put (parents, tasks) and got back (see _Shipment).
        self.bytes_moved: list[dict[str, int]] = []
        self.cluster = cluster or RayCluster(resources, spec.builder.factory)
        self.ray = self.cluster.ray
        try:
            self._setup(self.ray, splits, resources)
        except BaseException:
            self.close()  # a Ray started for this run does not outlive its failed start
            raise

    def _setup(self, ray, splits: Splits, resources: ResourcesConfig) -> None:
        cluster = ray.cluster_resources()
        gpus = resources.gpus_per_job
        if gpus > 0 and cluster.get("GPU", 0) == 0:
            log.warning("resources.gpus_per_job = %s but the Ray cluster has no GPU: training on CPU", gpus)
            gpus = 0.0
        self.gpus = gpus
        _check_fits(ray.nodes(), resources.cpus_per_job, gpus)
        self.slots = max(1, int(cluster.get("CPU", 1) // resources.cpus_per_job))
        log.info("Ray: %d node(s), %s CPU, %s GPU; %s CPU and %s GPU per job",
                 len(ray.nodes()), cluster.get("CPU", 0), cluster.get("GPU", 0),
                 resources.cpus_per_job, gpus)
        self.job_timeout_s = resources.job_timeout_s
        self._warm = False  # no task has returned yet (see _deadline)
        self.data_ref = ray.put(splits)
        self.data_key = self.data_ref.hex()
        self.data_bytes = _nbytes(ray, splits)  # once per run
        log.debug("Ray: put the data once: %s", _mb(self.data_bytes))
        self.task = ray.remote(_train_task).options(
            num_cpus=resources.cpus_per_job, num_gpus=gpus,
            max_retries=resources.max_retries, retry_exceptions=False)

    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        ray = self.ray
        try:
            batches = groups(jobs, self.spec, self.slots)
            shipment = _Shipment(ray, self.spec, batches, self.shipping)
            refs = [self.task.remote(self.spec, *args, self.data_ref, self.data_key, self.gpus, *parents)
                    for args, parents in shipment.tasks]
            index = {ref: i for i, ref in enumerate(refs)}
            done: list[list[TrainResult] | None] = [None] * len(batches)
            pending = list(refs)
            warned = False
            started = time.monotonic()
            deadline = self._deadline(batches, len(batches), started)
            while pending:
                # A bounded wait: signal handlers run between waits, and a task that hangs
                # (past every job's own time limit) is cancelled instead of waited for forever.
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                if ready:  # progress: the tasks left get their time from now
                    self._warm = True
                    deadline = self._deadline(batches, len(pending), time.monotonic())
                elif deadline is not None and time.monotonic() > deadline:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                        i = index[ref]
                        done[i] = self._failed(batches[i], f"no result within {deadline - started:.0f} s "
                                                           f"(resources.job_timeout_s = {self.job_timeout_s:g} "
                                                           f"per job): the task hung and was cancelled")
                        for result in done[i] if on_result else ():
                            on_result(result)
                    break
                for ref in ready:
                    i = index[ref]
                    done[i] = self._collect(ref, batches[i], shipment)
                    if self.gpus > 0 and done[i][0].device == "cpu" and not warned:
                        log.warning("a job given %s GPU by Ray trained on the CPU: CUDA is not available "
                                    "to torch on worker %s", self.gpus, done[i][0].worker)
                        warned = True
                    for result in done[i] if on_result else ():
                        on_result(result)
            self.bytes_moved.append(shipment.moved)
            shipment.log()
            return [r for batch in done for r in batch]  # type: ignore[union-attr]
        except (ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError,
                ray.exceptions.RpcError, ConnectionError) as e:
            raise ClusterLost(f"the Ray cluster stopped answering: {type(e).__name__}: {e}") from e

    def _deadline(self, batches: list[list[TrainJob]], left: int, since: float) -> float | None:
        """When the last of `left` tasks must have returned, counted from `since` (the start, or
        the last result), if jobs have a time limit: as many rounds of tasks as the cluster's
        slots need, each its group's jobs' limits, plus slack for transfers. Beyond that no task
        can be working: it hangs. Counting from the last result rather than from submission keeps
        a loaded machine's slow but steady tasks alive; before any task of the run has returned,
        a minute more for the workers' start-up (each imports torch)."""
        if self.job_timeout_s is None or not batches:
            return None
        rounds = math.ceil(left / self.slots)
        per_task = max(len(b) for b in batches) * self.job_timeout_s
        return since + rounds * per_task * 1.5 + 20.0 + (0.0 if self._warm else 60.0)

    @staticmethod
    def _failed(jobs: list[TrainJob], error: str) -> list[TrainResult]:
        return [TrainResult(j.individual_id, j.weights, status="failed", error=error) for j in jobs]

    def _collect(self, ref, jobs: list[TrainJob], shipment: "_Shipment") -> list[TrainResult]:
        ex = self.ray.exceptions
        # Failures of the worker or node rather than of the job, left after Ray's retries.
        infrastructure = (ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError,
                          ex.OwnerDiedError, ex.TaskCancelledError)
        try:
            return shipment.received(self.ray.get(ref), jobs)
        except infrastructure as e:
            error = f"worker lost after retries: {type(e).__name__}: {str(e)[:300]}"
        except ex.RayTaskError as e:
            error = f"{type(e).__name__}: {str(e)[:300]}"
        except (ex.RaySystemError, ex.LocalRayletDiedError, ex.RpcError):
            raise  # the cluster, not this job: ClusterLost in evaluate()
        except ex.RayError as e:  # OutOfMemoryError, ObjectStoreFullError, ...: this job's failure
            error = f"{type(e).__name__}: {str(e)[:300]}"
        return self._failed(jobs, error)

    def close(self) -> None:
        self.cluster.close()


def _nbytes(ray, obj) -> int:
    """Bytes of `obj` as Ray serialises it: pickle protocol 5, arrays as out-of-band buffers
    (counted, not copied)."""
    buffers: list = []
    head = ray.cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(b.raw().nbytes for b in buffers)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


class _Shipment:
    """One evaluate() call's jobs as they cross, and the bytes that moves.

    Each job's arrays are packed on its bases (wire.pack); each base that some job's pack
    starts from or takes from is put in the object store once, packed alone, and handed to
    every task that needs it as a top-level argument (Ray fetches it to a node once, and
    prefers nodes that hold it). A task's arguments are then its jobs without arrays, their
    packs and which of its bases each one uses.

    `moved`: generation, jobs, tasks, parents (bases put), on_parents (jobs shipped as what
    differs from theirs), parent_bytes, task_bytes, put_bytes (their sum), returned_bytes; and
    what the shipping before issue #37 moved for the same jobs (whole_put_bytes: every job's
    arrays inline; whole_returned_bytes: the results dense)."""

    def __init__(self, ray, spec: TrainSpec, batches: list[list[TrainJob]], shipping: str):
        self.ray, self.whole = ray, shipping == "whole"
        jobs = [j for batch in batches for j in batch]
        inline = [(spec, [replace(j, bases=()) for j in batch]) for batch in batches]
        self.moved = {"generation": jobs[0].generation if jobs else -1, "jobs": len(jobs),
                      "tasks": len(batches), "parents": 0, "on_parents": 0, "parent_bytes": 0, "task_bytes": 0,
                      "returned_bytes": 0, "whole_put_bytes": sum(_nbytes(ray, a) for a in inline),
                      "whole_returned_bytes": 0}
        if self.whole:
            self.tasks = [((a[1], None, None), []) for a in inline]
            self.moved["task_bytes"] = self.moved["whole_put_bytes"]
        else:
            self.tasks = self._packed(spec, batches, parents=shipping == "parents")
        self.moved["put_bytes"] = self.moved["parent_bytes"] + self.moved["task_bytes"]

    def _packed(self, spec: TrainSpec, batches: list[list[TrainJob]], parents: bool) -> list[tuple[tuple, list]]:
        put: dict[tuple[int, int, int], object] = {}  # a base's identity -> its ObjectRef

        def key(b) -> tuple[int, int, int]:
            k = (b.id, id(b.masks), id(b.weights))  # the arrays, alive for the whole call
            if k not in put:
                packed = wire.pack(b.masks, b.weights)
                put[k] = self.ray.put(packed)
                self.moved["parents"] += 1
                self.moved["parent_bytes"] += _nbytes(self.ray, packed)
            return k

        tasks = []
        for batch in batches:
            order: dict[tuple[int, int, int], int] = {}  # the task's bases, in its arguments' order
            packs, links = [], []
            for job in batch:
                pack = wire.pack(job.masks, job.weights, job.bases if parents else ())
                used = sorted({k for t in pack.tensors if t.form == wire.PATCH
                               for k in (t.start, t.other) if k != wire.ZEROS})
                at = {k: i for i, k in enumerate(used)}  # the job's bases -> the ones it ships with
                packs.append(pack._replace(tensors=tuple(
                    t._replace(start=at.get(t.start, wire.ZEROS), other=at.get(t.other, wire.ZEROS))
                    if t.form == wire.PATCH else t for t in pack.tensors)))
                links.append(tuple(order.setdefault(key(job.bases[k]), len(order)) for k in used))
                self.moved["on_parents"] += bool(used)
            bare = [replace(j, masks={}, weights={}, bases=()) for j in batch]
            self.moved["task_bytes"] += _nbytes(self.ray, (spec, bare, packs, links))
            tasks.append(((bare, packs, links), [put[k] for k in order]))
        return tasks

    def received(self, got: list, jobs: list[TrainJob]) -> list[TrainResult]:
        """A task's results, their weights unpacked with the driver's own copies of the jobs' masks."""
        self.moved["returned_bytes"] += _nbytes(self.ray, got)
        results = got if self.whole else [replace(r, weights=wire.unpack_weights(p, j.masks))
                                          for (r, p), j in zip(got, jobs)]
        self.moved["whole_returned_bytes"] += _nbytes(self.ray, results)
        return results

    def log(self) -> None:
        m = self.moved
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Ray: generation %d, %d jobs (%d on their parents) in %d tasks: put %s (%d parents %s, "
                      "tasks %s), returned %s; each job whole would have put %s and returned %s",
                      m["generation"], m["jobs"], m["on_parents"], m["tasks"], _mb(m["put_bytes"]), m["parents"],
                      _mb(m["parent_bytes"]), _mb(m["task_bytes"]), _mb(m["returned_bytes"]),
                      _mb(m["whole_put_bytes"]), _mb(m["whole_returned_bytes"]))
