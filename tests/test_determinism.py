"""Same config, same seed, same bits: a stopped and resumed run is the run that never stopped,
and what a run offers can be exported (issue 38). Runs are compared exactly: every history
column, and the final checkpoint's state and the raw bytes of its arrays."""

from __future__ import annotations

from dataclasses import replace
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import comparable_history
from neuroevo_sparse import api, faults, launch
from neuroevo_sparse.config import Experiment
from neuroevo_sparse.store import checkpoint
from neuroevo_sparse.store.history import NONDETERMINISTIC


def stopped_and_resumed(exp: Experiment, path: Path, stop_in: int, overrides: list[str] = ()) -> Path:
    """`exp` run in `path` with a stop requested while generation `stop_in` trains (after its
    first result, as Ctrl-C or SIGTERM arrive), so that the run ends with that generation,
    then resumed to its end (with `overrides`)."""
    requested = []
    point = faults.point

    def stop_here(name: str, generation: int) -> None:
        if (name, generation) == ("mid-generation", stop_in):
            requested.append(True)
        point(name, generation)

    faults.point = stop_here
    try:
        _, state = launch.start(exp, path, should_stop=lambda: bool(requested))
    finally:
        faults.point = point
    assert state.generation == stop_in, "the stop did not arrive where it was asked for"
    launch.resume(path, list(overrides))
    return path


def final_checkpoint(path: Path) -> tuple[str, dict, dict[str, np.ndarray]]:
    loaded = checkpoint.load_latest(Path(path) / "checkpoints")
    state = {k: v for k, v in loaded.state.items() if k != "versions"}
    for g in state["genomes"] + state.get("archive_copies", []) + state.get("front_copies", []):
        g["metrics"] = _placement_free(g["metrics"])
    return loaded.path.name, state, loaded.arrays


def _placement_free(metrics: dict) -> dict:
    """An individual's checkpointed metrics without what records where it ran (the worker, the
    seconds, the size of the group it shared)."""
    out = {k: v for k, v in metrics.items() if k not in NONDETERMINISTIC}
    if isinstance(out.get("extra"), dict):
        out["extra"] = {k: v for k, v in out["extra"].items() if k != "vectorised"}
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Every history column exactly, and the final checkpoint: its state and its arrays' bytes."""
    pd.testing.assert_frame_equal(comparable_history(a), comparable_history(b), check_exact=True)
    name_a, state_a, arrays_a = final_checkpoint(a)
    name_b, state_b, arrays_b = final_checkpoint(b)
    assert name_a == name_b
    assert state_a == state_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype and arrays_a[k].tobytes() == arrays_b[k].tobytes(), k


def test_a_stop_does_not_score_the_test_split_early_under_final(tiny, tmp_path):
    """Issue 38, 3: output.test_accuracy = "final" scores the configured last generation; a
    stop request used to score the generation it stopped in, and the scores reached later
    rows after resume."""
    exp = replace(tiny, evolution=replace(tiny.evolution, generations=4),
                  output=replace(tiny.output, test_accuracy="final"))
    whole, _ = launch.start(exp, tmp_path / "whole")
    assert_same_run(whole.path, stopped_and_resumed(exp, tmp_path / "stopped", 2))


def test_the_hall_of_fame_keeps_its_order_across_a_resume(tiny, tmp_path):
    """Issue 38, 4: restoring a hall of fame by DEAP's insert reversed its tied members; once
    full, another tied member was evicted than in the run that never stopped."""
    exp = replace(tiny, experiment=replace(tiny.experiment, seed=102),
                  evolution=replace(tiny.evolution, population=4, generations=12))
    whole, _ = launch.start(exp, tmp_path / "whole")
    assert_same_run(whole.path, stopped_and_resumed(exp, tmp_path / "stopped", 4))


@pytest.mark.parametrize("mode", ["weighted", "pareto"])
def test_every_point_of_the_front_can_be_exported(tiny, tmp_path, mode):
    """Issue 38, 5: the front is read from the history, over every individual ever evaluated;
    weights used to be kept for the population and the archive only, so `Run.module(max_params=)`
    and `export --id` failed on points the front showed."""
    fitness = (dict(mode="weighted", objectives=["val_accuracy", "density"], weights=[1.0, -0.5])
               if mode == "weighted" else dict(mode="pareto", objectives=["val_accuracy", "flops"], weights=[1.0, -1.0]))
    exp = replace(tiny, sparsity=replace(tiny.sparsity, fixed=False, min_density=0.02, max_density=0.6),
                  evolution=replace(tiny.evolution, population=4, generations=6, mutations=["grow", "prune", "set"]),
                  training=replace(tiny.training, steps=3),  # short: accuracies spread, so the front does
                  fitness=replace(tiny.fitness, **fitness))
    path = stopped_and_resumed(exp, tmp_path / "run", 3)
    run = api.load_run(path)
    front = run.front()
    assert len(front) >= 2
    for row in front.itertuples():
        ind = run.individual(max_params=int(row.active_params))
        assert ind.id == row.individual_id
        assert run.individual(int(row.individual_id)).masks.keys() == ind.masks.keys()
        assert sum(int(m.sum()) for m in ind.masks.values()) <= row.active_params
        run.module(int(row.individual_id))


