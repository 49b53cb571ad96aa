"""Your own network and data: factories by name, masked-tensor patterns, BatchNorm buffers as
part of the genome, the vectorised path on a user module, user code shipped to a real cluster,
and the experiment trackers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import ROOT, TINY, comparable_history, neuroevo_cmd
from neuroevo_sparse import config, evolve, load_experiment, load_run, resume
from neuroevo_sparse.problem import data
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.problem.data import DatasetError
from neuroevo_sparse.problem.models import Architecture

RESNET = f"{ROOT / 'experiments' / 'custom' / 'resnet.py'}:ResidualCNN"

# The tiny experiment with the example's residual CNN (BatchNorm) in place of the MLP.
RES_TINY = TINY.replace("[model]\nhidden = [32, 16]", f'[model]\nfactory = "{RESNET}"\nargs = {{ width = 4, blocks = 1 }}')


def res_exp(tmp_path: Path, *overrides: str) -> config.Experiment:
    path = tmp_path / "res.toml"
    path.write_text(RES_TINY)
    return config.load(path, [f"output.root={str(tmp_path)!r}", *overrides])


def arch_of(exp: config.Experiment) -> Architecture:
    splits = data.load(exp.data, exp.experiment.seed)
    return Architecture.of(exp, splits.input_shape, splits.num_classes)


# --------------------------------------------------------------------- which tensors are masked

CONVS = ["blocks.0.conv1.weight", "blocks.0.conv2.weight"]


@pytest.mark.parametrize("include, exclude, masked", [
    ([], [], ["stem.weight", *CONVS, "fc.weight"]),                       # every Linear and Conv weight
    ([], ["stem.weight", "fc.weight"], CONVS),                             # first conv and classifier dense
    (["blocks.*.weight"], [], ["blocks.0.conv1.weight", "blocks.0.bn1.weight",        # any parameter,
                               "blocks.0.conv2.weight", "blocks.0.bn2.weight"]),      # in the model's order
    (["*conv?.weight", "fc.*"], ["*conv2*"], ["blocks.0.conv1.weight", "fc.weight", "fc.bias"]),
])
def test_include_and_exclude_mask_exactly_what_was_asked(tmp_path, include, exclude, masked):
    exp = res_exp(tmp_path, f"sparsity.include={include!r}", f"sparsity.exclude={exclude!r}")
    assert arch_of(exp).maskable == masked


@pytest.mark.parametrize("key, pattern", [("include", "blocks.*.conv9*"), ("exclude", "head.weight")])
def test_a_pattern_that_matches_nothing_is_an_error(tmp_path, key, pattern):
    exp = res_exp(tmp_path, f"sparsity.{key}=[{pattern!r}]")
    with pytest.raises(ConfigError, match=rf"sparsity.{key}: '{re.escape(pattern)}' matches no parameter .*stem.weight"):
        arch_of(exp)


def test_excluding_everything_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no parameter is left to mask"):
        arch_of(res_exp(tmp_path, "sparsity.exclude=['*']"))


# --------------------------------------------------------------------- factory errors

@pytest.mark.parametrize("factory, message", [
    ("no_such_module_xyz:build", r"model.factory: cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ("missing.py:build", r"model.factory: cannot import .*missing.py.*no such file"),
    (f"{RESNET.rsplit(':', 1)[0]}:ResNet50", r"has no 'ResNet50'; its callables are: .*ResidualCNN"),
    ("torch.nn:functional", r"model.factory: 'torch.nn:functional' is a module, not a callable"),
    ("collections:OrderedDict", r"model.factory: 'collections:OrderedDict' returned a OrderedDict, not a torch.nn.Module"),
])
def test_a_model_factory_that_cannot_give_a_module_is_a_clear_error(tmp_path, factory, message):
    exp = res_exp(tmp_path, f"model.factory={factory!r}", "model.args={}")
    with pytest.raises(ConfigError, match=message):
        arch_of(exp)


def test_wrong_arguments_and_wrong_output_shape_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model.factory: calling .*ResidualCNN with \['depth', .*unexpected keyword"):
        arch_of(res_exp(tmp_path, "model.args={depth = 3}"))
    with pytest.raises(ConfigError, match=r"maps inputs \(2, 1, 8, 8\) to \(2, 7\); it must give \(2, 4\)"):
        arch_of(res_exp(tmp_path, "model.args={num_classes = 7, width = 4}"))


def test_cli_exits_2_on_a_broken_factory_and_creates_no_run(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(RES_TINY.replace("ResidualCNN", "Nope"))
    p = subprocess.run(neuroevo_cmd() + ["run", str(path), "--set", f"output.root={str(tmp_path / 'pop')!r}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "model.factory:" in p.stderr and "has no 'Nope'" in p.stderr
    assert not (tmp_path / "pop").exists()


def write_data_module(tmp_path: Path, body: str) -> str:
    # A file is imported as the module named after it, once per process: a name per test.
    path = tmp_path / ("userdata_" + re.sub(r"\W", "_", tmp_path.name) + ".py")
    path.write_text(textwrap.dedent(body))
    return f"{path}:load"


@pytest.mark.parametrize("body, message", [
    ("def load():\n    return {'train': (np.zeros((10, 4)), np.zeros(9, int)), 'test': (np.zeros((5, 4)), np.zeros(5, int))}",
     r"split 'train': 10 inputs but 9 labels"),
    ("def load():\n    return {'train': (np.zeros((10, 4)), np.zeros(10, int)), 'test': (np.zeros((5, 3)), np.zeros(5, int))}",
     r"the splits' inputs differ in shape \(train \(4,\), test \(3,\)\)"),
    ("def load():\n    return {'train': (np.zeros((10, 4)), np.full(10, 0.5)), 'test': (np.zeros((5, 4)), np.zeros(5))}",
     r"split 'train': labels must be class indices \(integers\), got dtype float64"),
    ("def load():\n    return {'train': (np.zeros((10, 4)), -np.ones(10, int)), 'test': (np.zeros((5, 4)), np.zeros(5, int))}",
     r"labels must be class indices 0..C-1, found -1"),
    ("def load():\n    return {'training': 1, 'test': 2}", r"keys \['test', 'training'\]; it needs \"train\" and \"test\""),
    ("def load():\n    return np.zeros(3)", r"returned ndarray; it must return"),
    ("def load():\n    raise OSError('disk on fire')", r"raised OSError: disk on fire"),
])
def test_bad_data_from_a_factory_is_a_clear_error(tmp_path, body, message):
    factory = write_data_module(tmp_path, "import numpy as np\n" + body)
    cfg = config.DataConfig(factory=factory)
    with pytest.raises(DatasetError, match=message):
        data.load(cfg, 0)


def test_a_data_factory_may_return_torch_datasets_and_its_own_validation(tmp_path):
    factory = write_data_module(tmp_path, """
        import torch
        from torch.utils.data import TensorDataset

        def load(n=60, seed=None):
            g = torch.Generator().manual_seed(seed)
            x, y = torch.randn(n, 5, generator=g), torch.arange(n) % 3
            return TensorDataset(x[:40], y[:40]), (x[40:50], y[40:50]), (x[50:].numpy(), y[50:].numpy())
    """)
    splits = data.load(config.DataConfig(factory=factory, args={"n": 60}), seed=3)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (40, 10, 10)
    assert splits.input_shape == (5,) and splits.num_classes == 3 and splits.train_x.dtype == np.float32
    again = data.load(config.DataConfig(factory=factory, args={"n": 60}), seed=3)
    np.testing.assert_array_equal(splits.train_x, again.train_x)  # the seed reached the factory


# --------------------------------------------------------------------- BatchNorm buffers

def test_batchnorm_statistics_are_inherited_checkpointed_and_resumed(tmp_path):
    exp = res_exp(tmp_path, "evolution.generations=3", "training.steps=10")
    straight = evolve(exp, run_dir=tmp_path / "straight")
    # Inherited: an individual's BatchNorm has counted the batches of its whole lineage, not only
    # its own training (10 steps), and its running statistics moved away from their start (0, 1).
    ckpt = straight.individual(straight.history.query("generation == 3 and selected").individual_id.max())
    counted = int(ckpt.weights["bn.num_batches_tracked"])
    assert ckpt.weights["bn.num_batches_tracked"].dtype == np.int64
    assert counted > 10 and counted % 10 == 0
    assert not np.allclose(ckpt.weights["bn.running_var"], 1.0)
    # The exported module uses them: evaluated here it gives the recorded validation accuracy.
    net = straight.module(ckpt.id)
    splits = data.load(exp.data, exp.experiment.seed)
    with torch.no_grad():
        acc = (net(torch.from_numpy(splits.val_x)).argmax(1).numpy() == splits.val_y).mean()
    assert acc == pytest.approx(ckpt.meta["metrics"]["val_accuracy"])
    # Checkpointed: a run stopped after generation 1 and resumed is the run that never stopped.
    stopped = evolve(replace(exp, evolution=replace(exp.evolution, generations=1)), run_dir=tmp_path / "resumed")
    resume(stopped.path, generations=3)
    pd.testing.assert_frame_equal(comparable_history(tmp_path / "resumed"), comparable_history(straight.path), check_exact=True)


# --------------------------------------------------------------------- vectorised path

def test_vectorised_residual_network_equals_one_by_one(tmp_path):
    from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
    from neuroevo_sparse.train.jobs import TrainJob
    from neuroevo_sparse.train.paths import spec_for
    from neuroevo_sparse.train.core import DeviceData, train
    from neuroevo_sparse.train.vectorised import train_many

    exp = res_exp(tmp_path, "training.vectorise='on'", "training.optimizer='sgd'")
    splits = data.load(exp.data, exp.experiment.seed)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    spec = spec_for(exp, arch)
    assert spec.vectorise  # vmappable: BatchNorm buffers stacked with the parameters
    rng = np.random.default_rng(0)
    counts = target_counts(arch.info, arch.maskable, 0.3, "uniform")
    jobs = [TrainJob(i, 0, 100 + i, g.masks, g.weights) for i, g in enumerate(
        random_genome(i, arch.template, arch.info, counts, Init(), rng) for i in range(3))]
    device = DeviceData(splits)
    one = [train(j, spec, device) for j in jobs]
    many = train_many(jobs, spec, device)
    for a, b in zip(one, many):
        assert a.status == b.status == "ok"
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=2 / len(splits.val_y))
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        for name in a.weights:
            np.testing.assert_allclose(a.weights[name], b.weights[name], rtol=1e-4, atol=1e-5, err_msg=name)
        assert b.extra["vectorised"] == 3


def test_a_network_vmap_cannot_run_is_trained_one_by_one_and_said_once(tmp_path, caplog):
    from neuroevo_sparse.train.paths import spec_for

    module = write_model_module(tmp_path, """
        from torch import nn

        def build(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.1), nn.Linear(16, num_classes))
    """)
    exp = res_exp(tmp_path, f"model.factory={module!r}", "model.args={}", "training.vectorise='on'")
    with caplog.at_level("WARNING", logger="neuroevo_sparse"):
        spec = spec_for(exp, arch_of(exp))
    assert not spec.vectorise
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "cannot be trained under torch.func.vmap" in caplog.records[0].message


def write_model_module(tmp_path: Path, body: str, name: str = "usernet") -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return f"{tmp_path / f'{name}.py'}:build"


# --------------------------------------------------------------------- the Python API

def api_net(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 24), nn.BatchNorm1d(24), nn.ReLU(),
                         nn.Linear(24, num_classes))


def api_data(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 10))
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.normal(scale=0.5, size=(300, 10))).astype(np.float32)
    return {"train": (x[:240], y[:240]), "test": (x[240:], y[240:])}


def test_evolve_takes_your_network_and_data_and_records_them_by_name(tmp_path, tiny):
    run = evolve(replace(tiny, output=replace(tiny.output, root=str(tmp_path))), model=api_net, data=api_data)
    cfg = load_run(run.path).config
    assert cfg.model.factory == f"{__name__}:api_net" and cfg.data.factory == f"{__name__}:api_data"
    assert (run.history.status == "ok").all() and run.history.val_accuracy.max() > 0.6
    net = run.module()
    assert isinstance(net[2], nn.BatchNorm1d) and net[2].num_batches_tracked > 0
    with pytest.raises(ConfigError, match="top level of a module"):
        evolve(tiny, model=lambda input_shape, num_classes: api_net(input_shape, num_classes))


def test_relative_factory_paths_are_taken_from_the_experiment_file(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    write_model_module(tmp_path / "exp", "from torch import nn\n\ndef build(num_classes):\n"
                                         "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n",
                       name="relnet")
    path = tmp_path / "exp" / "x.toml"
    path.write_text(TINY.replace("[model]\nhidden = [32, 16]", '[model]\nfactory = "relnet.py:build"'))
    monkeypatch.chdir(ROOT)
    exp = config.load(path)
    assert exp.model.factory == f"{tmp_path / 'exp' / 'relnet.py'}:build"
    assert arch_of(exp).maskable == ["1.weight"]
    assert config.load(path.parent / "x.toml") == exp


def test_bad_values_of_the_new_keys_are_named(tmp_path):
    problems = [("model.factory", "'resnet'", r"model.factory: 'resnet' is not of the form"),
                ("model.args", "[1]", r"model.args: must be a table"),
                ("data.args", "{a = 1}", r"data.args: set only with data.factory"),
                ("sparsity.include", "'fc'", r"sparsity.include: must be a list"),
                ("resources.ship_code", "'yes'", r"resources.ship_code: must be true or false"),
                ("output.tensorboard", "1", r"output.tensorboard: must be true or false")]
    for key, value, message in problems:
        with pytest.raises(ConfigError, match=message):
            load_experiment({"experiment": {"name": "x"}}, [f"{key}={value}"])


# --------------------------------------------------------------------- trackers

def test_tensorboard_writes_event_files_a_reader_loads(tmp_path, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = replace(tiny, output=replace(tiny.output, tensorboard=True, root=str(tmp_path)))
    run = evolve(exp)
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    best = [e.value for e in events.Scalars("fitness/best")]
    assert [e.step for e in events.Scalars("fitness/best")] == [0, 1, 2]
    assert {"val_accuracy/mean", "density/best", "throughput/jobs_per_s"} <= set(events.Tags()["scalars"])
    selected = run.history[run.history.selected]
    expected = selected.groupby("generation").fitness.apply(lambda f: max(v[0] for v in f)).tolist()
    assert best == pytest.approx(expected, rel=1e-6)


def test_mlflow_logs_the_generations_and_a_resume_continues_the_same_run(tmp_path, tiny, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = replace(tiny, output=replace(tiny.output, mlflow=True, root=str(tmp_path)),
                  evolution=replace(tiny.evolution, generations=1))
    run = evolve(exp)
    resume(run.path, generations=2)
    client = mlflow.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert found.data.params["evolution.population"] == "4"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "fitness_best")] == [0, 1, 2]


# --------------------------------------------------------------------- user code on a cluster

USER_NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, width=12):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""


@pytest.mark.ray
def test_user_module_not_installed_is_shipped_to_a_two_node_cluster(tmp_path):
    from test_ray import LoopbackCluster, history, metrics, ray_stop

    package = tmp_path / "code" / "userpkg_e2e"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_NET)
    toml = tmp_path / "user.toml"
    toml.write_text(TINY.replace("[model]\nhidden = [32, 16]", '[model]\nfactory = "userpkg_e2e.nets:Net"'))
    # Only the driver finds the package (PYTHONPATH); it runs from elsewhere, so neither its
    # directory nor its script's is one Ray would add to the workers' sys.path.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(package.parent)}

    def run(*args):
        return subprocess.run(neuroevo_cmd() + ["run", str(toml), *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=600)

    local = run("--run-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    cluster = LoopbackCluster(1, [{"num_cpus": 1}])
    try:
        shipped = run("--run-dir", str(tmp_path / "cluster"), "--address", cluster.address,
                      "--set", 'resources.backend="ray"')
        assert shipped.returncode == 0, shipped.stderr[-3000:]
        assert "Ray: 2 node(s)" in shipped.stderr and "shipping code to the workers" in shipped.stderr
        # Without shipping, the workers cannot import it: the control that makes the above mean something.
        unshipped = run("--run-dir", str(tmp_path / "unshipped"), "--address", cluster.address,
                        "--set", 'resources.backend="ray"', "--set", "resources.ship_code=false")
    finally:
        cluster.shutdown()
        ray_stop()
    df = history(tmp_path / "cluster")
    pd.testing.assert_frame_equal(metrics(df), metrics(history(tmp_path / "local")), check_exact=True)
    assert df[df.evaluated].worker.nunique() >= 2
    assert unshipped.returncode == 4 and "No module named 'userpkg_e2e'" in unshipped.stderr, unshipped.stderr[-2000:]


def test_code_to_ship_that_does_not_exist_is_named_before_a_run_exists(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(TINY.replace('backend = "local"', 'backend = "ray"\npy_modules = ["no_such_dir"]'))
    p = subprocess.run(neuroevo_cmd() + ["run", str(path), "--set", f"output.root={str(tmp_path / 'pop')!r}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and f"resources: {tmp_path / 'no_such_dir'} does not exist" in p.stderr, p.stderr
    assert not (tmp_path / "pop").exists()


def test_a_tracker_that_is_not_installed_is_named_before_a_run_exists(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    exp = replace(tiny, output=replace(tiny.output, tensorboard=True, root=str(tmp_path / "pop")))
    with pytest.raises(ConfigError, match=r"output.tensorboard: needs the tensorboard package .*\[tracking\]"):
        evolve(exp)
    assert not (tmp_path / "pop").exists()
