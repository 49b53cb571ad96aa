"""Property tests over the configuration space (hypothesis): random valid experiments on a
small synthetic problem keep the framework's invariants, and random damage to valid
experiment files only ever gives a ConfigError or a valid experiment."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroevo_sparse import config, launch
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.evolution.loop import Evolution

from conftest import ROOT, TINY, comparable_history

EXPERIMENTS = [TINY] + [p.read_text() for p in sorted((ROOT / "experiments").rglob("*.toml"))]


@st.composite
def experiments(draw) -> config.Experiment:
    """A small valid experiment anywhere in the space of evolution and training options."""
    population = draw(st.integers(2, 5))
    survival = draw(st.sampled_from(["plus", "comma"]))
    elitism = draw(st.integers(0, population - 1))
    offspring = draw(st.integers(max(1, population - elitism) if survival == "comma" else 1, 6))
    crossover = draw(st.sampled_from(["neuron", "connection", "layer", "none"]))
    fixed = draw(st.booleans())
    operators = ["set", "rewire", "threshold", "strength", "move"] + ([] if fixed else ["grow", "prune"])
    mutations = draw(st.lists(st.sampled_from(operators), max_size=3, unique=True))
    if crossover == "none" and not mutations:
        mutations = ["set"]
    pareto = draw(st.booleans())
    mask_biases = draw(st.booleans())
    init = draw(st.sampled_from(["uniform", "erdos_renyi"]))
    # A masked bias of 4 entries at 10% would have no connection (an error, tested elsewhere).
    densities = [0.3, 0.7] if mask_biases and init == "uniform" else [0.1, 0.3, 0.7]
    return config.from_dict({
        "experiment": {"name": "prop", "seed": draw(st.integers(0, 2 ** 32))},
        "data": {"dataset": "synthetic", "synthetic_samples": 120},
        "model": {"hidden": [draw(st.integers(4, 12))], "mask_biases": mask_biases},
        "sparsity": {"density": draw(st.sampled_from(densities)), "init": init, "fixed": fixed,
                     "min_density": densities[0], "max_density": 0.9},
        "evolution": {"population": population, "offspring": offspring, "generations": 2,
                      "crossover": crossover, "crossover_prob": draw(st.sampled_from([0.0, 0.5, 1.0])),
                      "mutations": mutations, "mutation_prob": draw(st.sampled_from([0.0, 0.5, 1.0])),
                      "survival": survival, "elitism": elitism,
                      "retrain_survivors": draw(st.booleans()),
                      "inheritance": draw(st.sampled_from(["lamarckian", "baldwinian"]))},
        "training": {"steps": 3, "batch_size": 16, "vectorise": draw(st.sampled_from(["on", "off"])),
                     "vectorise_group": 2, "sparse_kernels": draw(st.sampled_from(["on", "off"])),
                     "init_fan": draw(st.sampled_from(["dense", "sparse"]))},
        "structure": {"new_weights": draw(st.sampled_from(["zero", "random"]))},
        "fitness": ({"mode": "pareto", "objectives": ["val_accuracy", "active_params"], "weights": [1.0, -1.0]}
                    if pareto else {"mode": "weighted"}),
        "resources": {"backend": "local"},
        "output": {"progress": "none", "keep_checkpoints": 10},
    })


class Watch(Evolution):
    """The real loop, checking after every variation what the operators promise."""

    def _vary(self, parents, next_id, g, rng):
        children = super()._vary(parents, next_id, g, rng)
        ids = [c.id for c in children]
        assert len(set(ids)) == len(ids) and not set(ids) & {p.id for p in parents}
        assert not any(c is p for c in children for p in parents)
        for c in children:
            assert c.born == g
            for name, m in c.masks.items():
                assert not c.weights[name][~m].any(), f"weight outside the mask of {name}"
                assert 1 <= m.sum() <= m.size
        return children


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=experiments())
def test_random_configurations_keep_the_invariants(exp, tmp_path_factory, monkeypatch):
    monkeypatch.setattr("neuroevo_sparse.launch.Evolution", Watch)
    root = tmp_path_factory.mktemp("prop")
    whole, state = launch.start(exp, root / "whole")
    h = pd.read_parquet(whole.path / "history")
    assert len(h) == exp.evolution.population + 2 * (exp.evolution.population + exp.n_offspring)
    born = h[h.born == h.generation]
    assert born.drop_duplicates("individual_id").individual_id.is_unique
    for g in state.population:
        for name, m in g.masks.items():
            assert not g.weights[name][~m].any()
    # stopped after generation 1 and resumed == never stopped
    part, _ = launch.start(replace(exp, evolution=replace(exp.evolution, generations=1)), root / "part")
    launch.resume(part.path, generations=2)
    pd.testing.assert_frame_equal(comparable_history(whole.path), comparable_history(part.path), check_exact=True)


# ------------------------------------------------------------------ the loader, fuzzed

@st.composite
def damaged(draw) -> str:
    lines = draw(st.sampled_from(EXPERIMENTS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        op = draw(st.sampled_from(["drop", "dup", "value", "key", "noise", "section"]))
        line = lines[i] if lines else ""
        if op == "drop" and lines:
            lines.pop(i)
        elif op == "dup":
            lines.insert(i, line)
        elif op == "value" and "=" in line:
            key = line.split("=")[0]
            value = draw(st.sampled_from(["nan", "inf", "-1", "0", "1e308", "99999999999999999999", '""', "[]",
                                          "[0]", "{}", "true", '"x"', "{a = 1}", "-0.0", "1.5", "[[1]]"]))
            lines[i] = f"{key}= {value}"
        elif op == "key" and "=" in line:
            lines[i] = draw(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)) \
                + " =" + line.split("=", 1)[1]
        elif op == "noise":
            lines[i] = line + draw(st.text(max_size=6))
        elif op == "section":
            lines.insert(i, draw(st.sampled_from(["[evolution]", "[bogus]", "[training.sub]", "[[data]]", "["])))
    return "\n".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=damaged())
def test_damaged_experiment_files_give_a_config_error_or_an_experiment(text, tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    try:
        exp = config.load(path)
    except ConfigError:
        return
    assert isinstance(exp, config.Experiment)
    assert np.isfinite([v for v in config.flatten(exp.to_dict()).values() if isinstance(v, float)]).all()


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance on this machine for the examples below, stopped however they end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=experiments())
def test_random_configurations_give_the_same_history_on_ray(exp, local_ray, tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    local, _ = launch.start(exp, root / "local")
    on_ray, _ = launch.start(replace(exp, resources=replace(exp.resources, backend="ray")), root / "ray")
    pd.testing.assert_frame_equal(comparable_history(local.path), comparable_history(on_ray.path), check_exact=True)