# ---------------------------------------------------------------------------- the property
# Random configurations, each run four ways that must give the same bits: on 1 worker, on 2
# (and other groups), stopped at a random point and resumed on 2, and on Ray. Every draw comes
# from a seeded generator, so a failure names a configuration that fails again.
CONFIGS = int(os.environ.get("NEUROEVO_PROPERTY_CONFIGS", "200"))


def draw(i: int) -> tuple[dict, int, list[str]]:
    """Configuration i (the TOML's sections), the generation a stop arrives in, and the
    resume-safe overrides of the other layouts."""
    rng = np.random.default_rng([38, i])

    def pick(options):
        return options[int(rng.integers(len(options)))]

    fixed = bool(rng.random() < 0.5)
    operators = ["set", "rewire", "threshold", "strength", "move"] + ([] if fixed else ["grow", "prune"])
    mutations = [str(m) for m in rng.choice(operators, size=int(rng.integers(1, 4)), replace=False)]
    population = int(rng.integers(3, 5))
    generations = int(rng.integers(1, 4))
    halving = rng.random() < 0.3
    pareto = rng.random() < 0.5
    model = pick([{"hidden": [8]}, {"hidden": [10, 6]}, {"factory": "bn_net:build"}])
    config = {
        "experiment": {"name": "property", "seed": int(rng.integers(10_000))},
        "data": {"dataset": "synthetic", "synthetic_samples": 80},
        "model": model,
        "sparsity": {"density": 0.3, "fixed": fixed, "init": pick(["uniform", "erdos_renyi"]),
                     **({} if fixed else {"min_density": 0.08, "max_density": 0.8})},
        "evolution": {"population": population, "offspring": population + int(rng.integers(0, 2)),
                      "generations": generations, "crossover": pick(["none", "neuron", "connection", "layer"]),
                      "crossover_prob": 0.7, "mutations": mutations, "survival": pick(["plus", "comma"]),
                      "elitism": int(rng.integers(0, 2)), "retrain_survivors": bool(rng.random() < 0.2),
                      "inheritance": pick(["lamarckian", "lamarckian", "baldwinian"]),
                      **({"halving_at": 0.5, "halving_keep": pick([0.3, 0.6])} if halving else {})},
        "fitness": ({"mode": "pareto", "objectives": ["val_accuracy", pick(["active_params", "flops"])],
                     "weights": [1.0, -1.0]} if pareto else
                    {"mode": "weighted", "objectives": ["val_accuracy", "density"], "weights": [1.0, -0.2]}),
        "training": {"steps": int(rng.integers(2, 5)), "batch_size": 16, "optimizer": pick(["sgd", "adam"]),
                     "lr": 0.05, "lr_schedule": pick(["constant", "cosine"]),
                     "vectorise": pick(["auto", "on", "off"]), "sparse_kernels": pick(["auto", "on", "off"]),
                     "sparse_min_size": 0, "sparse_below": 0.5, "auto_by": "rules"},
        "resources": {"backend": "local", "num_cpus": 1},
        "output": {"progress": "none", "test_accuracy": pick(["all", "chosen", "final"])},
    }
    group = pick(["auto", 1, 2, 3])
    # A vmapped network's groups round by their size: they are the run's, not the layout's.
    others = ["resources.num_cpus=2"] + ([] if "factory" in model else [f"training.vectorise_group={group}"])
    return config, int(rng.integers(0, generations)), others


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the whole property (its workers import bn_net from tests/), shut down
    however the tests end."""
    ray = pytest.importorskip("ray")
    tests = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    # address="local": a new Ray of this test's own, never a cluster `ray start` left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_same_seed_same_run_on_random_configurations(tmp_path, shared_ray, monkeypatch):
    """1 worker = 2 workers = Ray = stopped at a random point and resumed on 2 workers, exactly:
    every history column and the final checkpoint, on CONFIGS random configurations."""
    # Durability is not what is compared here, and fsync is most of a tiny run's time.
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: None)
    monkeypatch.setattr(checkpoint, "_fsync_dir", lambda path: None)
    for i in range(CONFIGS):
        config, stop_in, others = draw(i)
        exp = api.load_experiment(config)
        where = tmp_path / f"config-{i}"
        try:
            one, _ = launch.start(exp, where / "one")
            two, _ = launch.start(api.load_experiment(config, others), where / "two")
            assert_same_run(one.path, two.path)
            resumed = stopped_and_resumed(exp, where / "resumed", stop_in, others)
            assert_same_run(one.path, resumed)
            ray, _ = launch.start(api.load_experiment(config, ["resources.backend=ray"]), where / "ray")
            assert_same_run(one.path, ray.path)
        except BaseException as e:
            raise AssertionError(f"configuration {i} (stop in generation {stop_in}, others {others}): "
                                 f"{config}") from e
        shutil.rmtree(where)
