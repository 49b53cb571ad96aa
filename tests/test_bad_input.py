"""Bad input of every kind gets one clear error, a non-zero exit, and loses nothing; and the
configurations that no other test exercises keep their invariants."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse import config, launch
from neuroevo_sparse.problem import data
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.store import RunDir

from conftest import TINY, comparable_history, neuroevo_cmd
from test_evolution import PoisonOne


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True, timeout=300, cwd=cwd)


def problems(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path, overrides)
    return str(e.value)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def same_history(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(comparable_history(a), comparable_history(b), check_exact=True)


# ------------------------------------------------------------------ experiments

@pytest.mark.parametrize("key, value", [
    ("sparsity.density", "nan"), ("training.lr", "nan"), ("evolution.crossover_prob", "nan"),
    ("training.epochs", "inf"), ("training.momentum", "-inf"), ("fitness.weights", "[1.0, nan]"),
])
def test_values_that_are_not_finite_numbers_are_refused(tmp_path, key, value):
    msg = problems(tmp_path, TINY, [f"{key}={value}"])
    assert f"{key}: " in msg and "finite" in msg


@pytest.mark.parametrize("override, expected", [
    ("model.hidden=[32, 0]", "model.hidden: item 1: must be >= 1; got 0"),
    ("model.hidden=[-4]", "model.hidden: item 0: must be >= 1; got -4"),
    ("model.channels=[0]", "model.channels: item 0: must be >= 1; got 0"),
    ("experiment.seed=1000000000000000000000000000000", "experiment.seed: must fit in 64 bits"),
    ('experiment.name="../../elsewhere"', "experiment.name: '../../elsewhere' names a directory"),
    ('experiment.name="a/b"', "experiment.name: 'a/b' names a directory"),
])
def test_shapes_seeds_and_names_are_checked(tmp_path, override, expected):
    assert expected in problems(tmp_path, TINY, [override])


def test_unreadable_experiment_files(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[experiment]\nname = \"caf\xe9\"\n")  # latin-1, not UTF-8
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        config.load(path)
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_a_density_that_leaves_a_layer_empty_is_an_error(tiny, tmp_path):
    exp = replace(tiny, sparsity=replace(tiny.sparsity, density=1e-5, init="uniform"))
    with pytest.raises(ConfigError, match=r"leaves .* with no connection .* use a density of at least"):
        launch.start(exp, tmp_path / "run")


def test_dense_layers_must_name_a_layer(tiny, tmp_path):
    exp = replace(tiny, sparsity=replace(tiny.sparsity, dense_layers=["fc9.weight"]))
    with pytest.raises(ConfigError, match=r"'fc9.weight' name\(s\) no maskable tensor .* fc1.weight"):
        launch.start(exp, tmp_path / "run")


# ------------------------------------------------------------------ files and directories

def test_a_foreign_directory_is_never_written(tiny_toml, tmp_path):
    foreign = tmp_path / "mine"
    (foreign / "best").mkdir(parents=True)
    (foreign / "best" / "model.pt").write_bytes(b"my own model")
    (foreign / "notes.txt").write_text("keep me")
    before = tree_digest(foreign)
    p = cli("run", str(tiny_toml), "--run-dir", str(foreign))
    assert p.returncode == 2, p.stderr
    assert "is not empty and holds no run" in p.stderr and "Traceback" not in p.stderr
    assert tree_digest(foreign) == before
    (tmp_path / "empty").mkdir()
    launch.start(config.load(tiny_toml), tmp_path / "empty")  # an empty directory is fine


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    root = tmp_path / "fm"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(b""), "0 bytes, too short for an IDX file"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a complete gzip file"),
    (lambda p: p.write_bytes(b"this is not gzip at all"), "not a complete gzip file"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:1000])), "truncated IDX file"),
    (lambda p: p.write_bytes(gzip.compress(b"\x01\x02")), "too short for an IDX file"),
])
def test_damaged_dataset_files_are_named(idx_dir, damage, expected):
    cfg = config.DataConfig(dataset="fashion_mnist", path=str(idx_dir))
    data.load(cfg, 0)  # intact, it loads
    damage(idx_dir / "train-images-idx3-ubyte.gz")
    with pytest.raises(data.DatasetError, match=expected):
        data.load(cfg, 0)


def test_labels_that_do_not_match_the_images(idx_dir):
    _write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(59))
    with pytest.raises(data.DatasetError, match="60 training images but 59 labels"):
        data.load(config.DataConfig(dataset="fashion_mnist", path=str(idx_dir)), 0)


def test_damaged_dataset_through_the_cli(tiny_toml, idx_dir, tmp_path):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    p = cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set", 'data.dataset="fashion_mnist"',
            "--set", f'data.path="{idx_dir}"')
    assert p.returncode == 2 and "error: " in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()  # nothing was created for a run that could not start


@pytest.fixture
def finished(tiny, tmp_path) -> Path:
    exp = replace(tiny, output=replace(tiny.output, keep_checkpoints=5))
    run, _ = launch.start(exp, tmp_path / "run")
    return run.path


@pytest.mark.parametrize("manifest", ['[1, 2, 3]', '{"files": "nope"}', '"text"', '{}', 'null'])
def test_a_manifest_of_the_wrong_shape_falls_back_to_an_older_checkpoint(finished, manifest):
    newest = finished / "checkpoints" / "gen-000002"
    (newest / "MANIFEST.json").write_text(manifest)
    loaded = RunDir(finished).load_checkpoint()
    assert loaded.path.name == "gen-000001" and "gen-000002" in loaded.skipped[0]


def test_state_of_the_wrong_shape_is_detected(finished):
    from neuroevo_sparse.store import checkpoint

    newest = finished / "checkpoints" / "gen-000002"
    (newest / "state.json").write_text(json.dumps({"format": 1, "generation": "two"}))
    manifest = json.loads((newest / "MANIFEST.json").read_text())
    manifest["files"]["state.json"] = checkpoint._sha256(newest / "state.json")  # checksum matches
    (newest / "MANIFEST.json").write_text(json.dumps(manifest))
    assert RunDir(finished).load_checkpoint().path.name == "gen-000001"


def test_no_valid_checkpoint_is_one_clear_line(finished):
    for ckpt in (finished / "checkpoints").glob("gen-*"):
        (ckpt / "state.json").write_bytes(b"damaged")
    p = cli("resume", str(finished), "--generations", "3")
    assert p.returncode == 2 and "no valid checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_checkpoint_state_is_strict_json(tiny, tmp_path, monkeypatch):
    """A failed individual's NaN loss is stored as null: state.json is standard JSON."""
    monkeypatch.setattr("neuroevo_sparse.evaluators.local.LocalEvaluator", PoisonOne)
    run, _ = launch.start(replace(tiny, output=replace(tiny.output, keep_checkpoints=5)), tmp_path / "run")
    states = list((run.path / "checkpoints").glob("gen-*/state.json"))
    assert states and "diverged" in states[0].read_text()
    for state in states:
        json.loads(state.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {state}"))


def test_resume_cannot_shrink_a_run_and_leaves_its_config(finished):
    before = (finished / "config.toml").read_text()
    p = cli("resume", str(finished), "--generations", "1")
    assert p.returncode == 2 and "has already done 2 generation(s)" in p.stderr
    assert (finished / "config.toml").read_text() == before
    assert cli("inspect", str(finished), "--top", "-3").returncode == 2


def test_a_run_where_every_individual_fails_exits_non_zero(tiny_toml, tmp_path):
    p = cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set", "training.lr=1e30",
            "--set", 'training.optimizer="sgd"')
    assert p.returncode == 4, p.stderr
    assert "every individual of generation 0 failed" in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------------ state in untested corners

