"""The fast training paths give what the plain per-individual dense-masked path gives."""

import dataclasses

import numpy as np
import pytest
import torch

from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse.problem import data, models
from neuroevo_sparse.train import kernels
from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
from neuroevo_sparse.train.jobs import TrainJob
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.train.sparse import SparseLinear, dense_state_dict, layers_to_sparsify, sparsify
from neuroevo_sparse.train.core import DeviceData, score_test, train
from neuroevo_sparse.train.vectorised import score_many, train_many
from neuroevo_sparse.train.worker import groups, train_group


def setup(exp, n=4, density=0.3, vectorise="on", **training):
    training.setdefault("steps", 30)
    exp = dataclasses.replace(exp, training=dataclasses.replace(exp.training, vectorise=vectorise, **training))
    splits = data.load(exp.data, exp.experiment.seed)
    model = models.build(exp.model, splits.input_shape, splits.num_classes)
    info = models.layer_info(model, splits.input_shape)
    names = models.maskable(model, exp.sparsity)
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    counts = target_counts(info, names, density, "uniform")
    rng = np.random.default_rng(0)
    jobs = [TrainJob(i, 0, 100 + i, g.masks, g.weights)
            for i, g in enumerate(random_genome(i, template, info, counts, Init(), rng) for i in range(n))]
    return jobs, spec_for(exp, Architecture.of(exp, splits.input_shape, splits.num_classes)), DeviceData(splits)


def assert_same(a, b, atol):
    assert (a.status, a.steps) == (b.status, b.steps)
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], atol=atol, rtol=0, err_msg=name)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
    assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
    assert abs(a.val_accuracy - b.val_accuracy) <= 0.02


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vectorised_equals_per_individual(tiny, optimizer):
    jobs, spec, d = setup(tiny, optimizer=optimizer, lr=0.01, weight_decay=1e-3, sparse_kernels="off")
    one = [train(j, spec, d) for j in jobs]
    many = train_many(jobs, spec, d)
    assert [r.individual_id for r in many] == [j.individual_id for j in jobs]
    for a, b in zip(one, many):
        assert a.status == "ok"
        # Adam divides by sqrt(v): a gradient that is 0 on one path and 1e-12 on the other moves
        # a weight by up to lr per step, so its weights agree less tightly than SGD's.
        assert_same(a, b, atol=1e-5 if optimizer == "sgd" else 0.05)
        for name, m in jobs[a.individual_id].masks.items():
            assert np.all(b.weights[name][~m] == 0.0)


def test_vectorised_freezes_a_diverging_individual(tiny):
    jobs, spec, d = setup(tiny, optimizer="sgd", lr=0.01, sparse_kernels="off")
    name = next(iter(jobs[1].masks))
    jobs[1].weights[name][jobs[1].masks[name]] = np.nan
    many = train_many(jobs, spec, d)
    assert many[1].status == "diverged" and "loss became nan at step 1" in many[1].error
    assert many[1].weights is jobs[1].weights
    for i in (0, 2, 3):  # the others are untouched by their neighbour's NaN
        assert_same(train(jobs[i], spec, d), many[i], atol=1e-5)


def test_sparse_linear_gradients_match_dense():
    torch.manual_seed(0)
    mask = torch.rand(7, 11) < 0.3
    w = torch.randn(7, 11) * mask
    b = torch.randn(7)
    x = torch.randn(5, 11, requires_grad=True)
    sparse = SparseLinear(w, mask, b)
    y = sparse(x)
    (y ** 2).sum().backward()
    dense_w = w.clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y2 = torch.nn.functional.linear(x2, dense_w, b)
    (y2 ** 2).sum().backward()
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    rows, cols = mask.nonzero(as_tuple=True)
    torch.testing.assert_close(sparse.values.grad, dense_w.grad[rows, cols])
    assert sparse.values.numel() == int(mask.sum())  # only active weights are held
    torch.testing.assert_close(sparse.dense_weight(), w)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sparse_kernels_equal_dense_masked_training(tiny, optimizer):
    jobs, spec, d = setup(tiny, n=1, vectorise="off", optimizer=optimizer, lr=0.01, weight_decay=1e-3,
                          sparse_kernels="off")
    sparse_spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, sparse_kernels="on"))
    assert layers_to_sparsify(jobs[0].masks, sparse_spec.training)
    dense, sparse = train(jobs[0], spec, d), train(jobs[0], sparse_spec, d)
    assert dense.status == sparse.status == "ok"
    assert_same(dense, sparse, atol=1e-5)
    assert sorted(sparse.weights) == sorted(dense.weights)  # written back as dense tensors
    for name, m in jobs[0].masks.items():
        assert np.all(sparse.weights[name][~m] == 0.0)


def test_sparse_layers_picked_by_density_and_size(tiny):
    jobs, spec, _ = setup(tiny, n=1, sparse_kernels="auto", sparse_below=0.5, sparse_min_size=0)
    cfg = spec.training
    masks = jobs[0].masks  # uniform density 0.3, every layer
    linear = [k for k, m in masks.items() if m.ndim == 2]
    assert layers_to_sparsify(masks, cfg) == linear
    assert layers_to_sparsify(masks, dataclasses.replace(cfg, sparse_below=0.2)) == []
    big = max(linear, key=lambda k: masks[k].size)
    assert layers_to_sparsify(masks, dataclasses.replace(cfg, sparse_min_size=masks[big].size)) == [big]
    assert layers_to_sparsify(masks, dataclasses.replace(cfg, sparse_kernels="off")) == []


