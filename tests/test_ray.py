"""The Ray evaluator on real Ray: multi-node clusters on 127.0.0.1 (ray.cluster_utils), and a
head and a worker node started with `ray start`, as on several machines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, neuroevo_cmd, stop_session_rays
from neuroevo_sparse.store.history import NONDETERMINISTIC

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))
# Groups of 2: a generation of 4 is two Ray tasks, so vectorised slices spread over workers.
ARGS = ["--set", "evolution.generations=2", "--set", "training.steps=300", "--set", "training.vectorise_group=2"]


def ray_stop() -> None:
    """End the Ray processes this test session started (never another Ray on the machine)."""
    stop_session_rays()


class LoopbackCluster:
    """A real multi-node Ray cluster on 127.0.0.1: a head and worker nodes, each its own GCS
    client, raylet and object store processes (ray.cluster_utils.Cluster). `ray start` is not
    used because on Linux it rewrites 127.0.0.1 to the machine's interface address."""

    def __init__(self, head_cpus: int, workers: list[dict]):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        self.workers = [self.cluster.add_node(node_ip_address="127.0.0.1", **w) for w in workers]
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def kill_node(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture
def cluster_factory():
    """Clusters made by a test are shut down when it ends, passed or failed."""
    made: list[LoopbackCluster] = []

    def make(head_cpus: int = 1, workers: list[dict] | None = None) -> LoopbackCluster:
        made.append(LoopbackCluster(head_cpus, workers if workers is not None else [{"num_cpus": 1}]))
        return made[-1]

    yield make
    for c in made:
        c.shutdown()
    ray_stop()


@pytest.fixture(scope="module")
def toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def local_history(toml, tmp_path_factory) -> pd.DataFrame:
    run = tmp_path_factory.mktemp("local") / "run"
    p = cli("run", str(toml), "--run-dir", str(run), *ARGS)
    assert p.returncode == 0, p.stderr
    return history(run)


def cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True, env=env, timeout=timeout)


def history(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "history")
    return df.sort_values(["generation", "individual_id"]).reset_index(drop=True)


def metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["run_id", *NONDETERMINISTIC])


