"""Successive halving (evolution.halving_at): a training stopped part-way and resumed is the
training in one piece, bit for bit, on every path; a generation trains the best on and stops
the others, whatever the number of workers."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import histories_over_layouts
from neuroevo_sparse import config, launch
from neuroevo_sparse.problem import data
from neuroevo_sparse.train import kernels
from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
from neuroevo_sparse.train.jobs import TrainJob
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse.train.core import DeviceData
from neuroevo_sparse.train.worker import train_group
from test_fast_paths import setup


def _in_two_parts(jobs, spec, d, until):
    first = train_group([replace(j, until=until) for j in jobs], spec, d)
    assert all(r.status == "ok" and r.resume is not None for r in first)
    # What crosses to the driver and back to a worker: pickled, as Ray and the checkpoints do.
    resumes = pickle.loads(pickle.dumps([r.resume for r in first]))
    on = [replace(j, weights=r.weights, resume=s) for j, r, s in zip(jobs, first, resumes)]
    return first, train_group(on, spec, d)


PATHS = {
    "per-individual, dense masked": dict(vectorise="off", sparse_kernels="off"),
    "per-individual, truly sparse": dict(vectorise="off", sparse_kernels="on", sparse_min_size=0),
    "vectorised, dense masked": dict(vectorise="on", sparse_kernels="off"),
    "vectorised, sparse on torch": dict(vectorise="on", sparse_kernels="on", sparse_min_size=0, cpu_kernels="torch"),
    "vectorised, sparse on the C kernels": dict(vectorise="on", sparse_kernels="on", sparse_min_size=0,
                                                cpu_kernels="native"),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("optimizer,schedule", [("sgd", "constant"), ("adam", "cosine")])
def test_a_training_resumed_part_way_is_the_training_in_one_piece(tiny, path, optimizer, schedule):
    if PATHS[path].get("cpu_kernels") == "native" and not kernels.available():
        pytest.skip(kernels.status())
    jobs, spec, d = setup(tiny, n=3, optimizer=optimizer, lr_schedule=schedule, lr=0.01, weight_decay=1e-3,
                          **PATHS[path])
    whole = train_group(jobs, spec, d)
    first, resumed = _in_two_parts(jobs, spec, d, until=0.3)
    assert [r.steps for r in first] == [round(0.3 * 30)] * 3
    for a, b in zip(whole, resumed):
        assert (a.status, a.steps, b.resume) == ("ok", 30, None)
        assert (a.train_loss, a.val_loss, a.val_accuracy) == (b.train_loss, b.val_loss, b.val_accuracy)
        for name in a.weights:
            np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)
    # The first part is a real stop: its weights are not the end's.
    assert any(not np.array_equal(first[0].weights[n], whole[0].weights[n]) for n in whole[0].weights)


def test_a_resumed_training_keeps_the_networks_own_randomness(tiny, tmp_path):
    """Dropout draws from torch's generator, seeded per job: the second part goes on with the
    generator where the first left it, not from the seed again."""
    (tmp_path / "halving_dropout_net.py").write_text(
        "import math\n"
        "import torch.nn as nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Dropout(0.3),\n"
        "                         nn.Linear(16, num_classes))\n")
    exp = replace(tiny, model=replace(tiny.model, factory=f"{tmp_path / 'halving_dropout_net.py'}:build"),
                  training=replace(tiny.training, steps=30))
    splits = data.load(exp.data, exp.experiment.seed)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    counts = target_counts(arch.info, arch.maskable, 0.5, "uniform")
    rng = np.random.default_rng(0)
    jobs = [TrainJob(i, 0, 100 + i, g.masks, g.weights)
            for i, g in enumerate(random_genome(i, arch.template, arch.info, counts, Init(), rng) for i in range(2))]
    spec, d = spec_for(exp, arch), DeviceData(splits)
    whole = train_group(jobs, spec, d)
    _, resumed = _in_two_parts(jobs, spec, d, until=0.5)
    for a, b in zip(whole, resumed):
        for name in a.weights:
            np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


def _halving(tiny, **evolution):
    return replace(tiny, evolution=replace(tiny.evolution, population=6, offspring=7, generations=2,
                                           **{"halving_at": 0.25, "halving_keep": 0.5, **evolution}))


def test_halving_trains_the_best_on_and_stops_the_others(tiny, tmp_path):
    exp = _halving(tiny)
    run, _ = launch.start(exp, tmp_path / "run")
    h = pd.read_parquet(run.path / "history")
    trained = h[h.evaluated]
    total, stop = exp.training.steps, round(0.25 * exp.training.steps)
    for g, rows in trained.groupby("generation"):
        n = len(rows)
        assert n == (6 if g == 0 else 7)
        kept = math.ceil(0.5 * n)
        assert sorted(rows.steps) == [stop] * (n - kept) + [total] * kept, g
        # A stopped individual was behind every kept one when it stopped; the kept ones only
        # got better since (their fitness here is the end's), so they still rank above it.
        assert rows[rows.steps == stop].val_accuracy.max() <= rows[rows.steps == total].val_accuracy.max()


def test_the_progress_ends_at_its_total_when_first_parts_fail(tiny, tmp_path, monkeypatch):
    """The total counts every halving generation's second part at its planned size; where first
    parts fail, fewer go on, and the total shrinks by as many."""
    from neuroevo_sparse.evolution import loop as evolution
    from neuroevo_sparse.evaluators import local
    from neuroevo_sparse.train.jobs import TrainResult

    class FailAllButOne(local.LocalEvaluator):
        def evaluate(self, jobs, on_result=None):
            if jobs[0].until >= 1 or jobs[0].test_only:
                return super().evaluate(jobs, on_result)
            failed = [TrainResult(j.individual_id, j.weights, status="failed", error="by the test") for j in jobs[1:]]
            for r in failed:
                on_result(r)
            return super().evaluate(jobs[:1], on_result) + failed

    bars = []

    class Recorded(evolution.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(local, "LocalEvaluator", FailAllButOne)
    monkeypatch.setattr(evolution, "Progress", Recorded)
    exp = _halving(tiny)
    launch.start(replace(exp, resources=replace(exp.resources, backend="local")), tmp_path / "run")
    bar, = bars
    # Generation 0 trains 6, generations 1 and 2 7 each, and 3, 4 and 4 were planned to go on;
    # one goes on in each.
    assert bar.total_jobs == (6 + 1) + 2 * (7 + 1)
    assert bar.jobs_done == bar.total_jobs


def test_halving_does_not_depend_on_the_workers(tiny, tmp_path):
    base = _halving(tiny, halving_keep=0.4)
    base = replace(base, training=replace(base.training, vectorise="on", sparse_kernels="on", sparse_min_size=0))
    histories = histories_over_layouts(base, tmp_path, [(1, "auto"), (3, "auto"), (1, 2)])
    for other in histories[1:]:
        pd.testing.assert_frame_equal(histories[0], other, check_exact=True)


def test_without_halving_nothing_stops(tiny, tmp_path):
    run, _ = launch.start(replace(tiny, evolution=replace(tiny.evolution, population=4)), tmp_path / "run")
    h = pd.read_parquet(run.path / "history")
    assert set(h[h.evaluated].steps) == {tiny.training.steps}


@pytest.mark.parametrize("key,value", [("halving_at", 1.0), ("halving_at", 0.0), ("halving_keep", 0.0),
                                       ("halving_keep", 1.0)])
def test_halving_out_of_range_is_a_config_error(tiny_toml, key, value):
    with pytest.raises(config.ConfigError, match=f"evolution.{key}"):
        config.load(tiny_toml, [f"evolution.{key}={value}"])


def test_halving_is_part_of_the_config_hash(tiny):
    assert replace(tiny, evolution=replace(tiny.evolution, halving_at=0.5)).hash() != tiny.hash()


def test_an_individual_failing_in_the_second_part_is_one_failure_not_the_end_of_the_run(tiny, tmp_path,
                                                                                      monkeypatch):
    """Issue 38, 1: the kept individual diverges in the second part while the others trained
    fine in the first; the run records it as failed and goes on (it used to stop with AllFailed,
    on every resume too)."""
    from neuroevo_sparse.evaluators import local
    from neuroevo_sparse.train.jobs import TrainResult

    class SecondPartsDiverge(local.LocalEvaluator):
        def evaluate(self, jobs, on_result=None):
            if not jobs or jobs[0].resume is None:
                return super().evaluate(jobs, on_result)
            out = [TrainResult(j.individual_id, j.weights, status="diverged", steps=13,
                               error="loss became nan at step 13 of 60") for j in jobs]
            for r in out if on_result else ():
                on_result(r)
            return out

    monkeypatch.setattr(local, "LocalEvaluator", SecondPartsDiverge)
    exp = _halving(tiny, halving_keep=0.1)
    run, state = launch.start(exp, tmp_path / "run")
    assert state.generation == exp.evolution.generations
    h = pd.read_parquet(run.path / "history")
    for g, rows in h[h.evaluated].groupby("generation"):
        assert (rows.status == "diverged").sum() == 1, g          # the one kept on
        assert (rows.status == "ok").sum() == len(rows) - 1, g    # the others, from their first part