def test_sparsify_round_trips_the_state_dict(tiny):
    jobs, spec, _ = setup(tiny, n=1)
    model = spec.builder()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in jobs[0].weights.items()})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [k for k, m in jobs[0].masks.items() if m.ndim == 2]
    sparsify(model, jobs[0].masks, names)
    after = dense_state_dict(model)
    assert sorted(after) == sorted(before)
    for k in before:
        torch.testing.assert_close(after[k], before[k])


NATIVE = [pytest.param(True, marks=pytest.mark.skipif(not kernels.available(), reason=kernels.status())), False]


@pytest.mark.parametrize("native", NATIVE, ids=["native", "torch"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vectorised_sparse_equals_per_individual_dense(tiny, optimizer, native):
    # Every Linear layer truly sparse, the group as one block-diagonal sparse matmul per layer,
    # on the C kernels or on torch's CSR ops.
    jobs, spec, d = setup(tiny, n=3, optimizer=optimizer, lr=0.01, weight_decay=1e-3,
                          sparse_kernels="on", cpu_kernels="auto" if native else "torch")
    assert spec.native_kernels == native
    dense_spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, sparse_kernels="off"))
    many = train_many(jobs, spec, d)
    assert all(r.extra["sparse_layers"] == 3 for r in many)
    for job, b in zip(jobs, many):
        a = train(job, dense_spec, d)
        assert_same(a, b, atol=1e-5 if optimizer == "sgd" else 0.05)
        for name, m in job.masks.items():
            assert np.all(b.weights[name][~m] == 0.0)


def test_vectorised_sparse_freezes_a_diverging_individual(tiny):
    jobs, spec, d = setup(tiny, n=3, optimizer="sgd", lr=0.01, sparse_kernels="on")
    name = next(iter(jobs[0].masks))
    jobs[0].weights[name][jobs[0].masks[name]] = np.nan
    many = train_many(jobs, spec, d)
    assert many[0].status == "diverged"
    for i in (1, 2):
        assert_same(train(jobs[i], spec, d), many[i], atol=1e-5)


def test_groups_keep_job_order(tiny):
    jobs, spec, d = setup(tiny, n=5, optimizer="sgd", lr=0.01, vectorise_group=2)
    assert spec.vectorise
    assert [[j.individual_id for j in g] for g in groups(jobs, spec)] == [[0, 1], [2, 3], [4]]
    results = [r for g in groups(jobs, spec) for r in train_group(g, spec, d)]
    assert [r.individual_id for r in results] == [0, 1, 2, 3, 4]
    # The last job is a group of one, on the group's path all the same.
    assert [r.extra.get("vectorised") for r in results] == [2.0, 2.0, 2.0, 2.0, 1.0]
    flat = dataclasses.replace(spec, vectorise=False)
    assert groups(jobs, flat) == [[j] for j in jobs]


def test_vectorised_cnn_runs_under_vmap(tiny):
    exp = dataclasses.replace(tiny, data=dataclasses.replace(tiny.data, dataset="digits"),
                              model=dataclasses.replace(tiny.model, kind="cnn", channels=[4, 8], hidden=[16]))
    jobs, spec, d = setup(exp, n=2, optimizer="sgd", lr=0.01, steps=10, sparse_kernels="off")
    many = train_many(jobs, spec, d)
    assert "sparse_layers" in many[0].extra and many[0].extra["sparse_layers"] == 0
    for job, b in zip(jobs, many):
        assert_same(train(job, spec, d), b, atol=1e-5)


@pytest.mark.parametrize("sparse_kernels", ["on", "off"])
def test_test_only_groups_score_what_one_by_one_scores(tiny, sparse_kernels):
    jobs, spec, d = setup(tiny, n=3, optimizer="sgd", lr=0.01, sparse_kernels=sparse_kernels)
    trained = train_many(jobs, spec, d)
    tests = [TrainJob(j.individual_id, 0, 0, j.masks, r.weights, test_only=True) for j, r in zip(jobs, trained)]
    many = score_many(tests, spec, d)
    assert [r.individual_id for r in many] == [j.individual_id for j in jobs]
    for a, b in zip(many, (score_test(t, spec, d) for t in tests)):
        assert a.status == b.status == "ok" and not a.weights
        assert abs(a.test_accuracy - b.test_accuracy) <= 1 / len(d.test[1])  # one argmax tie at most
    assert [r.test_accuracy for r in train_group(tests, spec, d)] == [r.test_accuracy for r in many]


def test_native_spec_on_a_worker_without_the_kernels_fails_its_jobs_clearly(tiny, monkeypatch):
    if not kernels.available():
        pytest.skip(kernels.status())
    jobs, spec, d = setup(tiny, n=2, optimizer="sgd", sparse_kernels="on")
    assert spec.native_kernels
    monkeypatch.setattr(kernels, "_library", lambda: None)
    results = train_many(jobs, spec, d)
    assert {r.status for r in results} == {"failed"}
    assert "native sparse kernels (training.cpu_kernels)" in results[0].error
    assert "were not built" in results[0].error
