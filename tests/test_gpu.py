"""The GPU path end to end (`resources.gpus_per_job > 0`, in-process): every training path a
run can take on CUDA trains there, writes its weights back into the genome, and a run stopped
and resumed on the same GPU is the run that never stopped. Skipped where torch sees no CUDA
device (CI has none); run on real hardware with `pytest tests/test_gpu.py`.

A GPU run is not expected to equal a CPU run (cuBLAS and the CPU's BLAS round differently),
only to repeat itself on one machine: that is what these tests hold it to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, comparable_history
from neuroevo_sparse import evolve, load_experiment, load_run
from neuroevo_sparse import launch
from neuroevo_sparse.problem import data
from neuroevo_sparse.store import checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GPU = ["resources.gpus_per_job=1", "evolution.generations=3", 'training.auto_by="rules"']
PARETO = ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]', "fitness.weights=[1.0,-1.0]",
          "sparsity.fixed=false", "sparsity.min_density=0.05", "sparsity.max_density=0.9",
          'evolution.mutations=["grow","prune","set"]', "evolution.offspring=4"]

# Each training path of a GPU run: vmapped groups of 8 (dense masked weights), the same with
# layers large and sparse enough that a CPU would run them on CSR ("auto" keeps them dense on a
# GPU, paths._sparse_layers), one network at a time, a CNN (vmapped on GPUs only), a user's
# module with BatchNorm (vmapped, buffers written back), the optimiser state inherited with
# the weights, and the front's machinery (trunk, ladder, in-generation halving, polish).
PATHS = {
    "vectorised": [],
    "vectorised-large-layers": ["model.hidden=[2048, 64]", "sparsity.density=0.1"],
    "one-by-one": ['training.vectorise="off"'],
    "cnn": ['data.dataset="digits"', 'model.kind="cnn"', "model.channels=[4]", "model.hidden=[16]"],
    "user-module-batchnorm": ['model.factory="bn_net:build"'],
    "inherited-adam": ['training.optimizer="adam"', "training.inherit_optimizer=true"],
    "front": PARETO + ["evolution.trunk_steps=40", "evolution.trunk_rungs=2", "evolution.trunk_rung_steps=10",
                      "evolution.polish_steps=10", "evolution.halving_at=0.5"],
}


def stop_after_first(exp, path):
    """The run stopped between generations 1 and 2, as Ctrl-C or a scheduler would stop it."""
    stop = {"now": False}

    def at(info):
        stop["now"] = info.generation == 1

    launch.start(exp, path, should_stop=lambda: stop["now"], callbacks=[at])
    assert load_run(path).history.generation.max() == 1


@pytest.mark.parametrize("path", list(PATHS))
def test_each_training_path_runs_on_the_gpu_and_resumes_exactly(tiny_toml, tmp_path, path):
    exp = load_experiment(tiny_toml, GPU + PATHS[path])
    whole = evolve(exp, tmp_path / "whole")
    h = whole.history
    trained = h[h.evaluated]
    assert len(trained) > 0 and trained.device.str.startswith("cuda").all(), trained.device.unique()
    assert np.isfinite(trained.val_accuracy).all() and (trained.steps > 0).all()

    stop_after_first(exp, tmp_path / "part")
    launch.resume(tmp_path / "part")
    pd.testing.assert_frame_equal(comparable_history(whole.path), comparable_history(tmp_path / "part"),
                                  check_exact=True)
    a = checkpoint.load_latest(whole.path / "checkpoints")
    b = checkpoint.load_latest(tmp_path / "part" / "checkpoints")
    assert a.path.name == b.path.name and a.arrays.keys() == b.arrays.keys()
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


@pytest.mark.parametrize("vectorise", ["on", "off"])
def test_csr_layers_on_the_gpu_train_and_resume(tiny_toml, tmp_path, vectorise):
    """training.sparse_kernels = "on": torch's CSR ops on CUDA train, vmapped or not, and a
    stopped run resumes to its end. Not bit for bit: cuSPARSE does not repeat itself (the
    Fashion-MNIST MLP at 10% density differed between two runs on one H200), which is why
    "auto" keeps a GPU's layers dense."""
    exp = load_experiment(tiny_toml, GPU + ['training.sparse_kernels="on"', f'training.vectorise="{vectorise}"'])
    stop_after_first(exp, tmp_path / "part")
    launch.resume(tmp_path / "part")
    h = load_run(tmp_path / "part").history
    trained = h[h.evaluated]
    assert trained.device.str.startswith("cuda").all() and np.isfinite(trained.val_accuracy).all()
    assert sorted(h.generation.unique()) == [0, 1, 2, 3]


def test_a_network_trained_on_the_gpu_scores_on_the_cpu_as_recorded(tmp_path):
    """The weights written back from CUDA are the network the history scored: the exported
    module, on the CPU, gets the recorded test accuracy to within the few samples whose
    logits tie differently under another BLAS."""
    (tmp_path / "t.toml").write_text(TINY)
    exp = load_experiment(tmp_path / "t.toml", GPU)
    run = evolve(exp, tmp_path / "run")
    best = run.individual()
    net = run.module()
    assert next(net.parameters()).device.type == "cpu"
    splits = data.load(exp.data, exp.experiment.seed)
    with torch.no_grad():
        pred = net(torch.from_numpy(splits.test_x)).argmax(1).numpy()
    assert abs(np.mean(pred == splits.test_y) - best.meta["metrics"]["test_accuracy"]) <= 2 / len(splits.test_y)


def test_gpu_and_cpu_runs_learn_alike(tmp_path):
    """Not equal (another BLAS), but the same run: a GPU run's first generation is within a
    few points of the CPU's on every individual, so the GPU path trains what the CPU path
    trains and nothing (a mask, a learning rate) is lost on the way."""
    (tmp_path / "t.toml").write_text(TINY)
    gpu = evolve(load_experiment(tmp_path / "t.toml", GPU + ["evolution.generations=0"]), tmp_path / "gpu")
    cpu = evolve(load_experiment(tmp_path / "t.toml", [g for g in GPU if "gpus" not in g]
                                 + ["evolution.generations=0"]), tmp_path / "cpu")
    g, c = gpu.history, cpu.history
    assert (g.device.str.startswith("cuda")).all() and (c.device == "cpu").all()
    assert list(g.individual_id) == list(c.individual_id) and list(g.active_params) == list(c.active_params)
    assert np.abs(g.val_accuracy.to_numpy() - c.val_accuracy.to_numpy()).max() <= 0.1
