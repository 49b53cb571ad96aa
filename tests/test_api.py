"""The Python API: the same runs as the CLI, callbacks, resume, networks out of a run."""

import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch

import neuroevo_sparse
from conftest import TINY, comparable_history, neuroevo_cmd
from neuroevo_sparse import GenerationInfo, evolve, load_experiment, load_run, resume
from neuroevo_sparse.config import ConfigError


def test_public_names_and_module_entry_point():
    assert set(neuroevo_sparse.__all__) == {"Experiment", "GenerationInfo", "Run", "evolve", "load_experiment",
                                            "load_run", "resume"}
    with pytest.raises(AttributeError):
        neuroevo_sparse.not_a_name  # noqa: B018
    p = subprocess.run([sys.executable, "-m", "neuroevo_sparse", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("usage: neuroevo") and "inspect" in p.stdout


def test_evolve_gives_the_cli_history_and_calls_back_every_generation(tiny_toml, tmp_path):
    seen: list[GenerationInfo] = []
    run = evolve(load_experiment(tiny_toml), tmp_path / "api", callbacks=[seen.append])
    p = subprocess.run(neuroevo_cmd() + ["run", str(tiny_toml), "--run-dir", str(tmp_path / "cli")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(comparable_history(run.path), comparable_history(tmp_path / "cli"), check_exact=True)

    h = run.history
    assert [i.generation for i in seen] == [0, 1, 2]
    assert all(i.run_dir == run.path and i.hypervolume is None and i.failed == 0 for i in seen)
    assert [i.evaluated for i in seen] == h[h.evaluated].groupby("generation").size().tolist()
    for i in seen:  # the best survivor it names is in the history, with those values
        row = h[(h.generation == i.generation) & (h.individual_id == i.best["id"])].iloc[0]
        assert row.selected and row.val_accuracy == i.best["val_accuracy"]
        assert row.active_params == i.best["active_params"]


def test_module_is_the_network_the_history_scored(tiny_toml, tmp_path):
    """The best network out of a run, evaluated here, has the test accuracy the run recorded."""
    from neuroevo_sparse.problem import data

    exp = load_experiment(tiny_toml)
    run = evolve(exp, tmp_path / "run")
    best = run.individual()
    net = run.module()
    assert isinstance(net, torch.nn.Module) and not net.training
    for name, mask in best.masks.items():
        assert not net.state_dict()[name][~torch.from_numpy(mask)].any()
    splits = data.load(exp.data, exp.experiment.seed)
    with torch.no_grad():
        pred = net(torch.from_numpy(splits.test_x)).argmax(1).numpy()
    assert np.mean(pred == splits.test_y) == pytest.approx(best.meta["metrics"]["test_accuracy"], abs=1e-9)


def test_module_under_a_size_limit_in_a_pareto_run(tiny_toml, tmp_path):
    exp = load_experiment(tiny_toml, ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]',
                                      "fitness.weights=[1.0,-1.0]", "sparsity.fixed=false",
                                      'evolution.mutations=["grow","prune"]'])
    run = evolve(exp, tmp_path / "run")
    front = run.front()
    limit = int(front.active_params.iloc[0])
    chosen = run.individual(max_params=limit)
    assert chosen.id == front.individual_id.iloc[0]
    net = run.module(max_params=limit)
    masked = sum(int(m.sum()) for m in chosen.masks.values())
    unmasked = sum(v.numel() for k, v in net.state_dict().items() if k not in chosen.masks)
    assert masked + unmasked == limit
    assert run.generations().hypervolume.is_monotonic_increasing


def test_resume_through_the_api_equals_the_run_that_never_stopped(tiny_toml, tmp_path):
    whole = evolve(load_experiment(tiny_toml), tmp_path / "whole")
    part = evolve(load_experiment(tiny_toml, ["evolution.generations=1"]), tmp_path / "part")
    seen = []
    resumed = resume(part.path, generations=2, callbacks=[lambda i: seen.append(i.generation)])
    assert seen == [2] and resumed.path == part.path
    pd.testing.assert_frame_equal(comparable_history(whole.path), comparable_history(part.path), check_exact=True)


def test_experiments_from_dicts_and_clear_errors(tiny_toml, tmp_path):
    raw = tomllib.loads(TINY)
    assert load_experiment(raw) == load_experiment(tiny_toml)
    assert load_experiment(raw, ["evolution.population=6"]).evolution.population == 6
    with pytest.raises(ConfigError, match="evolution.populaton: unknown key"):
        load_experiment({**raw, "evolution": {"populaton": 4}})
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path)
