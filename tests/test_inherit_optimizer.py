"""training.inherit_optimizer: an individual's optimiser state is kept with its trained weights,
follows them into its children (zero where a child's weight is new), is loaded when the child
trains, crosses to Ray workers with its job, and is stored in checkpoints; a stopped run
resumed is the run that never stopped."""

import pickle
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY
from neuroevo_sparse import config, launch
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.evaluators import ray as ray_evaluator
from neuroevo_sparse.problem import data, models
from neuroevo_sparse.report import tables as report
from neuroevo_sparse.store import checkpoint
from neuroevo_sparse.store.history import NONDETERMINISTIC
from neuroevo_sparse.topology.genome import Genome, inherited_optimiser, pruned
from neuroevo_sparse.train.core import DeviceData, batches, build_model, train
from neuroevo_sparse.train.jobs import Base, Resume, TrainJob
from neuroevo_sparse.train.paths import spec_for

PARETO = ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]', "fitness.weights=[1.0,-1.0]",
          "sparsity.fixed=false", "sparsity.min_density=0.05", "sparsity.max_density=0.9",
          'evolution.mutations=["grow","prune","set"]', "evolution.offspring=4", "evolution.generations=3",
          'evolution.crossover="connection"']
INHERIT = ["training.inherit_optimizer=true", "evolution.halving_at=0.5", "evolution.trunk_steps=20",
           "evolution.trunk_rungs=2", "evolution.trunk_rung_steps=6", "evolution.polish_steps=5"]


def load(tmp_path, sets):
    (tmp_path / "t.toml").write_text(TINY)
    return config.load(tmp_path / "t.toml", PARETO + sets)


# ----------------------------------------------------------------------------- the rule

def _genome(gid, w, mask, state, bias_state=None, step=5):
    mask = np.array(mask, bool)
    w = (np.array(w, np.float32) * mask).astype(np.float32)
    optimiser = {"w": {"exp_avg": np.array(state, np.float32) * mask, "step": step},
                 "b": {"exp_avg": np.array(bias_state or [1.0, 1.0], np.float32), "step": step}}
    return Genome(gid, {"w": mask}, {"w": w, "b": np.zeros(2, np.float32)}, optimiser=optimiser)


def test_the_state_follows_the_weights():
    a = _genome(1, [1, 2, 3, 4], [1, 1, 1, 0], [10, 20, 30, 0], [7, 7], step=9)
    b = _genome(2, [5, 6, 7, 8], [0, 1, 1, 1], [0, 60, 70, 80], [3, 3], step=4)
    # A mutant of a: position 1 pruned, 3 grown, 2 changed in value; 0 kept.
    mutant = Genome(3, {"w": np.array([1, 0, 1, 1], bool)}, {"w": np.array([1, 0, 3.5, 9], np.float32),
                                                               "b": a.weights["b"]}, parents=(1,))
    s = inherited_optimiser(mutant, [a])
    assert s["w"]["exp_avg"].tolist() == [10, 0, 0, 0] and s["w"]["step"] == 9
    assert s["b"]["exp_avg"].tolist() == [7, 7]
    # A crossover child of (b, a): each weight keeps its own parent's state, b's first where
    # both hold it; one a newborn (position 0 is neither's weight).
    child = Genome(4, {"w": np.array([1, 1, 1, 1], bool)}, {"w": np.array([0.5, 2, 7, 8], np.float32),
                                                              "b": b.weights["b"]}, parents=(2, 1))
    s = inherited_optimiser(child, [b, a])
    assert s["w"]["exp_avg"].tolist() == [0, 20, 70, 80]
    assert s["w"]["step"] == 4 and s["b"]["exp_avg"].tolist() == [3, 3]  # the first parent's
    # No parent with a state: a fresh optimiser.
    assert inherited_optimiser(child, [replace(b, optimiser=None)]) is None
    # Magnitude pruning (the trunk's ladder) keeps the state of the connections it keeps.
    rung = pruned(a, 5, {"w": 2})
    assert rung.masks["w"].tolist() == [False, True, True, False]
    assert inherited_optimiser(rung, [a])["w"]["exp_avg"].tolist() == [0, 20, 30, 0]


