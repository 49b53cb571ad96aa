"""training.auto_by = "measurement": the path is measured, cached, stored with the run, and a
resumed run keeps it (calibration.py)."""

import dataclasses
import json
import logging

import pandas as pd
import pytest

from neuroevo_sparse.train import calibration, paths
from neuroevo_sparse import config, launch
from neuroevo_sparse.problem import data
from neuroevo_sparse.train.calibration import Plan, plan_for
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse.train.core import DeviceData
from neuroevo_sparse.train.vectorised import train_many


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROEVO_SPARSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "plans.json"


def problem(exp, generations=1000):
    """A run long enough that the measurement may time every path (BUDGET)."""
    exp = dataclasses.replace(exp, evolution=dataclasses.replace(exp.evolution, generations=generations))
    splits = data.load(exp.data, exp.experiment.seed)
    return exp, Architecture.of(exp, splits.input_shape, splits.num_classes), splits


def test_the_measurement_overrules_rules_that_are_clearly_wrong_and_says_why(tiny, cache, monkeypatch, caplog):
    # A rule that sends this small MLP down the one-by-one path, about 5x slower here than a
    # vectorised group (benchmarks/throughput.py): the measurement must see it.
    monkeypatch.setattr(paths, "VECTORISE_CPU_MAX_PARAMS", 0)
    exp, arch, splits = problem(tiny)
    assert not spec_for(exp, arch).vectorise
    with caplog.at_level(logging.INFO, logger="neuroevo_sparse"):
        plan = plan_for(exp, arch, splits)
    assert plan is not None and plan.vectorise
    rule = calibration.label(False, spec_for(exp, arch).sparse_layers or ())
    assert plan.seconds[plan.label] * (1 + calibration.MARGIN) < plan.seconds[rule]
    assert "faster than the rules' choice" in caplog.text
    assert spec_for(exp, arch, plan).vectorise


def test_a_plan_is_cached_by_machine_and_problem_and_a_damaged_cache_is_measured_again(tiny, cache, caplog):
    exp, arch, splits = problem(tiny)
    first = plan_for(exp, arch, splits)
    assert first is not None
    entries = json.loads(cache.read_text())
    assert len(entries) == 1
    # Another value in the cached entry proves the second call read it, not a new measurement.
    key = next(iter(entries))
    entries[key]["seconds"] = {"from the cache": 1.0}
    cache.write_text(json.dumps(entries))
    again = plan_for(exp, arch, splits)
    assert (again.vectorise, again.sparse_layers, again.seconds) == (first.vectorise, first.sparse_layers,
                                                                       {"from the cache": 1.0})
    # Another batch size is another problem: measured, and cached beside the first.
    other = dataclasses.replace(exp, training=dataclasses.replace(exp.training, batch_size=16))
    assert plan_for(other, arch, splits) is not None
    assert len(json.loads(cache.read_text())) == 2
    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="neuroevo_sparse"):
        assert plan_for(exp, arch, splits) is not None
    assert "ignoring the training-plan cache" in caplog.text
    assert len(json.loads(cache.read_text())) == 1


def test_the_rules_decide_where_asked_on_gpus_and_where_there_is_nothing_to_choose(tiny, cache):
    exp, arch, splits = problem(tiny)
    def with_(**training):
        return dataclasses.replace(exp, training=dataclasses.replace(exp.training, **training))
    assert plan_for(with_(auto_by="rules"), arch, splits) is None
    gpu = dataclasses.replace(exp, resources=dataclasses.replace(exp.resources, gpus_per_job=1.0))
    assert plan_for(gpu, arch, splits) is None
    assert plan_for(with_(vectorise="on", sparse_kernels="off"), arch, splits) is None
    assert not cache.exists()


def uniform(exp, density=0.1):
    return dataclasses.replace(exp, sparsity=dataclasses.replace(exp.sparsity, density=density, init="uniform"))


def test_the_candidates_turn_each_large_eligible_layer_and_put_the_rules_first(tiny, cache):
    exp = uniform(tiny)
    exp, arch, splits = problem(exp)
    rules = spec_for(exp, arch)
    job = calibration._jobs(exp, arch)[0]
    got = calibration._candidates(exp, arch, rules, job)
    layers = sorted(n for n in arch.maskable if n.endswith("weight"))
    assert got[0] == (True, tuple(layers))          # the rules: vectorised, every layer sparse (native)
    assert len(set(got)) == len(got)
    assert {(True, tuple(n for n in layers if n != flip)) for flip in layers} <= set(got)
    assert (False, ()) in got                        # one by one, torch's CSR only for >= 100k weights


