"""A lineage's training travels with its genome (training.lineage_schedule) and the front is
polished at the end (evolution.polish_steps), the initial population pruned from one trained
network (evolution.trunk_steps): steps inherited and combined, the rate read from them, every
step in the history, and a stopped run resumed is the run that never stopped."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from neuroevo_sparse import config, launch
from neuroevo_sparse.evolution import operators
from neuroevo_sparse.report import tables as report
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.topology.genome import Genome, pruned
from neuroevo_sparse.train.jobs import TrainJob
from neuroevo_sparse.store import checkpoint
from neuroevo_sparse.store.history import NONDETERMINISTIC
from neuroevo_sparse.train.core import lineage_lr, lineage_rate

PARETO = ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]', "fitness.weights=[1.0,-1.0]",
          "sparsity.fixed=false", "sparsity.min_density=0.05", "sparsity.max_density=0.9",
          'evolution.mutations=["grow","prune","set"]', "evolution.offspring=4", "evolution.generations=3"]
LINEAGE = ['training.lineage_schedule="cosine"', "training.lineage_horizon=50", "training.lineage_floor=0.1",
           "evolution.polish_steps=7", "evolution.halving_at=0.5", "evolution.trunk_steps=20",
           "evolution.trunk_rungs=2", "evolution.trunk_rung_steps=6"]


def load(tmp_path, sets):
    (tmp_path / "t.toml").write_text(TINY)
    return config.load(tmp_path / "t.toml", PARETO + sets)


def test_the_rate_follows_the_lineage_and_a_polish_ends_at_zero(tmp_path):
    cfg = load(tmp_path, LINEAGE).training
    assert lineage_rate(cfg, 0) == pytest.approx(cfg.lr)
    assert lineage_rate(cfg, 25) == pytest.approx(cfg.lr * (0.1 + 0.9 * 0.5))
    assert lineage_rate(cfg, 50) == lineage_rate(cfg, 500) == pytest.approx(cfg.lr * 0.1)
    job = TrainJob(0, 1, 0, {}, {}, lineage_step=30)
    assert lineage_lr(cfg, job, 20)(5) == pytest.approx(lineage_rate(cfg, 35))
    polish = lineage_lr(cfg, replace(job, polish=True, steps=8), 8)
    assert polish(0) == pytest.approx(lineage_rate(cfg, 30)) and polish(8) == pytest.approx(0.0, abs=1e-12)
    assert lineage_lr(load(tmp_path, []).training, job, 20) is None  # without the key: lr_schedule as it was


def test_lineage_steps_are_inherited_combined_and_stored():
    w = {"a": np.ones((2, 2), np.float32)}
    m = {"a": np.ones((2, 2), bool)}
    a = Genome(1, m, w, lineage_steps=100)
    b = Genome(2, m, w, lineage_steps=41)
    assert operators.clone(a, 3, 1).lineage_steps == 100
    assert operators._child(4, (a, b), 1, "cx", m, w).lineage_steps == 70  # the mean, rounded
    back = Genome.from_arrays(a.meta(), a.to_arrays())
    assert back.lineage_steps == 100
    old = {k: v for k, v in a.meta().items() if k != "lineage_steps"}  # a checkpoint without it
    assert Genome.from_arrays(old, a.to_arrays()).lineage_steps == 0


def test_the_horizon_is_needed_with_the_schedule(tmp_path):
    with pytest.raises(ConfigError, match="training.lineage_horizon"):
        load(tmp_path, ['training.lineage_schedule="cosine"'])
    with pytest.raises(ConfigError, match="evolution.polish_steps"):
        load(tmp_path, ["evolution.polish_steps=-1"])
    with pytest.raises(ConfigError, match="evolution.trunk_steps"):
        load(tmp_path, ["evolution.trunk_steps=-1"])
    with pytest.raises(ConfigError, match="evolution.trunk_rungs: a pruning ladder below the trunk needs"):
        load(tmp_path, ["evolution.trunk_rungs=3"])  # no trunk to prune
    with pytest.raises(ConfigError, match="evolution.trunk_rung_steps"):
        load(tmp_path, ["evolution.trunk_steps=5", "evolution.trunk_rungs=3", "evolution.trunk_rung_steps=0"])


def test_pruning_keeps_the_largest_weights_of_each_layer():
    w = np.array([[0.5, -2.0, 0.0], [0.1, 3.0, -0.2]], dtype=np.float32)
    mask = np.array([[True, True, False], [True, True, True]])
    trunk = Genome(7, {"w": mask}, {"w": w * mask, "b": np.ones(2, np.float32)}, lineage_steps=40)
    child = pruned(trunk, 8, {"w": 2})
    assert child.masks["w"].tolist() == [[False, True, False], [False, True, False]]
    assert child.weights["w"].tolist() == [[0, -2.0, 0], [0, 3.0, 0]]
    assert child.parents == (7,) and child.lineage_steps == 40 and child.weights["b"].tolist() == [1, 1]


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    exp = load(root, LINEAGE)
    run, _ = launch.start(exp, root / "run")
    return exp, run.path


def test_every_step_is_in_the_history_and_lineages_add_up(lineage_run):
    exp, run = lineage_run
    h = report.load(run)
    ev = h[h.evaluated]
    polish = ev[ev.operator == "polish"]
    assert len(polish) > 0 and (polish.generation == exp.evolution.generations).all()
    assert (polish.steps == exp.evolution.polish_steps).all()
    # An individual's lineage steps: its parents' (their mean) plus its own training, so the
    # budget and every lineage read from the parquet alone.
    for _, r in ev.iterrows():
        parents = [h[(h.individual_id == p) & (h.generation <= r.generation) & (h.individual_id != r.individual_id)]
                   .lineage_steps.iloc[0 if r.operator == "polish" else -1] for p in r.parent_ids]
        if r.operator == "polish":  # from the archive's member as it was last trained
            parents = [h[h.individual_id == p].lineage_steps.iloc[-1] for p in r.parent_ids]
        inherited = int(round(np.mean(parents))) if parents else 0
        assert r.lineage_steps == inherited + r.steps, r.to_dict()
    # The front is chosen from what was polished and what was not, by validation.
    front = report.pareto_front(h)
    assert front.test_accuracy.notna().all()
    total = int(ev.steps.sum())
    assert total >= exp.evolution.population * exp.training.steps // 2


def test_the_initial_population_is_pruned_from_the_trunks_ladder(lineage_run):
    exp, run = lineage_run
    ev = exp.evolution
    h = report.load(run)
    g0 = h[h.generation == 0]
    ladder = g0[g0.operator == "trunk"].sort_values("individual_id")
    assert list(ladder.individual_id) == list(range(ev.trunk_rungs + 1))
    assert ladder.evaluated.all() and not ladder.selected.any()
    assert ladder.test_accuracy.notna().all()  # each may be on the front, where every point has one
    trunk = ladder.iloc[0]
    assert trunk.steps == ev.trunk_steps == trunk.lineage_steps
    assert trunk.density == pytest.approx(exp.sparsity.max_density, abs=0.01)
    # Each rung: the one above it pruned to the next density of the log-spaced ladder and
    # trained on, its lineage the sum of the ladder above it.
    lo, hi = exp.sparsity.min_density, exp.sparsity.max_density
    for k in range(1, ev.trunk_rungs + 1):
        rung, above = ladder.iloc[k], ladder.iloc[k - 1]
        assert list(rung.parent_ids) == [above.individual_id] and rung.steps == ev.trunk_rung_steps
        assert rung.lineage_steps == above.lineage_steps + ev.trunk_rung_steps
        assert rung.density == pytest.approx(hi * (lo / hi) ** (k / ev.trunk_rungs), rel=0.1)
    # Every initial individual comes from the smallest network of the ladder at least its size
    # in every layer, or from the trunk when none is (a layer the trunk's allocation left smaller).
    layers = [c for c in h.columns if c.startswith("density.")]
    rest = g0[g0.operator != "trunk"]
    assert len(rest) == ev.population
    for _, r in rest.iterrows():
        fits = ladder[(ladder[layers].values >= r[layers].values.astype(float) - 1e-9).all(axis=1)]
        source = fits.sort_values("active_params").individual_id.iloc[0] if len(fits) else 0
        assert list(r.parent_ids) == [source]
    assert set(rest.parent_ids.map(tuple)) != {(0,)}  # the rungs are used, not only the trunk


def history(run) -> pd.DataFrame:
    df = pd.read_parquet(run / "history").drop(columns=["run_id", *NONDETERMINISTIC])
    return df.sort_values(["generation", "individual_id"]).reset_index(drop=True)


def test_stop_and_resume_gives_the_run_that_never_stopped(lineage_run, tmp_path):
    exp, ref = lineage_run
    stop = {"now": False}

    def at(info):
        stop["now"] = info.generation == 1

    run, _ = launch.start(exp, tmp_path / "run", should_stop=lambda: stop["now"], callbacks=[at])
    assert report.load(run.path).generation.max() == 1
    launch.resume(run.path)
    pd.testing.assert_frame_equal(history(ref), history(run.path))
    a, b = checkpoint.load_latest(ref / "checkpoints"), checkpoint.load_latest(run.path / "checkpoints")
    assert a.path.name == b.path.name
    strip = lambda s: sorted(({k: v for k, v in g.items() if k != "metrics"} for g in s["genomes"]),  # noqa: E731
                             key=lambda g: g["id"])
    assert strip(a.state) == strip(b.state)
    assert any(g["lineage_steps"] > 0 for g in a.state["genomes"])
    assert a.arrays.keys() == b.arrays.keys()
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def test_vectorised_and_one_by_one_agree_under_the_schedule(tmp_path):
    """K individuals at their own rates in one batched pass train as each alone would."""
    from neuroevo_sparse.problem import data, models
    from neuroevo_sparse.train.core import DeviceData, train
    from neuroevo_sparse.train.paths import spec_for
    from neuroevo_sparse.train.vectorised import train_many

    exp = load(tmp_path, LINEAGE[:3] + ["training.vectorise=\"on\""])
    splits = data.load(exp.data, 0)
    arch = models.Architecture.of(exp, splits.input_shape, splits.num_classes)
    spec = replace(spec_for(exp, arch), vectorise=True)
    dd = DeviceData(splits)
    jobs = []
    rng = np.random.default_rng(0)
    for i, steps in enumerate([0, 30, 80]):
        masks = {n: rng.random(arch.template[n].shape) < 0.5 for n in arch.maskable}
        weights = {n: (v * masks[n] if n in masks else v).astype(v.dtype) for n, v in arch.template.items()}
        jobs.append(TrainJob(i, 1, 11 + i, masks, weights, lineage_step=steps))
    many = train_many(jobs, spec, dd)
    for job, r in zip(jobs, many):
        one = train(job, spec, dd)
        assert math.isclose(one.train_loss, r.train_loss, rel_tol=1e-4)
        for n in arch.maskable:
            np.testing.assert_allclose(one.weights[n], r.weights[n], atol=1e-5)