def test_no_mutation_and_no_crossover_gives_new_individuals(tiny, tmp_path):
    exp = replace(tiny, evolution=replace(tiny.evolution, mutations=[], crossover="neuron", crossover_prob=0.3,
                                          generations=3))
    run, state = launch.start(exp, tmp_path / "run")
    h = pd.read_parquet(run.path / "history")
    born = h[h.evaluated & (h.generation > 0)]
    assert born.individual_id.is_unique and (born.born == born.generation).all()
    assert len({g.id for g in state.population}) == len(state.population)
    assert {"clone"} <= set(born.operator)


def test_layer_crossover_with_masked_biases_keeps_weights_inside_masks(tiny, tmp_path):
    from neuroevo_sparse.evolution import operators
    from neuroevo_sparse.evaluators.local import LocalEvaluator
    from neuroevo_sparse.evolution.loop import Evolution
    from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
    from neuroevo_sparse.train.paths import spec_for

    exp = replace(tiny, model=replace(tiny.model, mask_biases=True))
    splits = data.load(exp.data, 0)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    evo = Evolution(exp, arch, LocalEvaluator(spec_for(exp, arch), splits), RunDir(tmp_path))
    rng = np.random.default_rng(0)
    var = operators.Variation(evo.info, Init(), "random")
    counts = target_counts(evo.info, evo.maskable, 0.3, "uniform")
    a, b = (random_genome(i, evo.template, evo.info, counts, Init(), rng) for i in range(2))
    for _ in range(30):
        for child in operators.cx_layer(var, a, b, (2, 3), 1, rng):
            for name, m in child.masks.items():
                assert not child.weights[name][~m].any(), name


