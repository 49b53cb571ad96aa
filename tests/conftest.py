"""Shared fixtures: a tiny real experiment (synthetic data, small MLP) that trains in seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Every Ray process of the tests (clusters, drivers, workers) stays on 127.0.0.1. On Linux
# Ray otherwise rewrites 127.0.0.1 to the machine's interface address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import secrets
import shutil
import tempfile

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ray_nodes  # noqa: E402  (benchmarks/ray_nodes.py: finds and ends one cluster's processes)

# Every Ray the tests start (clusters, the local Ray of a `neuroevo run`) under a temp directory
# and a mark of this session's own (short: Ray's socket paths may not exceed 107 bytes), so that
# `stop_session_rays` ends exactly those, never a Ray of the user's on the same machine, as
# `ray stop` would.
SESSION_RAY_TMP = tempfile.mkdtemp(prefix="nt", dir="/tmp")
SESSION_MARK = secrets.token_hex(8)
os.environ["RAY_TMPDIR"] = SESSION_RAY_TMP
os.environ[ray_nodes.MARK] = SESSION_MARK


def stop_session_rays() -> None:
    """End every Ray process this test session started that is still running (Ray's own
    processes only: every child of the session carries the mark)."""
    ray_nodes.stop(SESSION_MARK, SESSION_RAY_TMP, ray_only=True)


@pytest.fixture(autouse=True, scope="session")
def _session_rays():
    """Whatever Ray a test left running, passed or failed, ends with the session; a Ray this
    process still holds is shut down first, so that its exit handler finds nothing to wait on."""
    yield
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    stop_session_rays()
    shutil.rmtree(SESSION_RAY_TMP, ignore_errors=True)

from neuroevo_sparse import config

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[experiment]
name = "tiny"
seed = 7

[data]
dataset = "synthetic"
synthetic_samples = 400

[model]
hidden = [32, 16]

[sparsity]
density = 0.3

[evolution]
population = 4
generations = 2
mutations = ["set", "rewire"]

[training]
steps = 20
batch_size = 32
lr = 0.01

[resources]
backend = "local"

[output]
progress = "none"
"""


@pytest.fixture(autouse=True, scope="session")
def _plan_cache(tmp_path_factory) -> None:
    """The measured training paths (calibration.py) of the whole session in one cache of its
    own: not the user's, and the same for every test, so that runs compared bit for bit take
    the same path; subprocesses inherit it."""
    os.environ.setdefault("NEUROEVO_SPARSE_CACHE", str(tmp_path_factory.mktemp("plan-cache")))


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def tiny(tiny_toml: Path) -> config.Experiment:
    return config.load(tiny_toml)


def neuroevo_cmd() -> list[str]:
    """The installed console script's entry point, run with this interpreter."""
    return [sys.executable, "-m", "neuroevo_sparse.cli"]


def comparable_history(run_dir: Path):
    """A run's history without the columns that differ between identical runs (timing, placement)."""
    import pandas as pd

    from neuroevo_sparse.store.history import NONDETERMINISTIC

    return pd.read_parquet(Path(run_dir) / "history").drop(columns=["run_id", *NONDETERMINISTIC])


def histories_over_layouts(base: config.Experiment, tmp_path: Path, layouts: list[tuple[int, int | str]]) -> list:
    """The comparable histories of `base` run locally on each (threads, training.vectorise_group)
    of `layouts`: what results that must not depend on the workers are compared on."""
    from dataclasses import replace

    from neuroevo_sparse import launch

    histories = []
    for cpus, size in layouts:
        exp = replace(base, training=replace(base.training, vectorise_group=size),
                      resources=replace(base.resources, num_cpus=cpus))
        run, _ = launch.start(exp, tmp_path / f"cpus{cpus}-{size}")
        histories.append(comparable_history(run.path))
    return histories