def test_the_option_is_checked_and_trains_one_by_one(tmp_path):
    with pytest.raises(ConfigError, match="training.inherit_optimizer: needs evolution.inheritance"):
        load(tmp_path, ["training.inherit_optimizer=true", 'evolution.inheritance="baldwinian"'])
    with pytest.raises(ConfigError, match="training.inherit_optimizer: inherited optimiser states train one"):
        load(tmp_path, ["training.inherit_optimizer=true", 'training.vectorise="on"'])
    exp = load(tmp_path, ["training.inherit_optimizer=true"])
    splits = data.load(exp.data, 0)
    arch = models.Architecture.of(exp, splits.input_shape, splits.num_classes)
    assert not spec_for(exp, arch).vectorise
    assert spec_for(load(tmp_path, []), arch).vectorise  # the tiny MLP is vectorised otherwise
    assert load(tmp_path, []).hash() == load(tmp_path, ["training.inherit_optimizer=false"]).hash()


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def sgd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sgd")
    exp = load(root, ['training.optimizer="sgd"', "training.momentum=0.9", "training.lr=0.05",
                      "training.inherit_optimizer=true", "training.steps=1"])
    splits = data.load(exp.data, 0)
    arch = models.Architecture.of(exp, splits.input_shape, splits.num_classes)
    rng = np.random.default_rng(3)
    masks = {n: rng.random(arch.template[n].shape) < 0.5 for n in arch.maskable}
    weights = {n: (v * masks[n] if n in masks else v).astype(v.dtype) for n, v in arch.template.items()}
    momentum = {n: {"momentum_buffer": (rng.normal(size=v.shape) * (masks[n] if n in masks else 1)).astype(np.float32)}
                for n, v in weights.items()}
    return exp, spec_for(exp, arch), DeviceData(splits), TrainJob(1, 1, 11, masks, weights, optimiser=momentum)


def test_a_child_trains_on_from_its_inherited_momentum(sgd):
    exp, spec, dd, job = sgd
    got = train(job, spec, dd)
    fresh = train(replace(job, optimiser=None), spec, dd)
    assert got.status == fresh.status == "ok"
    assert not all(np.array_equal(got.weights[n], fresh.weights[n]) for n in job.masks)
    # The path a stopped training goes on by, from step 0 with the same state: bit for bit.
    resumed = train(replace(job, optimiser=None, resume=Resume(0, 0.0, job.optimiser)), spec, dd)
    assert all(np.array_equal(got.weights[n], resumed.weights[n]) for n in job.weights)
    # By hand: v = m v0 + g (the gradient masked), w -= lr v; inactive connections stay zero.
    model = build_model(spec, job.weights, "cpu")
    idx = next(batches(len(dd.train[1]), exp.training.batch_size, 1, job.seed, "cpu"))
    torch.nn.functional.cross_entropy(model(dd.train[0][idx]), dd.train[1][idx]).backward()
    for n, p in model.named_parameters():
        g = p.grad.numpy() * (job.masks[n] if n in job.masks else 1)
        v = 0.9 * job.optimiser[n]["momentum_buffer"] + g
        np.testing.assert_allclose(got.weights[n], job.weights[n] - 0.05 * v, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.optimiser[n]["momentum_buffer"], v, rtol=1e-5, atol=1e-6)
        if n in job.masks:
            assert not got.weights[n][~job.masks[n]].any()
    assert fresh.optimiser is not None and "optimiser" not in got.metrics()


def test_a_trained_momentum_is_stored_as_its_active_values(sgd):
    """Masked gradients leave -0.0 in SGD's momentum at inactive connections; the state a
    training returns has +0.0 there, so a checkpoint stores it as active values, as it stores
    the weights, not dense."""
    _, spec, dd, job = sgd
    fresh = train(replace(job, optimiser=None), spec, dd)
    g = Genome(1, masks=job.masks, weights=fresh.weights, optimiser=fresh.optimiser)
    blob = checkpoint.encode(g.to_arrays())
    for n in job.masks:
        buf = fresh.optimiser[n]["momentum_buffer"]
        assert not np.signbit(buf[~job.masks[n]]).any()
        assert b'"enc":"active"' in blob.split(f'"optim.momentum_buffer/{n}"'.encode())[1][:160]


