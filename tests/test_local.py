"""The local backend: groups on threads of the driver, with the results of one after another."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pandas as pd
import pytest

from conftest import comparable_history
from neuroevo_sparse import config, launch
from neuroevo_sparse.evaluators.local import LocalEvaluator, local_slots


def test_slots_count_cores_over_cores_per_job():
    assert local_slots(4, 1.0) == 4
    assert local_slots(4, 2.0) == 2
    assert local_slots(2, 3.0) == 1  # a job wider than the machine still runs, alone
    assert local_slots(None, 1.0) >= 1


def _threaded(exp: config.Experiment, num_cpus: int, group: int) -> config.Experiment:
    """`exp` with several groups per generation (vectorised groups of `group`, or single jobs)."""
    return replace(exp, resources=replace(exp.resources, num_cpus=num_cpus),
                   evolution=replace(exp.evolution, population=6, offspring=7),
                   training=replace(exp.training, vectorise="on" if group > 1 else "off", vectorise_group=group))


def _jobs(tiny: config.Experiment, n: int):
    """(experiment, splits, spec, n single training jobs) of the tiny experiment."""
    import numpy as np

    from neuroevo_sparse.problem import data
    from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
    from neuroevo_sparse.train.jobs import TrainJob
    from neuroevo_sparse.train.paths import spec_for
    from neuroevo_sparse.problem.models import Architecture

    exp = _threaded(tiny, 3, 1)
    splits = data.load(exp.data, exp.experiment.seed)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    counts = target_counts(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init)
    rng = np.random.default_rng(0)
    jobs = [TrainJob(i, 0, 100 + i, g.masks, g.weights) for i, g in enumerate(
        random_genome(i, arch.template, arch.info, counts, Init.of(exp.training), rng) for i in range(n))]
    return exp, splits, spec_for(exp, arch), jobs


@pytest.mark.parametrize("group", [1, 2])
def test_threads_give_the_history_of_one_group_after_another(tiny, tmp_path, group):
    histories = {}
    for cpus in (1, 3):
        run, _ = launch.start(_threaded(tiny, cpus, group), tmp_path / f"cpus{cpus}")
        histories[cpus] = comparable_history(run.path)
    pd.testing.assert_frame_equal(histories[1], histories[3], check_exact=True)
    assert histories[3].evaluated.sum() == 6 + 2 * 7  # several groups in every generation


def test_results_come_in_job_order_and_callbacks_on_the_calling_thread(tiny, monkeypatch):
    """Every result once, in the order of its job, although groups finish in any order; the
    progress callback never runs on a training thread."""
    from neuroevo_sparse.train import worker

    exp, splits, spec, jobs = _jobs(tiny, 7)

    real = worker.train_group
    slow_first = threading.Event()

    def train_group(group, spec, data):  # the first group finishes last
        if group[0].individual_id == 0:
            slow_first.wait(timeout=30)
        out = real(group, spec, data)
        if group[0].individual_id == 6:
            slow_first.set()
        return out

    seen = []
    evaluator = LocalEvaluator(spec, splits, slots=3)
    evaluator.evaluate(jobs[:2])  # the process's first group trains alone; from here on, all at once
    monkeypatch.setattr("neuroevo_sparse.evaluators.local.train_group", train_group)
    try:
        results = evaluator.evaluate(jobs, lambda r: seen.append((r.individual_id, threading.current_thread())))
    finally:
        evaluator.close()
    assert [r.individual_id for r in results] == list(range(7))
    assert sorted(i for i, _ in seen) == list(range(7)) and seen[-1][0] == 0
    assert {t for _, t in seen} == {threading.current_thread()}
    assert all(r.status == "ok" for r in results)


def test_the_first_group_of_a_process_trains_alone(tiny, monkeypatch):
    """Libraries set up state on first use; two groups doing so at once once trained one of
    them with a different rounding. So no other group starts before the first has finished,
    in the first evaluation only: later ones train every group at once."""
    from neuroevo_sparse.train import worker

    _, splits, spec, jobs = _jobs(tiny, 3)
    real = worker.train_group
    events = []

    def train_group(group, spec, data):
        events.append(("start", group[0].individual_id))
        out = real(group, spec, data)
        events.append(("end", group[0].individual_id))
        return out

    monkeypatch.setattr("neuroevo_sparse.evaluators.local.train_group", train_group)
    evaluator = LocalEvaluator(spec, splits, slots=3)
    try:
        first = evaluator.evaluate(jobs)
        assert events[:2] == [("start", 0), ("end", 0)] and len(events) == 6
        events.clear()
        release = threading.Event()

        def slow(group, spec, data):  # later, the others start while the first still trains
            events.append(("start", group[0].individual_id))
            if group[0].individual_id == 0:
                assert release.wait(timeout=30)
            elif group[0].individual_id == 2:
                release.set()
            return real(group, spec, data)

        monkeypatch.setattr("neuroevo_sparse.evaluators.local.train_group", slow)
        again = evaluator.evaluate(jobs)
    finally:
        evaluator.close()
    assert {("start", 1), ("start", 2)} <= set(events) and release.is_set()
    assert [r.individual_id for r in again] == [0, 1, 2]
    assert all(a.train_loss == b.train_loss for a, b in zip(first, again))


def test_threads_leave_torchs_thread_count_as_they_found_it(tiny, monkeypatch):
    """torch's thread count is partly process-wide. Threads that each set it and put back what
    they found race: here the first group reads the process's 3 and puts it back first, the two
    others read the first's 1 and put that back last, which left the process on one thread (its
    later training computed on another count, and rounded differently)."""
    import torch

    from neuroevo_sparse.train import core as training

    _, splits, spec, jobs = _jobs(tiny, 3)
    first_has_set, first_is_back = threading.Event(), threading.Event()
    all_have_set = threading.Barrier(3, timeout=30)

    def train_group(group, spec, data):
        first = group[0].individual_id == 0
        if not first:
            first_has_set.wait(timeout=30)

        def work():
            if first:
                first_has_set.set()
            all_have_set.wait()
            if not first:
                first_is_back.wait(timeout=30)
            return [training.train(j, spec, data) for j in group]

        try:
            return training.run_jobs(group, spec, data, work)
        finally:
            if first:
                first_is_back.set()

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    evaluator = LocalEvaluator(spec, splits, slots=3)
    evaluator.evaluate(jobs[:1])  # the process's first group trains alone; from here on, all at once
    monkeypatch.setattr("neuroevo_sparse.evaluators.local.train_group", train_group)
    try:
        results = evaluator.evaluate(jobs)
        seen = []
        fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        assert (torch.get_num_threads(), seen) == (3, [3])
        assert [r.status for r in results] == ["ok"] * 3
    finally:
        evaluator.close()
        torch.set_num_threads(before)


def test_a_users_network_trains_one_group_at_a_time(tiny, tmp_path, caplog):
    """Its layers may draw from torch's one global generator (dropout here): threads would
    interleave the draws, so it keeps to one thread, and the log says why."""
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.train.paths import spec_for
    from neuroevo_sparse.problem.models import Architecture

    (tmp_path / "dropout_net.py").write_text(
        "import math\n"
        "import torch.nn as nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Dropout(0.2),\n"
        "                         nn.Linear(16, num_classes))\n")
    exp = replace(tiny, model=replace(tiny.model, factory=f"{tmp_path / 'dropout_net.py'}:build"))
    splits = data.load(exp.data, exp.experiment.seed)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    with caplog.at_level(logging.INFO, logger="neuroevo_sparse"):
        evaluator = LocalEvaluator(spec_for(exp, arch), splits, slots=2)
    evaluator.close()
    assert evaluator.slots == 1
    assert "model.factory" in caplog.text and 'resources.backend = "ray"' in caplog.text