def test_a_plan_chooses_the_sparse_layers_of_a_vectorised_group(tiny):
    exp = uniform(tiny)
    exp, arch, splits = problem(exp)
    group = calibration._jobs(exp, arch)[:3]
    d = DeviceData(splits)
    for chosen in [(), ("fc1.weight",), tuple(n for n in arch.maskable)]:
        spec = spec_for(exp, arch, Plan(True, chosen))
        results = train_many(group, spec, d)
        assert [r.extra["sparse_layers"] for r in results] == [float(len(chosen))] * 3


def test_a_run_stores_its_plan_and_resume_uses_it_whatever_the_cache_says(tiny_toml, tmp_path, cache,
                                                                           monkeypatch, caplog):
    exp = config.load(tiny_toml, [f'output.root="{tmp_path}"', "evolution.generations=1"])
    run, _ = launch.start(exp)
    stored = json.loads(run.plan_path.read_text())
    assert Plan.from_json(stored, "plan.json").label in json.dumps(stored["seconds"])
    cache.write_text("{}")                     # a later measurement might choose otherwise
    def measuring(*args):
        raise AssertionError("a resumed run measured its path again")
    monkeypatch.setattr(launch, "plan_for", measuring)
    with caplog.at_level(logging.INFO, logger="neuroevo_sparse"):
        launch.resume(run.path, generations=2)
    assert "(as the run started:" in caplog.text
    run.plan_path.write_text('{"vectorise": "yes"}')
    with pytest.raises(ConfigError, match="not a training plan") as bad:
        launch.resume(run.path, generations=3)
    assert str(run.plan_path) in str(bad.value)
    assert run.has_checkpoint() and len(run.read_history().generation.unique()) == 3


def test_no_path_is_timed_past_the_budget_of_the_run_s_predicted_time(tiny, cache, monkeypatch, caplog):
    exp, arch, splits = problem(uniform(tiny), generations=2)
    rules = spec_for(exp, arch)
    candidates = calibration._candidates(exp, arch, rules, calibration._jobs(exp, arch)[0])
    assert len(candidates) > 2
    monkeypatch.setattr(calibration, "BUDGET", 0.0)   # nothing is worth more than the rules' own timing
    with caplog.at_level(logging.INFO, logger="neuroevo_sparse"):
        plan = plan_for(exp, arch, splits)
    assert (plan.vectorise, plan.sparse_layers) == candidates[0]
    assert list(plan.seconds) == [calibration.label(*candidates[0])]
    assert f"timed 1 of the {len(candidates)}: one more would bring the measuring over 0%" in caplog.text
    assert plan.limited_to == exp.evaluations
    # The same experiment finds it cached; a longer one is another experiment, measured for
    # itself, and the first keeps its plan (issue 38: short, long, short again, the same path).
    assert plan_for(exp, arch, splits).seconds == plan.seconds
    monkeypatch.setattr(calibration, "BUDGET", 0.05)
    # A longer run of the same experiment takes the measured path: it is the experiment's, so a
    # run extended by resume --generations and a run configured that long agree.
    long = dataclasses.replace(exp, evolution=dataclasses.replace(exp.evolution, generations=10 ** 4))
    assert plan_for(long, arch, splits).seconds == plan.seconds
    assert plan_for(exp, arch, splits).seconds == plan.seconds


def test_short_long_then_short_again_take_the_same_path_and_give_the_same_history(tiny, tmp_path, cache,
                                                                                monkeypatch):
    """Issue 38: a longer run measured again and replaced the cached plan of a short one, so
    rerunning the short config on the same machine took another path and gave other bits. A
    measurement that answers differently each time (as timings do) shows it."""
    from conftest import comparable_history

    answers = iter([Plan(False, ()), Plan(True, ()), Plan(False, ("layers.0.weight",))])

    def measure(exp, rules, candidates, jobs, splits):
        plan = next(answers)
        return dataclasses.replace(plan, limited_to=exp.evaluations)  # as BUDGET leaves a short run's

    monkeypatch.setattr(calibration, "_measure", measure)
    short = dataclasses.replace(tiny, training=dataclasses.replace(tiny.training, vectorise="auto",
                                                                   auto_by="measurement"))
    longer = dataclasses.replace(short, evolution=dataclasses.replace(short.evolution, generations=6))
    first, _ = launch.start(short, tmp_path / "short-1")
    second, _ = launch.start(short, tmp_path / "short-2")
    launch.start(longer, tmp_path / "long")
    third, _ = launch.start(short, tmp_path / "short-3")
    assert first.read_plan() == second.read_plan() == third.read_plan()
    for other in (second, third):
        pd.testing.assert_frame_equal(comparable_history(first.path), comparable_history(other.path),
                                      check_exact=True)
