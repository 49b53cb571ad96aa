import numpy as np
import pytest

from neuroevo_sparse.problem import models
from neuroevo_sparse.config import ModelConfig, SparsityConfig
from neuroevo_sparse.topology.genome import Genome, Init, layer_densities, random_genome, target_counts


def mlp_info(hidden=(300, 100), shape=(1, 28, 28)):
    model = models.build(ModelConfig(hidden=list(hidden)), shape, 10)
    info = models.layer_info(model, shape)
    return model, info, models.maskable(model, SparsityConfig())


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.5])
def test_erk_meets_global_density(density):
    _, info, names = mlp_info()
    dens = layer_densities(info, names, density, "erdos_renyi")
    total = sum(info[n].size for n in names)
    assert sum(dens[n] * info[n].size for n in names) == pytest.approx(density * total)
    assert all(0 < d <= 1 for d in dens.values())
    # ERK: the small output layer is denser than the wide input layer.
    assert dens["out.weight"] > dens["fc1.weight"]


def test_erk_saturates_small_layers():
    _, info, names = mlp_info(hidden=(512, 8))
    dens = layer_densities(info, names, 0.3, "erdos_renyi")
    assert dens["out.weight"] == 1.0


def test_uniform_rule_and_counts():
    _, info, names = mlp_info()
    counts = target_counts(info, names, 0.1, "uniform")
    assert counts["fc1.weight"] == round(0.1 * 784 * 300)


def test_counting_and_round_trip():
    model, info, names = mlp_info(hidden=(20,), shape=(1, 8, 8))
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    counts = target_counts(info, names, 0.25, "uniform")
    g = random_genome(3, template, info, counts, Init(), np.random.default_rng(0))
    active = sum(counts.values())
    assert g.density() == pytest.approx(active / (64 * 20 + 20 * 10))
    assert g.active_params() == active + 20 + 10  # + dense biases
    assert g.flops(info) == 2 * active
    back = Genome.from_arrays(g.meta(), g.to_arrays())
    assert back.id == 3 and all(np.array_equal(back.weights[k], g.weights[k]) for k in g.weights)
    assert all(np.array_equal(back.masks[k], g.masks[k]) for k in g.masks)
    # Counted once per set of mask arrays: a mask replaced by another array is counted again.
    name = next(iter(g.masks))
    assert g.counts()[name] == counts[name] and g.layer_density()[name] == float(g.masks[name].mean())
    g.masks[name] = np.ones_like(g.masks[name])
    assert g.counts()[name] == g.masks[name].size and g.active(name) == g.masks[name].size


def test_cnn_flops_count_positions():
    shape = (1, 8, 8)
    model = models.build(ModelConfig(kind="cnn", channels=[4], hidden=[]), shape, 10)
    info = models.layer_info(model, shape)
    assert info["conv1.weight"].positions == 64  # 3x3 conv, padding 1, on 8x8
    assert info["conv1.weight"].fan_in == 9


def test_newborns_follow_structure_new_weights():
    from neuroevo_sparse.topology.genome import newborn
    from neuroevo_sparse.problem.models import LayerInfo

    info = LayerInfo((300, 784), 784, 300, 1)
    rng = np.random.default_rng(0)
    assert (newborn("zero", Init(), info, 0.1, 50, rng) == 0).all()
    sparse = Init("kaiming_uniform", "sparse")
    wide = newborn("random", sparse, info, 0.1, 5000, rng)
    assert np.abs(wide).max() <= sparse.bound(info, 0.1) and np.abs(wide).max() > 0.9 * sparse.bound(info, 0.1)
    glorot = newborn("glorot", sparse, info, 0.1, 5000, rng)  # the run's init does not matter
    bound = np.sqrt(6 / (784 + 300))
    assert np.abs(glorot).max() <= bound and np.abs(glorot).max() > 0.9 * bound
