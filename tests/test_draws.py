"""neuroevo_sparse.draws: numpy's draws and seeds, computed in C, equal to numpy's own.

A run's results must not depend on whether the C module was built: every draw and seed it
makes is compared here with numpy's, over populations, sizes, seeds and keys drawn by
hypothesis (both branches of numpy's algorithm, both widths of its bounded integers), and the
bit generator must be left in the state numpy's call leaves it in.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroevo_sparse import draws, seeds

try:
    from neuroevo_sparse import _draws  # noqa: F401
    BUILT = True
except ImportError:
    BUILT = False
native = pytest.mark.skipif(not BUILT, reason="the C module _draws was not built (no C compiler)")


@native
def test_the_built_module_is_used():
    """Built but not used would mean it failed its check against this numpy: the draws are then
    still numpy's, but the driver runs at numpy's speed, which must not go unnoticed."""
    assert draws.native()

# Populations around numpy's switch from Floyd's algorithm to a shuffle (above 10000, more
# than 1/50 drawn), and above 2^32, where the bounded draws take 64 bits.
populations = st.one_of(st.integers(0, 300), st.integers(9_900, 10_100), st.integers(10_001, 60_000),
                        st.integers(2**32 - 5, 2**32 + 5))


@native
@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=populations, fraction=st.floats(0, 1), data=st.data())
def test_choice_draws_what_numpy_draws(seed, n, fraction, data):
    if n > 100_000:  # above 2^32: a small draw (a shuffle of the whole would need 32 GB, in numpy too)
        size = int(fraction * 2_000)
    else:  # anywhere, and at numpy's switch between its two algorithms
        size = data.draw(st.sampled_from([int(fraction * n), n // 50, min(n, n // 50 + 1)]))
    ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
    got = draws.choice(ours, n, size)
    want = theirs.choice(n, size=size, replace=False)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert ours.bit_generator.state == theirs.bit_generator.state
    assert ours.random() == theirs.random()  # and the streams go on alike


@native
@settings(max_examples=500, deadline=None)
@given(seed=st.one_of(st.integers(0, 2**32), st.integers(0, 2**64 - 1), st.integers(2**64, 2**80)),
       keys=st.lists(st.one_of(st.integers(0, 10_000), st.integers(0, 2**64 - 1), st.integers(2**64, 2**70)),
                     max_size=6))
def test_seed_is_numpys_seed_sequence(seed, keys):
    want = int(np.random.SeedSequence(seed, spawn_key=tuple(keys)).generate_state(1, dtype=np.uint64)[0])
    assert draws.seed(seed, tuple(keys)) == want


def test_without_the_module_numpy_draws_the_same(monkeypatch):
    """The fallback (no compiler at install, or a numpy that draws differently) gives what the
    module gives: a run is the same either way."""
    with_module = (draws.choice(np.random.default_rng(3), 5000, 700), seeds.derive(0, "train", 4, 17))
    monkeypatch.setattr(draws, "_native", lambda: None)
    assert not draws.native()
    without = (draws.choice(np.random.default_rng(3), 5000, 700), seeds.derive(0, "train", 4, 17))
    assert np.array_equal(with_module[0], without[0]) and with_module[1] == without[1]


def test_bad_sizes_get_numpys_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="larger sample"):
        draws.choice(rng, 3, 4)
    with pytest.raises(ValueError):
        draws.choice(rng, 3, -1)
    with pytest.raises(ValueError, match="non-negative"):
        seeds.derive(-1, "train")