def test_failed_individuals_get_the_worst_value_in_each_direction(tiny):
    from neuroevo_sparse.evolution.fitness import Objectives
    from neuroevo_sparse.topology.genome import Genome
    from neuroevo_sparse.problem.models import LayerInfo

    info = {"w": LayerInfo((4, 5), 5, 4, 1)}
    g = Genome(0, {"w": np.ones((4, 5), bool)}, {"w": np.ones((4, 5), np.float32), "b": np.zeros(4, np.float32)},
               metrics={"status": "failed"})
    low = Objectives(config.FitnessConfig(objectives=["val_accuracy", "density"], weights=[1.0, -0.1]), info)
    high = Objectives(config.FitnessConfig(objectives=["val_accuracy", "density"], weights=[1.0, 0.1]), info)
    assert low.measure(g) == {"val_accuracy": 0.0, "density": 1.0}
    assert high.measure(g) == {"val_accuracy": 0.0, "density": 0.0}


def test_retrained_survivors_resume_exactly(tiny, tmp_path):
    exp = replace(tiny, evolution=replace(tiny.evolution, retrain_survivors=True, generations=4))
    whole, _ = launch.start(exp, tmp_path / "whole")
    part, _ = launch.start(replace(exp, evolution=replace(exp.evolution, generations=2)), tmp_path / "part")
    launch.resume(part.path, generations=4)
    same_history(whole.path, part.path)


def test_baldwinian_export_holds_the_trained_network(tiny, tmp_path):
    from neuroevo_sparse.problem import models
    from neuroevo_sparse.report.export import export
    from neuroevo_sparse.train.core import evaluate

    exp = replace(tiny, evolution=replace(tiny.evolution, inheritance="baldwinian"))
    run, _ = launch.start(exp, tmp_path / "run")
    saved = torch.load(export(run.path), weights_only=True)
    splits = data.load(exp.data, exp.experiment.seed)
    model = models.build(exp.model, splits.input_shape, splits.num_classes)
    model.load_state_dict(saved["state_dict"])
    _, acc = evaluate(model, torch.from_numpy(splits.val_x), torch.from_numpy(splits.val_y))
    assert acc == pytest.approx(saved["metrics"]["val_accuracy"], abs=1e-9)


@pytest.mark.parametrize("damage, expected", [
    (lambda h: (h / "gen-000001.parquet").unlink(), "missing part(s) for generation(s) 1"),
    (lambda h: (h / "gen-000001.parquet").write_bytes(b"PAR1 damaged"), "unreadable part(s): gen-000001.parquet"),
])
def test_a_damaged_or_deleted_history_part_is_reported(finished, damage, expected):
    damage(finished / "history")
    p = cli("inspect", str(finished))
    assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr


def test_resume_says_which_history_parts_are_missing(finished):
    (finished / "history" / "gen-000001.parquet").unlink()
    p = cli("resume", str(finished), "--generations", "3")
    assert p.returncode == 0 and "history parts of generation(s) 1 are missing" in p.stderr


# ------------------------------------------------------------------ clusters

