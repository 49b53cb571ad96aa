"""Same config, same seed, same bits: a stopped and resumed run is the run that never stopped,
and what a run offers can be exported (issue 38). Runs are compared exactly: every history
column, and the final checkpoint's state and the raw bytes of its arrays."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import comparable_history
from neuroevo_sparse import api, faults, runs
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
        _, state = runs.start(exp, path, should_stop=lambda: bool(requested))
    finally:
        faults.point = point
    assert state.generation == stop_in, "the stop did not arrive where it was asked for"
    runs.resume(path, list(overrides))
    return path


def final_checkpoint(path: Path) -> tuple[str, dict, dict[str, np.ndarray]]:
    loaded = checkpoint.load_latest(Path(path) / "checkpoints")
    state = {k: v for k, v in loaded.state.items() if k != "versions"}
    for g in state["genomes"] + state.get("archive_copies", []):
        g["metrics"] = {k: v for k, v in g["metrics"].items() if k not in NONDETERMINISTIC}
    return loaded.path.name, state, loaded.arrays


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
    whole, _ = runs.start(exp, tmp_path / "whole")
    assert_same_run(whole.path, stopped_and_resumed(exp, tmp_path / "stopped", 2))


def test_the_hall_of_fame_keeps_its_order_across_a_resume(tiny, tmp_path):
    """Issue 38, 4: restoring a hall of fame by DEAP's insert reversed its tied members; once
    full, another tied member was evicted than in the run that never stopped."""
    exp = replace(tiny, experiment=replace(tiny.experiment, seed=102),
                  evolution=replace(tiny.evolution, population=4, generations=12))
    whole, _ = runs.start(exp, tmp_path / "whole")
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
