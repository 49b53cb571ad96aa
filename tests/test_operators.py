"""Variation operators: density preservation, exact inheritance, the mask/weight invariant."""

import numpy as np
import pytest

from neuroevo_sparse.problem import models
from neuroevo_sparse.evolution import operators
from neuroevo_sparse.config import ModelConfig, SparsityConfig
from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
from neuroevo_sparse.evolution.operators import Variation

SHAPE = (1, 8, 8)


def setup(kind="mlp", density=0.2, rule="erdos_renyi"):
    cfg = ModelConfig(kind=kind, hidden=[24, 12], channels=[4, 6])
    model = models.build(cfg, SHAPE, 10)
    info = models.layer_info(model, SHAPE)
    names = models.maskable(model, SparsityConfig())
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    counts = target_counts(info, names, density, rule)
    return Variation(info, Init(), "random"), template, info, counts


def population(template, info, counts, n, rng):
    genomes = [random_genome(i, template, info, counts, Init(), rng) for i in range(n)]
    for g in genomes:  # pretend-trained weights: distinct, non-zero, on the masks only
        for name, m in g.masks.items():
            g.weights[name] = np.where(m, rng.normal(size=m.shape), 0).astype(np.float32)
    return genomes


def check_invariants(g, counts):
    assert g.counts() == {name: int(m.sum()) for name, m in g.masks.items()}  # no count taken before a change
    for name, m in g.masks.items():
        assert m.dtype == bool
        assert int(m.sum()) == counts[name], f"{name}: {int(m.sum())} active, target {counts[name]}"
        assert np.all(g.weights[name][~m] == 0), f"{name}: weight outside the mask"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("cx", ["neuron", "connection", "layer"])
def test_crossover_preserves_layer_density(kind, cx):
    var, template, info, counts = setup(kind)
    rng = np.random.default_rng(0)
    genomes = population(template, info, counts, 6, rng)
    for trial in range(60):
        a, b = rng.choice(len(genomes), 2, replace=False)
        c1, c2 = operators.CROSSOVERS[cx](var, genomes[a], genomes[b], (100, 101), 1, rng)
        check_invariants(c1, counts)
        check_invariants(c2, counts)
        assert c1.parents == (genomes[a].id, genomes[b].id) and c1.operator == f"cx_{cx}"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("mutate", [operators.mut_set, operators.mut_rewire])
def test_mutation_preserves_layer_density(kind, mutate):
    var, template, info, counts = setup(kind)
    rng = np.random.default_rng(1)
    g = population(template, info, counts, 1, rng)[0]
    for trial in range(60):
        fraction = rng.uniform(0.01, 0.9)
        child = mutate(var, g, 100 + trial, 1, rng, fraction=fraction)
        check_invariants(child, counts)
        assert child.parents == (g.id,)
        g = child


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method,threshold,regrow_ratio,max_fraction", [
    ("threshold", 0.5, 0.5, 0.3), ("strength", 0.5, 0.0, 0.3), ("threshold", 8.0, 0.0, 1.0)])
def test_structure_mutations_keep_a_fixed_size(kind, method, threshold, regrow_ratio, max_fraction):
    """Issue 38, 6: with sparsity.fixed = true the seed paper's rules, whose regrow_ratio < 1
    regrows fewer than died, still leave every layer at its count (density fell 0.200 -> 0.188
    in four generations; threshold 8 with no regrowth emptied every layer)."""
    from neuroevo_sparse.config import StructureConfig

    var, template, info, counts = setup(kind)
    params = StructureConfig(threshold=threshold, regrow_ratio=regrow_ratio, max_fraction=max_fraction)
    rng = np.random.default_rng(11)
    g = population(template, info, counts, 1, rng)[0]
    for generation in range(4):
        child = operators.mut_structure(var, g, 100 + generation, generation, rng, method=method, params=params)
        check_invariants(child, counts)
        g = child


def test_parents_are_never_modified():
    var, template, info, counts = setup()
    rng = np.random.default_rng(2)
    a, b = population(template, info, counts, 2, rng)
    before = [(k, v.copy()) for g in (a, b) for k, v in {**g.masks, **g.weights}.items()]
    operators.cx_connection(var, a, b, (5, 6), 1, rng)
    operators.mut_set(var, a, 7, 1, rng, fraction=0.5)
    after = [(k, v) for g in (a, b) for k, v in {**g.masks, **g.weights}.items()]
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(before, after))


@pytest.mark.parametrize("cx", ["neuron", "layer"])
def test_crossover_inherits_exact_weights(cx):
    """Each output row comes from one parent (identified by its bias); every connection the
    child has there that the source parent also had holds the parent's exact weight. The
    rest were grown fresh by the density repair and are few."""
    var, template, info, counts = setup()
    rng = np.random.default_rng(3)
    a, b = population(template, info, counts, 2, rng)
    for name in a.masks:
        a.weights[name.replace("weight", "bias")][:] = 1.0
        b.weights[name.replace("weight", "bias")][:] = 2.0
    for _ in range(20):
        child, _ = operators.CROSSOVERS[cx](var, a, b, (10, 11), 1, rng)
        inherited = grown = 0
        for name, m in child.masks.items():
            from_a = child.weights[name.replace("weight", "bias")] == 1.0
            src_mask = np.where(from_a[:, None], a.masks[name], b.masks[name])
            src_w = np.where(from_a[:, None], a.weights[name], b.weights[name])
            kept = m & src_mask
            assert np.array_equal(child.weights[name][kept], src_w[kept])
            inherited += int(kept.sum())
            grown += int((m & ~src_mask).sum())
        assert grown <= 0.1 * (inherited + grown)