def test_multi_node_cluster_gives_the_local_history(toml, local_history, tmp_path, cluster_factory):
    cluster = cluster_factory()
    run = tmp_path / "run"
    p = cli("run", str(toml), "--run-dir", str(run), *ARGS, "--address", cluster.address,
            "--set", 'resources.backend="ray"', "--set", "resources.gpus_per_job=0.5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Ray: 2 node(s)" in p.stderr
    assert "has no GPU: training on CPU" in p.stderr  # asked for a GPU on a CPU-only cluster
    df = history(run)
    # Asking for a GPU is part of the config, and it chooses the training path (torch's ops, no
    # CSR layers, fixed groups of 8), so the same config on the local backend is the reference.
    same = cli("run", str(toml), "--run-dir", str(tmp_path / "local"), *ARGS, "--set", "resources.gpus_per_job=0.5")
    assert same.returncode == 0, same.stderr[-3000:]
    pd.testing.assert_frame_equal(metrics(df), metrics(history(tmp_path / "local")), check_exact=True)
    assert df.worker.nunique() >= 2 and set(df.device) == {"cpu"}


def test_halving_on_a_cluster_gives_the_local_history(toml, tmp_path, cluster_factory):
    """evolution.halving_at: the stopped trainings' state (weights, optimiser, loss sum) goes to
    the driver and back to whichever node trains them on, and they end as they would locally."""
    halving = ["--set", "evolution.halving_at=0.3", "--set", "evolution.halving_keep=0.5"]
    p = cli("run", str(toml), "--run-dir", str(tmp_path / "local"), *ARGS, *halving)
    assert p.returncode == 0, p.stderr[-3000:]
    cluster = cluster_factory()
    p = cli("run", str(toml), "--run-dir", str(tmp_path / "ray"), *ARGS, *halving, "--address", cluster.address,
            "--set", 'resources.backend="ray"')
    assert p.returncode == 0, p.stderr[-3000:]
    local, ray = history(tmp_path / "local"), history(tmp_path / "ray")
    pd.testing.assert_frame_equal(metrics(ray), metrics(local), check_exact=True)
    assert set(ray[ray.evaluated].steps) == {90, 300}  # stopped at 30% of 300 steps, or trained on


def test_inherited_optimiser_states_on_a_cluster_give_the_local_history(toml, tmp_path, cluster_factory):
    """training.inherit_optimizer: each child's state crosses with its job and each trained
    state comes back with its result, and the run ends as it does locally."""
    inherit = ["--set", "training.inherit_optimizer=true", "--set", 'training.optimizer="sgd"']
    p = cli("run", str(toml), "--run-dir", str(tmp_path / "local"), *ARGS, *inherit)
    assert p.returncode == 0, p.stderr[-3000:]
    cluster = cluster_factory()
    p = cli("run", str(toml), "--run-dir", str(tmp_path / "ray"), *ARGS, *inherit, "--address", cluster.address,
            "--set", 'resources.backend="ray"')
    assert p.returncode == 0, p.stderr[-3000:]
    pd.testing.assert_frame_equal(metrics(history(tmp_path / "ray")), metrics(history(tmp_path / "local")),
                                  check_exact=True)


def test_one_worker_gives_the_same_history(toml, local_history, tmp_path):
    run = tmp_path / "run"
    try:
        p = cli("run", str(toml), "--run-dir", str(run), *ARGS,
                "--set", 'resources.backend="ray"', "--set", "resources.num_cpus=1")
        assert p.returncode == 0, p.stderr[-3000:]
    finally:
        ray_stop()
    # A Ray started for the run says what it cost and what runs without it.
    assert re.search(r"started a local Ray in \d+\.\d s .*resources\.backend = \"local\"", p.stderr)
    df = history(run)
    pd.testing.assert_frame_equal(metrics(df), metrics(local_history), check_exact=True)
    assert df[df.evaluated].worker.nunique() == 1


def _train_task_pids() -> list[int]:
    """Ray worker processes running a training task (Ray names them after the task)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_train_task" in line]


def _watch_and_kill(proc, run: Path, kill) -> int:
    """Call `kill()` while generation 1 is training; returns how many times it killed."""
    deadline, kills = time.monotonic() + 300, 0
    while proc.poll() is None and time.monotonic() < deadline and kills == 0:
        if (run / "history" / "gen-000000.parquet").exists():
            kills = kill()
        time.sleep(0.05)
    return kills


def _assert_complete(df: pd.DataFrame, local: pd.DataFrame) -> None:
    per_gen = df.groupby("generation").individual_id.apply(list)
    assert all(len(ids) == len(set(ids)) for ids in per_gen)  # each individual once
    assert list(df.groupby("generation").size()) == [4, 8, 8]
    assert (df.status == "ok").all()  # retried, not failed
    pd.testing.assert_frame_equal(metrics(df), metrics(local), check_exact=True)  # and retried to the same result


def test_killed_worker_processes_are_retried(toml, local_history, tmp_path, cluster_factory):
    cluster = cluster_factory(head_cpus=1, workers=[{"num_cpus": 1}])
    run = tmp_path / "run"
    proc = _start_run(toml, run, cluster)

    def kill() -> int:
        pids = _train_task_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return len(pids)

    kills = _watch_and_kill(proc, run, kill)
    _, err = proc.communicate(timeout=600)
    assert kills, "no training worker was seen to kill"
    assert proc.returncode == 0, err[-3000:]
    _assert_complete(history(run), local_history)


def _start_run(toml, run, cluster) -> subprocess.Popen:
    """`neuroevo run` against the cluster, in the background, so a test can kill parts of it."""
    return subprocess.Popen(neuroevo_cmd() + ["run", str(toml), "--run-dir", str(run), *ARGS,
                                              "--address", cluster.address, "--set", 'resources.backend="ray"'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_node_loses_no_individual(toml, local_history, tmp_path, cluster_factory):
    cluster = cluster_factory(head_cpus=0, workers=[{"num_cpus": 1}, {"num_cpus": 1}])
    run = tmp_path / "run"
    proc = _start_run(toml, run, cluster)

    def kill() -> int:
        if not _train_task_pids():
            return 0
        cluster.kill_node(cluster.workers[0])
        return 1

    kills = _watch_and_kill(proc, run, kill)
    _, err = proc.communicate(timeout=600)
    assert kills, "generation 1 was never seen training"
    assert proc.returncode == 0, err[-3000:]
    df = history(run)
    _assert_complete(df, local_history)


def test_fake_gpu_node_schedules_gpu_jobs_and_says_cpu_was_used(toml, tmp_path, cluster_factory):
    """A node that declares a GPU (Ray allows it) without CUDA: jobs are scheduled as GPU jobs,
    run on the CPU, and the driver says so. (No real GPU on the machines CI runs on.)"""
    cluster = cluster_factory(workers=[{"num_cpus": 1, "num_gpus": 1}])
    run = tmp_path / "run"
    p = cli("run", str(toml), "--run-dir", str(run), "--set", "evolution.generations=0",
            "--address", cluster.address, "--set", 'resources.backend="ray"',
            "--set", "resources.gpus_per_job=0.5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0.5 GPU per job" in p.stderr
    assert "trained on the CPU: CUDA is not available" in p.stderr


def test_cluster_gone_stops_with_checkpoint_and_message_then_resumes(toml, local_history, tmp_path,
                                                                   cluster_factory):
    cluster = cluster_factory(head_cpus=1, workers=[{"num_cpus": 1}])
    run = tmp_path / "run"
    proc = _start_run(toml, run, cluster)

    def kill() -> int:
        if not _train_task_pids():
            return 0
        cluster.shutdown()
        return 1

    assert _watch_and_kill(proc, run, kill), "generation 1 was never seen training"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert f"neuroevo resume {run}" in err, err[-3000:]
    assert (run / "checkpoints" / "gen-000000").is_dir()
    # A new cluster (here: a local Ray) continues the run to the same result.
    try:
        r = cli("resume", str(run), "--set", "resources.address=\"\"", "--set", "resources.num_cpus=2")
    finally:
        ray_stop()
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(metrics(history(run)), metrics(local_history), check_exact=True)


# ------------------------------------------------------------------ `ray start` nodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ray_nodes import RayNodes  # noqa: E402

# A driver that joins the cluster at argv[3], runs argv[1] into argv[2] with the --set values
# that follow, and prints what its evaluator moved per call and a digest of each object it put.
DRIVER = """
import hashlib, json, sys
import ray
import neuroevo_sparse.launch as launch
from neuroevo_sparse import config
from neuroevo_sparse.evaluators import wire

toml, run_dir, address, *sets = sys.argv[1:]
made, puts = [], []
real_put, real_make = ray.put, launch.make_evaluator

def put(value, **kwargs):
    if isinstance(value, wire.Packed):  # a parent: its arrays' digest, per evaluate() call
        masks, weights = wire.unpack(value)
        arrays = b"".join(a.tobytes() for d in (masks, weights) for a in d.values())
        puts.append([len(made[0].bytes_moved), hashlib.sha256(arrays).hexdigest()])
    return real_put(value, **kwargs)

def make(*args, **kwargs):
    made.append(real_make(*args, **kwargs))
    return made[-1]

ray.put, launch.make_evaluator = put, make
exp = config.load(toml, sets + ['resources.backend="ray"', f'resources.address="{address}"'])
launch.start(exp, run_dir)
print(json.dumps({"calls": made[0].bytes_moved, "puts": puts, "nodes": len(ray.nodes())}))
"""


@pytest.fixture
def ray_start_nodes():
    """A head and a worker node started by `ray start` on this machine, token authentication
    on; stopped when the test ends, passed or failed (only its own processes)."""
    nodes = RayNodes(nodes=2, cpus=1, ray=RAY)
    try:
        yield nodes
    finally:
        nodes.stop()


def test_ray_start_nodes_get_each_parent_once_and_give_the_local_history(toml, tmp_path, ray_start_nodes):
    """Eight children of a population of four: each parent crosses to the object store once per
    generation whatever its number of children, the children as what they changed, far fewer
    bytes than every child whole; the history is the local backend's, bit for bit."""
    sets = ["evolution.generations=2", "training.steps=300", "training.vectorise_group=2",
            "evolution.offspring=8"]
    local = cli("run", str(toml), "--run-dir", str(tmp_path / "local"), *[a for s in sets for a in ("--set", s)])
    assert local.returncode == 0, local.stderr[-3000:]
    p = subprocess.run([sys.executable, "-c", DRIVER, str(toml), str(tmp_path / "ray"), ray_start_nodes.address,
                        *sets], capture_output=True, text=True, env=ray_start_nodes.driver_env(),
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 2
    df = history(tmp_path / "ray")
    pd.testing.assert_frame_equal(metrics(df), metrics(history(tmp_path / "local")), check_exact=True)
    assert df[df.evaluated].worker.nunique() >= 2  # both nodes trained

    training = {}  # a generation's first call trains its offspring (later ones score the test split)
    for i, call in enumerate(out["calls"]):
        training.setdefault(call["generation"], i)
    assert sorted(training) == [0, 1, 2]
    for g in (1, 2):
        i = training[g]
        call = out["calls"][i]
        children = df[(df.generation == g) & (df.born == g)]
        parents = {p for ids in children.parent_ids for p in ids}
        digests = [d for at, d in out["puts"] if at == i]
        assert call["on_parents"] == len(children) == 8             # every child on its parents
        assert len(digests) == call["parents"] == len(set(digests))  # each parent once...
        assert 1 <= call["parents"] <= len(parents) < len(children)  # ...though some have several children
        assert call["put_bytes"] == call["parent_bytes"] + call["task_bytes"]
        assert call["put_bytes"] < call["whole_put_bytes"] / 2      # every child whole, inline
        assert call["returned_bytes"] < call["whole_returned_bytes"]