def test_the_state_crosses_to_ray_workers_and_back(sgd):
    """The Ray evaluator's shipping (children as patches on their parents) with the object
    store and the task call stood in by pickling: the same result as training in process."""
    _, spec, dd, job = sgd
    parent = Base(0, job.masks, {n: w + 1 for n, w in job.weights.items()})
    job = replace(job, bases=(parent,))
    store = SimpleNamespace(put=lambda x: pickle.loads(pickle.dumps(x)), cloudpickle=pickle)
    local = train(job, spec, dd)
    for shipping in ("parents", "whole"):
        shipment = ray_evaluator._Shipment(store, spec, [[job]], shipping)
        (args, refs), = shipment.tasks
        ray_evaluator._WORKER_DATA["t"] = dd
        got = ray_evaluator._train_task(spec, *pickle.loads(pickle.dumps(args)), None, "t", 0.0, *refs)
        r, = shipment.received(pickle.loads(pickle.dumps(got)), [job])
        assert all(np.array_equal(r.weights[n], local.weights[n]) for n in job.weights)
        assert r.optimiser.keys() == local.optimiser.keys()
        assert all(np.array_equal(r.optimiser[n]["momentum_buffer"], local.optimiser[n]["momentum_buffer"])
                   for n in r.optimiser)
    ray_evaluator._WORKER_DATA.clear()


# ----------------------------------------------------------------------------- storage and runs

def test_a_checkpoint_keeps_the_state():
    g = _genome(1, [1, 2, 3, 4], [1, 1, 0, 0], [10, 20, 30, 40], step=12)
    blob = checkpoint.encode(g.to_arrays())
    back = Genome.from_arrays(g.meta(), checkpoint.decode(blob))
    assert back.optimiser.keys() == g.optimiser.keys()
    for n, state in g.optimiser.items():
        assert back.optimiser[n]["step"] == 12 and type(back.optimiser[n]["step"]) is int
        assert np.array_equal(back.optimiser[n]["exp_avg"], state["exp_avg"])
    # A masked tensor's state is stored as its active values, as its weights are.
    assert b'"optim.exp_avg/w":{"at":' in blob and b'"enc":"active"' in blob.split(b'"optim.exp_avg/w"')[1][:120]
    assert Genome.from_arrays(g.meta(), replace(g, optimiser=None).to_arrays()).optimiser is None


@pytest.fixture(scope="module")
def inherit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inherit")
    exp = load(root, INHERIT)
    run, _ = launch.start(exp, root / "run")
    return exp, run.path


def history(run) -> pd.DataFrame:
    df = pd.read_parquet(run / "history").drop(columns=["run_id", *NONDETERMINISTIC])
    return df.sort_values(["generation", "individual_id"]).reset_index(drop=True)


def test_the_state_is_in_the_checkpoints_and_changes_the_run(inherit_run, tmp_path):
    exp, run = inherit_run
    latest = checkpoint.load_latest(run / "checkpoints")
    genomes = [Genome.from_arrays(m, latest.arrays_of(f"g{m['id']}")) for m in latest.state["genomes"]]
    assert genomes and all(g.optimiser for g in genomes)
    for g in genomes:
        for n, m in g.masks.items():
            assert g.optimiser[n]["step"] > 0 and not g.optimiser[n]["exp_avg"][~m].any()
    off = launch.start(replace(exp, training=replace(exp.training, inherit_optimizer=False)), tmp_path / "off")[0]
    assert not history(off.path).equals(history(run))


def test_stop_and_resume_gives_the_run_that_never_stopped(inherit_run, tmp_path):
    exp, ref = inherit_run
    stop = {"now": False}

    def at(info):
        stop["now"] = info.generation == 1

    run, _ = launch.start(exp, tmp_path / "run", should_stop=lambda: stop["now"], callbacks=[at])
    assert report.load(run.path).generation.max() == 1
    launch.resume(run.path)
    pd.testing.assert_frame_equal(history(ref), history(run.path))
    a, b = checkpoint.load_latest(ref / "checkpoints"), checkpoint.load_latest(run.path / "checkpoints")
    assert a.path.name == b.path.name
    assert a.arrays.keys() == b.arrays.keys() and any("/optim." in k for k in a.arrays)
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
