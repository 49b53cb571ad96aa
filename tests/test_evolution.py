"""Short end-to-end runs of the real loop on synthetic data, local evaluator."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from neuroevo_sparse import runs
from neuroevo_sparse.evaluators.local import LocalEvaluator
from neuroevo_sparse.store.history import NONDETERMINISTIC

METRICS_ONLY = lambda df: df.drop(columns=["run_id", *NONDETERMINISTIC])  # noqa: E731


def test_end_to_end_history(tiny, tmp_path):
    run, state = runs.start(tiny, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    mu, lam, G = tiny.evolution.population, tiny.n_offspring, tiny.evolution.generations
    assert len(df) == mu + G * (mu + lam)
    assert sorted(df.generation.unique()) == list(range(G + 1))
    required = {"generation", "individual_id", "parent_ids", "operator", "seed", "train_loss",
                "val_accuracy", "test_accuracy", "active_params", "density", "fitness", "train_seconds",
                "selected", "evaluated", "flops"}
    assert required <= set(df.columns)
    assert df.groupby("generation").selected.sum().eq(mu).all()
    born = df[df.generation > 0]
    new = born[born.born == born.generation]
    assert len(new) == G * lam and new.evaluated.all()
    assert all(len(p) >= 1 for p in new.parent_ids)
    assert (df.status == "ok").all()
    assert (run.path / "config.toml").is_file() and (run.best / "model.pt").is_file()
    assert state.generation == G


def test_density_stays_at_target(tiny, tmp_path):
    run, _ = runs.start(tiny, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    assert np.allclose(df.density, tiny.sparsity.density, atol=0.005)


def test_same_seed_same_history(tiny, tmp_path):
    a, _ = runs.start(tiny, tmp_path / "a")
    b, _ = runs.start(tiny, tmp_path / "b")
    ha, hb = pd.read_parquet(a.path / "history"), pd.read_parquet(b.path / "history")
    pd.testing.assert_frame_equal(METRICS_ONLY(ha), METRICS_ONLY(hb))
    other = dataclasses.replace(tiny, experiment=dataclasses.replace(tiny.experiment, seed=8))
    c, _ = runs.start(other, tmp_path / "c")
    assert not METRICS_ONLY(ha).equals(METRICS_ONLY(pd.read_parquet(c.path / "history")))


@pytest.mark.parametrize("mode", ["weighted", "pareto"])
def test_fitness_modes(tiny, tmp_path, mode):
    exp = dataclasses.replace(tiny, fitness=dataclasses.replace(
        tiny.fitness, mode=mode, objectives=["val_accuracy", "active_params"], weights=[1.0, -1e-5]))
    run, state = runs.start(exp, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    assert df.fitness.map(len).eq(1 if mode == "weighted" else 2).all()


class PoisonOne(LocalEvaluator):
    """A real local evaluator, handed one individual with NaN weights each generation."""

    def evaluate(self, jobs, on_result=None):
        name = next(iter(jobs[0].masks))
        jobs[0].weights[name][jobs[0].masks[name]] = np.nan
        return super().evaluate(jobs, on_result)


def test_nan_individual_does_not_stop_the_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("neuroevo_sparse.evaluators.local.LocalEvaluator", PoisonOne)
    run, state = runs.start(tiny, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    bad = df[df.status == "diverged"]
    assert len(bad.individual_id.unique()) == tiny.evolution.generations + 1
    assert bad.error.str.contains("loss became nan").all()
    assert (bad.val_accuracy == 0).all()
    assert state.generation == tiny.evolution.generations
    offspring = bad[bad.evaluated & (bad.generation > 0)]
    assert len(offspring) and not offspring.selected.any()  # worst fitness: never survives