def test_connection_crossover_inherits_exact_weights():
    """Positions both parents share hold one of the two parents' exact weights."""
    var, template, info, counts = setup()
    rng = np.random.default_rng(3)
    a, b = population(template, info, counts, 2, rng)
    for _ in range(20):
        child, _ = operators.cx_connection(var, a, b, (10, 11), 1, rng)
        exact_total = active_total = 0
        for name, m in child.masks.items():
            both = m & a.masks[name] & b.masks[name]
            w = child.weights[name][both]
            assert np.all((w == a.weights[name][both]) | (w == b.weights[name][both]))
            exact = m & (((child.weights[name] == a.weights[name]) & a.masks[name]) |
                         ((child.weights[name] == b.weights[name]) & b.masks[name]))
            exact_total += int(exact.sum())
            active_total += int(m.sum())
        assert exact_total >= 0.9 * active_total  # the rest were grown by the density repair


def test_neuron_crossover_moves_whole_rows_with_bias():
    var, template, info, counts = setup(density=1.0)  # dense: no repair, rows are exact copies
    rng = np.random.default_rng(4)
    a, b = population(template, info, counts, 2, rng)
    a.weights["fc1.bias"][:] = 1.0
    b.weights["fc1.bias"][:] = 2.0
    c1, c2 = operators.cx_neuron(var, a, b, (10, 11), 1, rng)
    for row in range(a.masks["fc1.weight"].shape[0]):
        src = a if c1.weights["fc1.bias"][row] == 1.0 else b
        other = b if src is a else a
        assert np.array_equal(c1.weights["fc1.weight"][row], src.weights["fc1.weight"][row])
        assert np.array_equal(c2.weights["fc1.weight"][row], other.weights["fc1.weight"][row])
    assert {1.0, 2.0} == set(np.unique(c1.weights["fc1.bias"]))


def test_set_prunes_the_smallest_magnitudes():
    var, template, info, counts = setup()
    rng = np.random.default_rng(5)
    g = population(template, info, counts, 1, rng)[0]
    child = operators.mut_set(var, g, 1, 1, rng, fraction=0.25)
    for name, m in g.masks.items():
        w = np.abs(g.weights[name][m])
        n = int(round(0.25 * m.sum()))
        threshold = np.sort(w)[n - 1]
        removed = m & ~child.masks[name]
        assert int(removed.sum()) == n
        assert np.abs(g.weights[name][removed]).max() <= threshold
        kept = m & child.masks[name]
        assert np.array_equal(child.weights[name][kept], g.weights[name][kept])
        regrown = child.masks[name] & ~m
        assert int(regrown.sum()) == n and not np.any(regrown & removed)


def test_operators_are_deterministic_given_rng():
    var, template, info, counts = setup()
    a, b = population(template, info, counts, 2, np.random.default_rng(6))
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    x = operators.cx_neuron(var, a, b, (3, 4), 1, r1)[0]
    y = operators.cx_neuron(var, a, b, (3, 4), 1, r2)[0]
    assert all(np.array_equal(x.weights[k], y.weights[k]) for k in x.weights)


@pytest.mark.parametrize("new_weights", ["zero", "random"])
@pytest.mark.parametrize("fan", ["dense", "sparse"])
def test_newborn_weights_follow_the_one_shared_key(new_weights, fan):
    """structure.new_weights decides every newborn of the GA (SET, rewire, the paper's methods,
    the density repair) as it does inside `neuroevo train`: 0, or a draw within the layer's
    init bound (training.init_fan: dense fans, or fans counting active connections only)."""
    from neuroevo_sparse.config import StructureConfig

    _, template, info, counts = setup(density=0.1)
    var = Variation(info, Init(fan=fan), new_weights)
    rng = np.random.default_rng(0)
    (g,) = population(template, info, counts, 1, rng)
    kids = [operators.mut_set(var, g, 1, 1, rng, fraction=0.3), operators.mut_rewire(var, g, 2, 1, rng, fraction=0.3),
            operators.mut_structure(var, g, 3, 1, rng, method="threshold",
                                    params=StructureConfig(threshold=2.0, max_fraction=0.3))]
    for kid in kids:
        born = 0
        for name, m in kid.masks.items():
            new = m & ~g.masks[name]
            born += int(new.sum())
            w = kid.weights[name][new]
            if new_weights == "zero":
                assert not w.any()
            else:
                bound = Init(fan=fan).bound(info[name], m.mean())
                assert np.abs(w).max() <= bound and np.abs(w).min() > 0
                if fan == "sparse":
                    assert bound > Init(fan="dense").bound(info[name], m.mean())
        assert born > 0, kid.operator
