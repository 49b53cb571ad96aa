"""Structure-update rules (structure.py), the single-network harness (dst.py) and the paper's
methods as GA mutations: what is removed and added on small known layers, density, and
convergence of the structure."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse import config
from neuroevo_sparse.problem import data
from neuroevo_sparse.train import single as dst
from neuroevo_sparse.topology import structure
from neuroevo_sparse.evolution.loop import Evolution
from neuroevo_sparse.evaluators import make as make_evaluator
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.store import RunDir


def layer(weights: list[float], active: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    w = np.array(weights, dtype=np.float32)
    m = np.array(active, dtype=bool)
    return m, w * m


# ------------------------------------------------------------------------------ SET

def test_set_removes_smallest_magnitudes_and_regrows_elsewhere():
    m, w = layer([0.9, -0.05, 0.4, 0.01, -0.7, 0.3, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0])
    change = structure.update("set", m, w, (2, 4), t=0, rng=np.random.default_rng(0), fraction=1 / 3)
    assert sorted(change.removed) == [1, 3]          # |-0.05| and |0.01|: the two smallest of six
    assert sorted(change.added) == [6, 7]            # the only positions neither active nor just removed
    assert m.sum() == 6 and not m[[1, 3]].any() and m[[6, 7]].all()
    assert (w[[1, 3, 6, 7]] == 0).all()              # dead and newborn connections hold zero
    assert w[0] == np.float32(0.9) and w[4] == np.float32(-0.7)  # survivors keep their weights


def test_signed_set_prunes_positive_and_negative_weights_apart():
    # Four positive, four negative: the smallest |w| overall are all positive (0.01, 0.02), but
    # SET's reference code takes a quarter of each sign: 0.01 and -0.3.
    m, w = layer([0.01, 0.02, 0.5, 0.9, -0.3, -0.6, -0.8, -1.0, 0, 0], [1] * 8 + [0, 0])
    change = structure.update("set", m, w, (2, 5), t=0, rng=np.random.default_rng(0), fraction=0.25, signed=True)
    assert sorted(change.removed) == [0, 4] and sorted(change.added) == [8, 9]
    m, w = layer([0.01, 0.02, 0.5, 0.9, -0.3, -0.6, -0.8, -1.0, 0, 0], [1] * 8 + [0, 0])
    assert sorted(structure.update("set", m, w, (2, 5), 0, np.random.default_rng(0), fraction=0.25).removed) == [0, 1]


def test_set_with_a_cosine_schedule_converges(digits):
    exp, splits = digits
    exp = replace(exp, training=replace(exp.training, epochs=8),
                  structure=replace(exp.structure, method="set", set_schedule="cosine", fraction=0.3))
    run = dst.train_network(exp, splits, seed=0)
    changed = [r.changed for r in run.records[1:]]
    # alpha/2 (1 + cos(pi t / T)), T = rigl_end x 8 epochs = 6 updates: 0.3, 0.28, 0.225, 0.15, 0.075, 0, ...
    assert changed[:5] == pytest.approx([0.3, 0.2799, 0.225, 0.15, 0.075], abs=0.003)
    assert all(c == 0 for c in changed[5:]) and run.converged_epoch == 5
    with pytest.raises(config.ConfigError, match="structure.set_schedule: must be one of 'constant', 'cosine'"):
        config.from_dict({"structure": {"set_schedule": "linear"}})


def test_set_never_converges_at_a_fixed_rate():
    rng = np.random.default_rng(1)
    m = rng.random(400) < 0.2
    w = (rng.normal(size=400) * m).astype(np.float32)
    start = int(m.sum())
    changed = []
    for t in range(8):
        w[m] += rng.normal(scale=0.5, size=m.sum()).astype(np.float32)  # training moves the weights
        c = structure.update("set", m, w, (20, 20), t, rng, fraction=0.2)
        changed.append(c.fraction_of(int(m.sum())))
    assert min(changed) > 0.15 and m.sum() == start


# ------------------------------------------------------------------------------ RigL

def test_rigl_regrows_where_the_gradient_is_largest():
    m, w = layer([0.9, -0.05, 0.4, 0.01, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    grad = np.array([0, 0, 0, 9.0, 0.1, -5.0, 0.2, 3.0], dtype=np.float32)
    change = structure.update("rigl", m, w, (2, 4), t=0, rng=np.random.default_rng(0), fraction=0.5,
                              grad=grad, t_end=10)
    assert sorted(change.removed) == [1, 3]
    assert sorted(change.added) == [3, 5]            # |9| (just removed: RigL may regrow it) and |-5|
    assert m.sum() == 4 and w[3] == 0 and w[5] == 0


def test_rigl_drop_fraction_follows_the_cosine_and_stops():
    assert structure.rigl_fraction(0.3, 0, 10) == pytest.approx(0.3)
    assert structure.rigl_fraction(0.3, 5, 10) == pytest.approx(0.15)
    assert structure.rigl_fraction(0.3, 10, 10) == 0.0
    with pytest.raises(ValueError, match="needs gradients"):
        structure.update("rigl", np.ones(4, bool), np.ones(4, np.float32), (2, 2), 0, np.random.default_rng(0))


# ------------------------------------------------------------------------ method 1: threshold

def test_threshold_removes_below_a_fraction_of_the_mean_magnitude():
    # active |w| = 1, 1, 1, 0.1, 0.2 -> mean 0.66; level 0.5 -> dies below 0.33: the 0.1 and 0.2
    m, w = layer([1, -1, 1, 0.1, -0.2, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0])
    change = structure.update("threshold", m, w, (2, 4), t=0, rng=np.random.default_rng(0),
                              threshold=0.5, max_fraction=1.0)
    assert sorted(change.removed) == [3, 4]
    assert len(change.added) == 2 and set(change.added) <= {5, 6, 7}
    assert m.sum() == 5


def test_threshold_is_capped_decays_and_can_shrink_the_layer():
    m, w = layer([1, -1, 1, 0.1, -0.2, 0.05, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0])
    change = structure.update("threshold", m, w, (2, 4), t=0, rng=np.random.default_rng(0),
                              threshold=0.5, max_fraction=0.34, regrow_ratio=0.5)
    assert sorted(change.removed) == [3, 5]          # cap: 2 of 6; the two weakest (0.05, 0.1) die first
    assert len(change.added) == 1 and m.sum() == 5   # regrow_ratio 0.5: the layer shrinks
    assert structure.threshold_level(0.5, 0.5, 3) == pytest.approx(0.0625)


def test_threshold_structure_converges_while_set_keeps_changing():
    rng = np.random.default_rng(2)
    m1 = rng.random(2000) < 0.2
    w1 = (rng.normal(size=2000) * m1).astype(np.float32)
    m2, w2 = m1.copy(), w1.copy()
    start = int(m1.sum())
    last1 = last2 = None
    for t in range(10):
        for m, w in ((m1, w1), (m2, w2)):  # training grows newborn connections a little
            w[m & (w == 0)] = rng.normal(scale=0.3, size=int((m & (w == 0)).sum())).astype(np.float32)
        last1 = structure.update("threshold", m1, w1, (40, 50), t, rng, threshold=0.5, threshold_decay=0.5)
        last2 = structure.update("set", m2, w2, (40, 50), t, rng, fraction=0.2)
    assert last1.fraction_of(int(m1.sum())) < 0.01   # threshold 0.5 * 0.5**9: hardly anything dies
    assert last2.fraction_of(int(m2.sum())) > 0.15
    assert m1.sum() == m2.sum() == start              # both keep the density


# ------------------------------------------------------------------------ method 2: strength

def test_strength_grows_between_strong_neurons():
    rng = np.random.default_rng(3)
    shape = (20, 30)
    m = np.zeros(shape, dtype=bool)
    m[:, :3] = True                                   # every post-neuron listens to pre-neurons 0..2
    w = np.where(m, 0.5, 0).astype(np.float32)
    w[0, :3] = 5.0                                    # post-neuron 0 is strong
    w[5, 1] = 1e-4                                    # one weak connection dies each time
    births_row0 = births = 0
    for _ in range(300):
        mm, ww = m.reshape(-1).copy(), w.reshape(-1).copy()
        change = structure.update("strength", mm, ww, shape, 0, rng, threshold=0.5, max_fraction=1.0)
        assert list(change.removed) == [5 * 30 + 1] and len(change.added) == 1
        births_row0 += int(change.added[0] // shape[1] == 0)
        births += 1
    free_share_row0 = 27 / (20 * 30 - 60)             # uniform growth: 5% of births on post-neuron 0
    assert births_row0 / births > 2 * free_share_row0  # strength: about 3x that


def test_weighted_growth_is_without_replacement_and_only_on_free_positions():
    rng = np.random.default_rng(4)
    free = np.zeros(100, bool)
    free[10:60] = True
    score = np.linspace(0, 1, 100)
    got = structure.grow_weighted(free, score, 30, rng)
    assert len(got) == len(set(got)) == 30 and free[got].all()
    assert len(structure.grow_weighted(free, score, 80, rng)) == 50


# --------------------------------------------------------------------- the harness (dst.py)

@pytest.fixture(scope="module")
def digits():
    exp = config.from_dict({"data": {"dataset": "digits"}, "model": {"hidden": [32, 16]},
                            "sparsity": {"density": 0.3},
                            "training": {"epochs": 4, "batch_size": 64, "lr": 0.01}})
    return exp, data.load(exp.data, 0)


@pytest.mark.parametrize("method", ["static", "set", "rigl", "threshold", "strength"])
def test_sparse_methods_keep_the_density_and_learn(digits, method):
    exp, splits = digits
    exp = replace(exp, structure=replace(exp.structure, method=method))
    run = dst.train_network(exp, splits, seed=0)
    densities = [r.density for r in run.records]
    assert max(densities) - min(densities) < 0.01 and abs(densities[0] - 0.3) < 0.01
    assert run.final.test_accuracy > 0.8
    if method == "static":
        assert run.converged_epoch == 0 and all(r.changed == 0 for r in run.records)
    if method == "set":
        assert run.converged_epoch is None and run.records[1].changed == pytest.approx(0.3, abs=0.01)


def test_every_method_starts_from_the_same_network_and_reruns_identically(digits):
    exp, splits = digits
    first = {}
    for method in ("static", "set", "threshold"):
        e = replace(exp, structure=replace(exp.structure, method=method))
        first[method] = dst.train_network(e, splits, seed=5)
    assert len({r.records[0].test_accuracy for r in first.values()}) == 1   # epoch 0: same init
    again = dst.train_network(replace(exp, structure=replace(exp.structure, method="threshold")), splits, seed=5)
    assert [r.test_accuracy for r in again.records] == [r.test_accuracy for r in first["threshold"].records]
    assert (again.masks["fc1.weight"] == first["threshold"].masks["fc1.weight"]).all()


def test_dense_and_magnitude_pruning(digits):
    exp, splits = digits
    dense = dst.train_network(replace(exp, structure=replace(exp.structure, method="dense")), splits, seed=0)
    assert all(r.density == 1.0 for r in dense.records)
    mag = dst.train_network(replace(exp, structure=replace(exp.structure, method="magnitude")), splits, seed=0)
    assert mag.records[2].density == 1.0 and abs(mag.records[3].density - 0.3) < 0.01
    assert mag.converged_epoch == 3 and mag.final.test_accuracy > 0.8
    # the pruned weights are the smallest of the trained dense layer: survivors are all larger
    w, m = mag.state["fc1.weight"], mag.masks["fc1.weight"]
    assert (w[~m] == 0).all()


def test_gradual_pruning_follows_the_cubic_schedule_to_the_target_counts(digits):
    exp, splits = digits
    exp = replace(exp, training=replace(exp.training, epochs=8),
                  structure=replace(exp.structure, method="gradual", gradual_start=0.25, gradual_end=0.75))
    run = dst.train_network(exp, splits, seed=0)
    densities = [r.density for r in run.records]
    # Dense until a quarter of training (end of epoch 2), then pruned at every epoch end along
    # d_f + (1 - d_f)(1 - p)^3, p = (epoch - 2) / 4, down to the target at 3/4 (epoch 6), then fine-tuned.
    assert densities[:3] == [1.0, 1.0, 1.0]
    for epoch in (3, 4, 5):
        p = (epoch - 2) / 4
        assert densities[epoch] == pytest.approx(0.3 + 0.7 * (1 - p) ** 3, abs=0.01)
    assert all(abs(d - 0.3) < 0.01 for d in densities[6:])
    assert all(a >= b for a, b in zip(densities, densities[1:]))
    assert run.converged_epoch == 6 and run.final.test_accuracy > 0.8
    counts = {n: int(m.sum()) for n, m in run.masks.items()}
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    from neuroevo_sparse.topology.genome import target_counts
    assert counts == target_counts(arch.info, arch.maskable, 0.3, exp.sparsity.init)  # what the sparse methods hold
    w, m = run.state["fc1.weight"], run.masks["fc1.weight"]
    assert (w[~m] == 0).all()
    with pytest.raises(config.ConfigError, match="structure.gradual_start: must be < structure.gradual_end"):
        config.from_dict({"structure": {"gradual_start": 0.8, "gradual_end": 0.5}})


def test_a_diverging_network_is_a_clear_error(digits):
    exp, splits = digits
    exp = replace(exp, training=replace(exp.training, lr=1e12), structure=replace(exp.structure, method="set"))
    with pytest.raises(dst.DivergedError, match="lower training.lr"):
        dst.train_network(exp, splits, seed=0)


# ----------------------------------------------------------------------- as GA mutations

def test_methods_as_mutations_run_in_the_ga(tiny, tmp_path):
    exp = replace(tiny, evolution=replace(tiny.evolution, mutations=["threshold", "strength"], crossover="none",
                                          generations=2),
                  output=replace(tiny.output, root=str(tmp_path)))
    splits = data.load(exp.data, exp.experiment.seed)
    run = RunDir.create(exp, tmp_path / "run")
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    evaluator = make_evaluator(exp, spec_for(exp, arch), splits)
    try:
        Evolution(exp, arch, evaluator, run).run()
    finally:
        evaluator.close()
    h = run.read_history()
    ops = set(h[(h.generation > 0) & h.evaluated].operator)
    assert ops <= {"mut_threshold", "mut_strength"} and ops
    assert (h.density - 0.3).abs().max() < 0.02   # regrow_ratio 1: density is kept


def test_structure_config_is_validated(tiny_toml):
    with pytest.raises(config.ConfigError, match="structure.method: must be one of"):
        config.load(tiny_toml, ["structure.method=lottery"])
    with pytest.raises(config.ConfigError, match="structure.treshold: unknown key"):
        config.load(tiny_toml, ["structure.treshold=0.3"])
    with pytest.raises(config.ConfigError, match="evolution.mutations"):
        config.load(tiny_toml, ['evolution.mutations=["rigl"]'])


def test_config_hash_ignores_keys_left_at_their_defaults(tiny_toml):
    plain = config.load(tiny_toml)
    explicit = config.load(tiny_toml, ['structure.method="static"', "training.lr_schedule=\"constant\""])
    assert plain.hash() == explicit.hash()
    assert config.load(tiny_toml, ['structure.method="set"']).hash() != plain.hash()


def test_neuroevo_train_writes_every_epoch_of_every_seed(tiny_toml, tmp_path, capsys):
    import json

    from neuroevo_sparse import cli

    out = tmp_path / "set.json"
    rc = cli.main(["train", str(tiny_toml), "--set", "training.epochs=2", "--set", "structure.method=set",
                   "--seed", "0", "1", "--json", str(out)])
    assert rc == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(len(r["records"]) == 3 for r in runs)
    assert "converged at epoch" in capsys.readouterr().out
    assert cli.main(["train", str(tiny_toml), "--set", "structure.method=lottery"]) == 2


@pytest.mark.parametrize("method", ["strength", "rigl"])
def test_methods_on_a_cnn(method):
    exp = config.from_dict({"data": {"dataset": "digits"}, "model": {"kind": "cnn", "channels": [4, 8]},
                            "sparsity": {"density": 0.3}, "structure": {"method": method},
                            "training": {"epochs": 3, "batch_size": 64, "lr": 0.01}})
    run = dst.train_network(exp, data.load(exp.data, 0), seed=0)
    assert abs(run.final.density - 0.3) < 0.01 and run.records[1].changed > 0
    assert run.final.test_accuracy > run.records[0].test_accuracy


def test_smallest_picks_the_stable_argsort_set_with_ties_and_nans():
    rng = np.random.default_rng(1)
    for trial in range(2000):
        size = int(rng.integers(1, 60))
        mask = rng.random(size) < 0.6
        w = (rng.integers(-4, 5, size) if trial % 2 else rng.normal(size=size)).astype(np.float32)
        if trial % 7 == 0:
            w[rng.integers(size, size=2)] = np.nan
        n = int(rng.integers(0, size + 2))
        active = np.flatnonzero(mask)
        expected = np.sort(active[np.argsort(np.abs(w[active]), kind="stable")[:n]])
        np.testing.assert_array_equal(structure.smallest(mask, w, n), expected)
