"""How a generation's jobs are grouped, and why the grouping may follow the cores: on a CPU a
member's arithmetic does not depend on its group."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from conftest import histories_over_layouts
from neuroevo_sparse.train import kernels
from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse.train.jobs import TrainJob, TrainSpec
from neuroevo_sparse.train.paths import FIXED_GROUP, _group
from neuroevo_sparse.train.sparse import layers_to_sparsify
from neuroevo_sparse.train.worker import MAX_GROUP, groups


def _spec(group: int | None, vectorise: bool = True) -> TrainSpec:
    return TrainSpec(builder=None, training=None, vectorise=vectorise, group=group)  # type: ignore[arg-type]


def _ids(batches: list[list[TrainJob]]) -> list[list[int]]:
    return [[j.individual_id for j in b] for b in batches]


def _jobs(n: int, test_only: bool = False) -> list[TrainJob]:
    return [TrainJob(i, 0, i, {}, {}, test_only=test_only) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200), slots=st.integers(1, 64))
def test_auto_groups_are_one_per_slot_of_two_or_more_jobs(n, slots):
    batches = groups(_jobs(n), _spec(None), slots)
    assert [j for b in batches for j in b] == _jobs(n)  # every job once, in order
    assert all(batches)  # no empty group (a Ray task for nothing)
    sizes = [len(b) for b in batches]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1  # as even as can be
    assert max(sizes, default=0) <= MAX_GROUP
    if n >= 2:
        assert min(sizes) >= 2  # no job falls to the per-individual path
        assert len(batches) == max(min(slots, n // 2), -(-n // MAX_GROUP))


def test_fixed_groups_and_single_jobs():
    assert _ids(groups(_jobs(5), _spec(2), slots=8)) == [[0, 1], [2, 3], [4]]  # slots do not matter
    assert _ids(groups(_jobs(3), _spec(None, vectorise=False), slots=1)) == [[0], [1], [2]]
    # Test-only jobs are grouped whatever the training path.
    assert _ids(groups(_jobs(4, test_only=True), _spec(None, vectorise=False), slots=2)) == [[0, 1], [2, 3]]


def test_auto_is_one_group_per_slot_on_cpus_and_fixed_on_gpus_and_for_vmapped_networks(tiny):
    def spec_group(gpus: float, size, model=tiny.model):
        exp = replace(tiny, training=replace(tiny.training, vectorise_group=size), model=model,
                      resources=replace(tiny.resources, gpus_per_job=gpus))
        return _group(exp, Architecture.of(exp, (1, 8, 8), 3))

    assert spec_group(0.0, "auto") is None
    assert spec_group(0.5, "auto") == FIXED_GROUP
    assert spec_group(0.5, 3) == 3
    # Any other network is vmapped whole, where batched matmuls may round by batch size.
    assert spec_group(0.0, "auto", replace(tiny.model, kind="cnn", channels=[4])) == FIXED_GROUP


@pytest.mark.parametrize("cpu_kernels", ["native", "torch"])
def test_a_members_results_do_not_depend_on_its_group(tiny, tmp_path, cpu_kernels):
    """The property "auto" rests on: the same history whether a generation is one group, one
    group per core of a 4-core machine, or fixed groups of 3, with truly sparse layers on the
    C kernels or torch's, and test-only jobs grouped alike."""
    if cpu_kernels == "native" and not kernels.available():
        pytest.skip(kernels.status())
    base = replace(tiny, evolution=replace(tiny.evolution, population=6, offspring=9),
                   training=replace(tiny.training, vectorise="on", sparse_kernels="on", sparse_min_size=0,
                                    cpu_kernels=cpu_kernels))
    # 9 offspring in groups of 4 leave one alone: a group of one takes the group's path too.
    histories = histories_over_layouts(base, tmp_path, [(1, "auto"), (4, "auto"), (1, 3), (1, 4)])
    for other in histories[1:]:
        pd.testing.assert_frame_equal(histories[0], other, check_exact=True)
    assert histories[0].evaluated.sum() == 6 + 2 * 9


def test_a_members_results_do_not_depend_on_its_group_when_sizes_differ(tiny, tmp_path):
    """Issue 38, 2: with sizes searched, a layer was truly sparse in a group only if it was
    for every member, so a member's arithmetic depended on who shared its group; and a group
    of one took the per-individual path. Both made results depend on the number of workers."""
    base = replace(tiny, sparsity=replace(tiny.sparsity, fixed=False, density=0.2, min_density=0.05,
                                          max_density=0.6),
                   evolution=replace(tiny.evolution, population=6, offspring=7,
                                     mutations=["grow", "prune", "set", "move"]),
                   training=replace(tiny.training, vectorise="on", sparse_kernels="auto", sparse_min_size=0,
                                    sparse_below=0.3, auto_by="rules"),
                   output=replace(tiny.output, test_accuracy="chosen"))
    histories = histories_over_layouts(base, tmp_path, [(1, "auto"), (2, "auto"), (1, 7), (1, 1)])
    for other in histories[1:]:
        pd.testing.assert_frame_equal(histories[0], other, check_exact=True)


def test_a_gpu_keeps_auto_layers_dense(tiny):
    """torch's CSR ops on CUDA do not repeat themselves (measured on an H200): on a GPU, "auto"
    runs no layer truly sparse, where a CPU would run the large sparse one on CSR."""
    from neuroevo_sparse.train.paths import spec_for

    def layers(gpus: float, kernels: str):
        exp = replace(tiny, model=replace(tiny.model, hidden=[2048, 64]),
                      sparsity=replace(tiny.sparsity, density=0.1),
                      training=replace(tiny.training, sparse_kernels=kernels, cpu_kernels="torch"),
                      resources=replace(tiny.resources, gpus_per_job=gpus))
        arch = Architecture.of(exp, (1, 8, 8), 4)
        spec = spec_for(exp, arch)
        masks = {n: np.random.default_rng(0).random(arch.info[n].shape) < 0.1 for n in arch.maskable}
        return layers_to_sparsify(masks, spec.training, chosen=spec.sparse_layers)

    assert layers(0.0, "auto") == ["fc1.weight", "fc2.weight"]  # 131k weights each; fc3 is below sparse_min_size
    assert layers(1.0, "auto") == []
    assert len(layers(1.0, "on")) == len(layers(0.0, "on")) >= 2
