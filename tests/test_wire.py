"""What crosses to a Ray worker (evaluators/wire.py): children as what differs from their
parents, given back bit for bit, and never larger than the child shipped whole."""

import numpy as np
import pytest

from neuroevo_sparse.evaluators import wire
from neuroevo_sparse.evolution import operators
from neuroevo_sparse.train.jobs import Base

from test_operators import population, setup


def dense_bytes(masks, weights) -> int:
    return sum(w.nbytes for w in weights.values()) + sum(m.nbytes for m in masks.values())


def base(g) -> Base:
    return Base(g.id, g.masks, g.weights)


def assert_same(got, want) -> None:
    """Equal down to the bits, in the same order, dtypes and shapes."""
    assert list(got) == list(want)
    for name in want:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name


def round_trip(child, bases):
    packed = wire.pack(child.masks, child.weights, [base(b) for b in bases])
    masks, weights = wire.unpack(packed, [(b.masks, b.weights) for b in bases])
    assert_same(masks, child.masks)
    assert_same(weights, child.weights)
    assert packed.nbytes() <= dense_bytes(child.masks, child.weights)
    return packed


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_children_come_back_bit_for_bit_and_smaller_than_whole(kind):
    var, template, info, counts = setup(kind)
    rng = np.random.default_rng(0)
    parents = population(template, info, counts, 4, rng)
    whole = dense_bytes(parents[0].masks, parents[0].weights)
    for cx in operators.CROSSOVERS.values():
        for child in cx(var, parents[0], parents[1], (10, 11), 1, rng):
            packed = round_trip(child, parents[:2])
            assert packed.nbytes() < whole / 3
            # Against its first parent alone it still comes back exact.
            round_trip(child, parents[:1])
    for mutate in (operators.mut_set, operators.mut_rewire):
        child = mutate(var, parents[2], 12, 1, rng, fraction=0.2)
        packed = round_trip(child, parents[2:3])
        assert packed.nbytes() < whole / 5
    # A clone (or a survivor trained again) is its base: nothing but the bookkeeping.
    assert round_trip(operators.clone(parents[3], 13, 1), parents[3:4]).nbytes() < 100


def test_a_parent_alone_crosses_as_its_active_values():
    var, template, info, counts = setup("mlp", density=0.1)
    g = population(template, info, counts, 1, np.random.default_rng(1))[0]
    packed = round_trip(g, [])
    active = sum(int(m.sum()) for m in g.masks.values())
    masked = sum(m.size for m in g.masks.values())
    unmasked = sum(w.nbytes for n, w in g.weights.items() if n not in g.masks)
    assert packed.nbytes() <= 4 * active + masked / 8 + unmasked + 64


def test_odd_values_and_tensors_round_trip_exactly():
    """-0.0 and NaN outside or inside a mask, integer buffers, 0-d arrays, a base of another
    shape or without the tensor, a mask of no weight: all come back as they were."""
    rng = np.random.default_rng(2)
    m = rng.random((6, 5)) < 0.3
    w = np.where(m, rng.normal(size=m.shape), 0).astype(np.float32)
    parent = Base(0, {"a": m, "b": m}, {"a": w, "b": w, "n": np.array(3, dtype=np.int64),
                                         "v": np.zeros(4, dtype=np.float32)})
    cm = m.copy()
    cm[0, :] = ~cm[0, :]
    cw = np.where(cm, w + 1, 0).astype(np.float32)
    cw[~cm] = -0.0  # zero, but not down to the bit
    cw[1, 1] = np.nan
    masks = {"a": cm, "b": m, "loose": np.ones(3, dtype=bool)}
    weights = {"n": np.array(5, dtype=np.int64), "a": cw, "b": w.copy(),
               "v": np.array([0.0, -0.0, 1.0, np.inf], dtype=np.float32),
               "x": np.arange(6, dtype=np.float64).reshape(2, 3), "h": np.ones(2, dtype=np.float16)}
    for bases in ([], [parent], [parent, Base(1, {"a": m[:3]}, {"a": w[:3], "x": np.zeros(2)})]):
        packed = wire.pack(masks, weights, bases)
        got_m, got_w = wire.unpack(packed, [(b.masks, b.weights) for b in bases])
        assert_same(got_m, masks)
        assert_same(got_w, weights)


def test_result_weights_cross_as_active_values():
    rng = np.random.default_rng(3)
    m = rng.random((40, 30)) < 0.1
    w = np.where(m, rng.normal(size=m.shape), 0).astype(np.float32)
    weights = {"fc.weight": w, "fc.bias": rng.normal(size=40).astype(np.float32)}
    packed = wire.pack_weights(weights, {"fc.weight": m})
    assert_same(wire.unpack_weights(packed, {"fc.weight": m}), weights)
    assert packed.nbytes() == 4 * int(m.sum()) + 40 * 4
    w[~m] = -0.0  # no longer zero to the bit: still exact
    packed = wire.pack_weights(weights, {"fc.weight": m})
    assert_same(wire.unpack_weights(packed, {"fc.weight": m}), weights)
