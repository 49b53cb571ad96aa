import dataclasses

import numpy as np
import pytest
import torch

from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse.problem import data, models
from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
from neuroevo_sparse.train.jobs import TrainJob
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.train.core import DeviceData, score_test, train


def make(exp, density=0.3, **training):
    exp = dataclasses.replace(exp, training=dataclasses.replace(exp.training, **training))
    splits = data.load(exp.data, exp.experiment.seed)
    model = models.build(exp.model, splits.input_shape, splits.num_classes)
    info = models.layer_info(model, splits.input_shape)
    names = models.maskable(model, exp.sparsity)
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    g = random_genome(0, template, info, target_counts(info, names, density, "uniform"),
                      Init(), np.random.default_rng(0))
    spec = spec_for(exp, Architecture.of(exp, splits.input_shape, splits.num_classes))
    return g, spec, DeviceData(splits)


def job(g, seed=1):
    return TrainJob(g.id, 0, seed, g.masks, g.weights)


def test_mask_enforced_during_training(tiny):
    # Adam with weight decay would move every weight if the mask were not enforced each step.
    g, spec, d = make(tiny, steps=50, weight_decay=0.1, lr=0.05)
    r = train(job(g), spec, d)
    assert r.status == "ok", r.error
    for name, m in g.masks.items():
        assert np.all(r.weights[name][~m] == 0.0), name
        assert not np.array_equal(r.weights[name][m], g.weights[name][m]), "active weights must train"


def test_training_learns(tiny):
    g, spec, d = make(tiny, steps=60, lr=0.01)
    r = train(job(g), spec, d)
    assert r.val_accuracy > 0.8 and r.steps == 60
    assert r.test_accuracy is None  # output.test_accuracy = "chosen": the driver asks for it apart
    scored = train(job(g), dataclasses.replace(spec, score_test=True), d)
    tested = score_test(TrainJob(g.id, 0, 0, g.masks, r.weights, test_only=True), spec, d)
    assert scored.test_accuracy is not None and tested.status == "ok" and tested.weights == {}
    assert tested.test_accuracy == pytest.approx(scored.test_accuracy, abs=1e-12)


def test_same_job_same_result(tiny):
    g, spec, d = make(tiny, steps=20)
    a, b = train(job(g, seed=5), spec, d), train(job(g, seed=5), spec, d)
    c = train(job(g, seed=6), spec, d)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.val_accuracy == b.val_accuracy and a.train_loss == b.train_loss
    assert not all(np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_diverging_individual_is_reported_not_raised(tiny):
    g, spec, d = make(tiny, steps=20)
    name = next(iter(g.masks))
    g.weights[name][g.masks[name]] = np.nan
    r = train(job(g), spec, d)
    assert r.status == "diverged" and "loss became nan at step 1" in r.error
    assert r.weights is g.weights  # nothing written back from a diverged run


def test_huge_learning_rate_diverges(tiny):
    g, spec, d = make(tiny, steps=200, lr=1e12, optimizer="sgd", momentum=0.0)
    r = train(job(g), spec, d)
    assert r.status == "diverged", (r.status, r.train_loss)


def test_time_limit(tiny):
    g, spec, d = make(tiny, steps=10_000_000)
    spec = dataclasses.replace(spec, time_limit_s=0.2)
    r = train(job(g), spec, d)
    assert r.status == "failed" and r.error.startswith("timeout")


@pytest.mark.parametrize("steps,epochs", [(7, 1.0), (None, 0.5)])
def test_step_budget(tiny, steps, epochs):
    g, spec, d = make(tiny, steps=steps, epochs=epochs, batch_size=32)
    r = train(job(g), spec, d)
    expected = steps or int(np.ceil(0.5 * len(d.train[1]) / 32))
    assert r.steps == expected


def test_batches_are_epochs_of_the_seeds_permutations_and_a_group_draws_each_members_own():
    from neuroevo_sparse.train.core import batches, batches_of

    n, size, steps = 10, 4, 7  # 3 batches an epoch (4, 4, 2): the last one partial
    def expected(seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        while len(out) < steps:
            order = torch.randperm(n, generator=g)
            out += [order[i: i + size] for i in range(0, n, size)]
        return out[:steps]
    single = list(batches(n, size, steps, 3, "cpu"))
    assert [b.tolist() for b in single] == [b.tolist() for b in expected(3)]
    assert sorted(torch.cat(single[:3]).tolist()) == list(range(n))  # an epoch sees every sample once
    group = list(batches_of(n, size, steps, [3, 5, 3], "cpu"))
    assert [tuple(b.shape) for b in group] == [(3, 4), (3, 4), (3, 2)] * 2 + [(3, 4)]
    for k, seed in enumerate([3, 5, 3]):
        assert [b[k].tolist() for b in group] == [b.tolist() for b in expected(seed)]