@pytest.mark.ray
def test_a_job_no_node_can_hold_fails_fast(tiny, tmp_path):
    import ray

    exp = replace(tiny, resources=replace(tiny.resources, backend="ray", num_cpus=1, cpus_per_job=2.0))
    with pytest.raises(ConfigError, match="cpus_per_job: 2 CPUs per job, but the largest node .* has 1"):
        launch.start(exp, tmp_path / "run")
    assert not ray.is_initialized()  # the Ray it started is stopped again


def test_an_unreachable_cluster_fails_in_seconds(tiny_toml, tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    p = cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set", 'resources.backend="ray"',
            "--address", f"127.0.0.1:{port}")
    assert p.returncode == 3 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr and time.monotonic() - start < 60


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` for the block (needs root and permission to mount: the test
    is skipped elsewhere), unmounted however the block ends."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 120 kB disk: the tiny run of six generations needs about twice that."""
    with tmpfs(tmp_path / "small", "size=120k") as mount:
        yield mount


def test_a_full_disk_stops_the_run_and_it_resumes_once_there_is_room(tiny_toml, tmp_path, small_disk):
    args = ["--set", "evolution.generations=6", "--set", "output.keep_checkpoints=10"]
    p = cli("run", str(tiny_toml), "--run-dir", str(small_disk / "run"), *args)
    assert p.returncode == 1 and "No space left on device" in p.stderr, p.stderr
    assert f"neuroevo resume {small_disk / 'run'}" in p.stderr and "Traceback" not in p.stderr
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    assert cli("resume", str(small_disk / "run")).returncode == 0
    assert cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "ref"), *args).returncode == 0
    same_history(tmp_path / "ref", small_disk / "run")


@pytest.mark.ray
def test_a_cluster_that_needs_a_token_says_so(tiny_toml, tmp_path):
    """`ray start --head` turns token authentication on; a driver without the token is told
    what to set, in seconds, instead of Ray's minute of retries and a bare ConnectionError."""
    import os
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(neuroevo_cmd()[0]).with_name("ray"))
    head_env = {**os.environ, "HOME": str(tmp_path / "head"), "RAY_AUTH_MODE": "token"}
    subprocess.run([ray, "get-auth-token", "--generate"], capture_output=True, env=head_env, timeout=60)
    started = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                             capture_output=True, text=True, env=head_env, timeout=120)
    try:
        if started.returncode != 0:
            pytest.skip(f"ray start failed here: {started.stderr[-300:]}")
        start = time.monotonic()
        p = subprocess.run(neuroevo_cmd() + ["run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set",
                                             'resources.backend="ray"', "--address", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HOME": str(tmp_path / "driver"), "RAY_AUTH_MODE": "disabled"})
        assert p.returncode == 3, p.stderr[-2000:]
        assert "uses token authentication" in p.stderr and "RAY_AUTH_MODE=token" in p.stderr
        assert "Traceback" not in p.stderr and time.monotonic() - start < 60
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=head_env, timeout=120)


@pytest.mark.ray
def test_a_hung_task_is_cancelled_not_waited_for(tiny_toml, tmp_path):
    """A task that stops answering (here: made to sleep) is cancelled once no job could still
    be working, and its individuals fail; with all of a generation hung the run stops (exit 4)
    with generation 0 checkpointed."""
    import os
    import time

    start = time.monotonic()
    p = subprocess.run(neuroevo_cmd() + ["run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set",
                                         'resources.backend="ray"', "--set", "resources.num_cpus=2",
                                         "--set", "resources.job_timeout_s=10"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NEUROEVO_FAULT": "hang:job@1"})
    assert p.returncode == 4, p.stderr[-2000:]
    # The hung task would sleep 10^6 s; the bound leaves room for a loaded machine's Ray start-up.
    assert "the task hung and was cancelled" in p.stderr and time.monotonic() - start < 280
    assert RunDir(tmp_path / "run").load_checkpoint().path.name == "gen-000000"


def test_a_read_only_location_is_one_line_and_writes_nothing(tiny_toml, tmp_path):
    """A run directory on a read-only file system (a tmpfs mounted read-only; root ignores
    permission bits): refused with the error and the path, no traceback."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        p = cli("run", str(tiny_toml), "--run-dir", str(ro / "run"))
        assert p.returncode == 1 and "Read-only file system" in p.stderr and str(ro / "run") in p.stderr
        assert "Traceback" not in p.stderr and not any(ro.iterdir())


def test_a_broken_cifar_batch_is_named(tmp_path):
    import pickle

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}, f)
    cfg = config.DataConfig(dataset="cifar10", path=str(root))
    assert data.load(cfg, 0).input_shape == (3, 32, 32)
    (root / "data_batch_3").write_bytes((root / "data_batch_3").read_bytes()[:500])
    with pytest.raises(data.DatasetError, match="'cifar10' could not be read .* damaged"):
        data.load(cfg, 0)
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"labels": [1, 2]}, f)  # a pickle of the wrong shape
    with pytest.raises(data.DatasetError, match="'cifar10' could not be read"):
        data.load(cfg, 0)


@pytest.mark.ray
def test_ray_out_of_memory_fails_the_individuals_not_the_driver(tiny_toml, tmp_path):
    """Ray's memory monitor, told that any use is too much, kills every training task with a
    real OutOfMemoryError: each becomes a failed individual (here all of them: exit 4)."""
    import os

    env = {**os.environ, "RAY_memory_usage_threshold": "0.01", "RAY_task_oom_retries": "0",
           "RAY_memory_monitor_refresh_ms": "50"}
    p = subprocess.run(neuroevo_cmd() + ["run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set",
                                         'resources.backend="ray"'], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 4, p.stderr[-2000:]
    assert "failed: OutOfMemoryError" in p.stderr and "Traceback" not in p.stderr


def test_no_temporary_file_outlives_a_run_or_a_resume(finished, tmp_path):
    import os

    assert not [p for p in finished.rglob("*") if ".tmp" in p.name]
    left = [finished / "best" / ".model.pt.tmp-99999", finished / ".config.toml.tmp-99999",
            finished / "history" / ".gen-000001.parquet.tmp-99999"]
    for p in left:
        p.write_bytes(b"half")
    (finished / "checkpoints" / ".tmp-gen-000003-99999").mkdir()
    private_tmp = tmp_path / "tmp"  # where the supervisor's report file goes (TMPDIR)
    private_tmp.mkdir()
    p = subprocess.run(neuroevo_cmd() + ["resume", str(finished), "--generations", "3"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "TMPDIR": str(private_tmp)})
    assert p.returncode == 0, p.stderr
    assert not [p for p in finished.rglob("*") if ".tmp" in p.name]
    assert not any(private_tmp.iterdir())


def test_results_must_answer_their_jobs(tiny, tmp_path, monkeypatch):
    from neuroevo_sparse.evaluators.local import LocalEvaluator

    class Shuffled(LocalEvaluator):
        def evaluate(self, jobs, on_result=None):
            return list(reversed(super().evaluate(jobs, on_result)))

    monkeypatch.setattr("neuroevo_sparse.evaluators.local.LocalEvaluator", Shuffled)
    with pytest.raises(RuntimeError, match="returned results for individuals"):
        launch.start(tiny, tmp_path / "run")


def test_a_port_where_something_else_listens_fails_in_seconds(tiny_toml, tmp_path):
    """Not Ray at that address: Ray alone would wait minutes, deaf to signals."""
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        start = time.monotonic()
        p = cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "run"), "--set", 'resources.backend="ray"',
                "--address", f"127.0.0.1:{port}")
    assert p.returncode == 3 and "no Ray cluster answered within" in p.stderr, p.stderr[-1000:]
    assert "Traceback" not in p.stderr and time.monotonic() - start < 90


def test_a_run_of_another_minor_version_is_not_resumed(finished):
    from neuroevo_sparse.store import checkpoint

    for ckpt in (finished / "checkpoints").glob("gen-*"):
        state = json.loads((ckpt / "state.json").read_text())
        state["versions"]["neuroevo_sparse"] = "0.1.0"
        (ckpt / "state.json").write_text(json.dumps(state))
        manifest = json.loads((ckpt / "MANIFEST.json").read_text())
        manifest["files"]["state.json"] = checkpoint._sha256(ckpt / "state.json")
        (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    p = cli("resume", str(finished), "--generations", "3")
    assert p.returncode == 2 and "written by neuroevo_sparse 0.1.0" in p.stderr
