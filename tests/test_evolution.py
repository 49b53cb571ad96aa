"""Short end-to-end runs of the real loop on synthetic data, local evaluator."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from neuroevo_sparse import launch
from neuroevo_sparse.evaluators.local import LocalEvaluator
from neuroevo_sparse.store.history import NONDETERMINISTIC

METRICS_ONLY = lambda df: df.drop(columns=["run_id", *NONDETERMINISTIC])  # noqa: E731


def test_end_to_end_history(tiny, tmp_path):
    run, state = launch.start(tiny, tmp_path / "run")
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


def test_a_run_leaves_older_objects_out_of_full_collections_only_while_it_runs(tiny, tmp_path):
    """The objects that exist when a run starts are frozen out of the garbage collector while it
    runs (gc.freeze) and given back when it ends; a freeze made by someone else is left as it is."""
    import gc

    seen: list[int] = []
    launch.start(tiny, tmp_path / "a", callbacks=[lambda info: seen.append(gc.get_freeze_count())])
    assert seen and all(n > 0 for n in seen) and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        launch.start(tiny, tmp_path / "b")
        assert gc.get_freeze_count() > 0  # theirs, not unfrozen by the run
    finally:
        gc.unfreeze()


def test_density_stays_at_target(tiny, tmp_path):
    run, _ = launch.start(tiny, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    assert np.allclose(df.density, tiny.sparsity.density, atol=0.005)


def test_same_seed_same_history(tiny, tmp_path):
    a, _ = launch.start(tiny, tmp_path / "a")
    b, _ = launch.start(tiny, tmp_path / "b")
    ha, hb = pd.read_parquet(a.path / "history"), pd.read_parquet(b.path / "history")
    pd.testing.assert_frame_equal(METRICS_ONLY(ha), METRICS_ONLY(hb), check_exact=True)
    other = dataclasses.replace(tiny, experiment=dataclasses.replace(tiny.experiment, seed=8))
    c, _ = launch.start(other, tmp_path / "c")
    assert not METRICS_ONLY(ha).equals(METRICS_ONLY(pd.read_parquet(c.path / "history")))


@pytest.mark.parametrize("mode", ["weighted", "pareto"])
def test_fitness_modes(tiny, tmp_path, mode):
    exp = dataclasses.replace(tiny, fitness=dataclasses.replace(
        tiny.fitness, mode=mode, objectives=["val_accuracy", "active_params"], weights=[1.0, -1e-5]))
    run, state = launch.start(exp, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    assert df.fitness.map(len).eq(1 if mode == "weighted" else 2).all()


class PoisonOne(LocalEvaluator):
    """A real local evaluator, handed one individual with NaN weights each generation."""

    def evaluate(self, jobs, on_result=None):
        if jobs[0].test_only:  # scoring the test split trains nothing: nothing to poison
            return super().evaluate(jobs, on_result)
        name = next(iter(jobs[0].masks))
        jobs[0].weights[name][jobs[0].masks[name]] = np.nan
        return super().evaluate(jobs, on_result)


def test_nan_individual_does_not_stop_the_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("neuroevo_sparse.evaluators.local.LocalEvaluator", PoisonOne)
    run, state = launch.start(tiny, tmp_path / "run")
    df = pd.read_parquet(run.path / "history")
    bad = df[df.status == "diverged"]
    assert len(bad.individual_id.unique()) == tiny.evolution.generations + 1
    assert bad.error.str.contains("loss became nan").all()
    assert (bad.val_accuracy == 0).all()
    assert state.generation == tiny.evolution.generations
    offspring = bad[bad.evaluated & (bad.generation > 0)]
    assert len(offspring) and not offspring.selected.any()  # worst fitness: never survives


@pytest.mark.parametrize("mode", ["weighted", "pareto"])
def test_test_split_scores_only_the_chosen_and_changes_nothing_else(tiny, tmp_path, mode):
    """output.test_accuracy = "chosen" (the default) leaves every column but test_accuracy as
    "all" gives it; each generation's best survivor, its best survivor by validation and the
    archive carry the very test accuracy "all" computes; the others carry none."""
    fitness = dataclasses.replace(tiny.fitness, mode=mode, objectives=["val_accuracy", "active_params"],
                                  weights=[1.0, -1e-5]) if mode == "pareto" else tiny.fitness
    sparsity = dataclasses.replace(tiny.sparsity, fixed=False, min_density=0.2, max_density=0.9) \
        if mode == "pareto" else tiny.sparsity
    runs_by = {}
    for which in ("all", "chosen"):
        exp = dataclasses.replace(tiny, fitness=fitness, sparsity=sparsity,
                                  output=dataclasses.replace(tiny.output, test_accuracy=which))
        run, _ = launch.start(exp, tmp_path / which)
        runs_by[which] = pd.read_parquet(run.path / "history")
    full, chosen = runs_by["all"], runs_by["chosen"]
    assert full.test_accuracy.notna().all()
    pd.testing.assert_frame_equal(METRICS_ONLY(full).drop(columns="test_accuracy"),
                                  METRICS_ONLY(chosen).drop(columns="test_accuracy"), check_exact=True)
    scored = chosen[chosen.test_accuracy.notna()]
    assert 0 < scored.individual_id.nunique() < chosen.individual_id.nunique()
    assert np.allclose(scored.test_accuracy, full.loc[scored.index, "test_accuracy"])
    for g, rows in chosen[chosen.selected].groupby("generation"):
        best_val = rows.sort_values(["val_accuracy", "individual_id"], ascending=[False, True]).iloc[0]
        assert pd.notna(best_val.test_accuracy), f"generation {g}: the best by validation has no test accuracy"
        if mode == "weighted":
            best = rows.loc[rows.fitness.map(lambda f: f[0]).idxmax()]
            assert pd.notna(best.test_accuracy), f"generation {g}: the best survivor has no test accuracy"


def test_final_scores_the_test_split_once_in_the_last_generation(tiny, tmp_path):
    """output.test_accuracy = "final": the last generation's chosen carry the very test
    accuracy "chosen" gives them; no earlier row carries one; nothing else changes."""
    by = {}
    for which in ("chosen", "final"):
        exp = dataclasses.replace(tiny, output=dataclasses.replace(tiny.output, test_accuracy=which))
        run, _ = launch.start(exp, tmp_path / which)
        by[which] = pd.read_parquet(run.path / "history")
    chosen, final = by["chosen"], by["final"]
    last = tiny.evolution.generations
    pd.testing.assert_frame_equal(METRICS_ONLY(chosen).drop(columns="test_accuracy"),
                                  METRICS_ONLY(final).drop(columns="test_accuracy"), check_exact=True)
    assert final[final.generation < last].test_accuracy.isna().all()
    end = final.generation == last
    assert final[end].test_accuracy.notna().any()
    scored = final[end & final.test_accuracy.notna()]
    assert np.array_equal(scored.test_accuracy, chosen.loc[scored.index, "test_accuracy"])
    # Reports read an individual's metrics from the row of its training; "final" put the test
    # accuracy on its last-generation rows, and the report finds it there.
    from neuroevo_sparse.report import tables as report
    assert report.top(final, 1).test_accuracy.iloc[0] == report.top(chosen, 1).test_accuracy.iloc[0]
    assert pd.notna(report.top(final, 1).test_accuracy.iloc[0])
