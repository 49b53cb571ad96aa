"""numpy's draws without replacement and derived seeds, at the rate the driver makes them.

The GA draws positions several times per layer and child (mutations, repairs, tournaments)
and derives a seed per individual and generation: at population 1024, ~10k calls a
generation. numpy spends most of each on Python-level argument handling (`Generator.choice`
~30 us for ~5 us of drawing; `SeedSequence` ~20 us for a few hundred multiplications).
`_draws.c` (built at install time when a C compiler is there) computes the same numbers.
Whether it does so on this numpy is checked once per process against numpy itself; without the
module, or should a numpy version ever compute differently, numpy's own functions are called:
results never depend on which is used.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np


@functools.cache
def _native() -> ModuleType | None:
    """The C module, or None where it is not built or does not compute as this numpy does."""
    try:
        from . import _draws
    except ImportError:
        return None
    # Both branches of numpy's choice (Floyd's, and the shuffle of a large population) and
    # their edges; seeds with 1 and 2 words, without and with keys of 1 and 2 words. (The
    # capsule does not keep its bit generator alive: the Generators here are held while used.)
    # Populations of 2^32 and more draw bounded integers of 64 bits (and 2^32 - 1 is a bound of its own).
    for seed, n, size in ((0, 0, 0), (1, 1, 1), (2, 7, 7), (3, 100, 37), (4, 10_000, 10_000), (5, 10_001, 200),
                          (6, 10_001, 201), (7, 50_000, 3_000), (8, 1 << 20, 5), (9, 1 << 32, 3),
                          (10, (1 << 32) + 3, 40), (11, 1 << 40, 40)):
        ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        out = np.empty(size, dtype=np.int64)
        _draws.choice(ours.bit_generator.capsule, n, out)
        if not np.array_equal(out, theirs.choice(n, size=size, replace=False)) or \
                ours.bit_generator.state != theirs.bit_generator.state:
            return None
    for seed, keys in ((0, ()), (7, ()), (2**40 + 3, ()), (2**64 - 1, (1,)), (0, (0,)), (5, (2**63 + 5, 3, 0)),
                       (123, tuple(range(9)))):
        if _draws.seed(seed, keys) != _numpy_seed(seed, keys):
            return None
    return _draws


def choice(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`rng.choice(n, size=size, replace=False)`: the same int64 array, the same state after."""
    native = _native()
    if native is None or not 0 <= size <= n:  # numpy's own errors for a bad size
        return rng.choice(n, size=size, replace=False)
    out = np.empty(size, dtype=np.int64)
    bits = rng.bit_generator
    with bits.lock:  # as numpy's own draws hold it: a thread drawing meanwhile waits
        native.choice(bits.capsule, n, out)
    return out


def seed(entropy: int, keys: tuple[int, ...]) -> int:
    """`SeedSequence(entropy, spawn_key=keys).generate_state(1, np.uint64)[0]`, as a Python int:
    the first 64-bit word of the stream's state."""
    native = _native()
    value = native.seed(entropy, keys) if native is not None else None
    return _numpy_seed(entropy, keys) if value is None else value


def _numpy_seed(entropy: int, keys: tuple[int, ...]) -> int:
    return int(np.random.SeedSequence(entropy=entropy, spawn_key=keys).generate_state(1, dtype=np.uint64)[0])


def native() -> bool:
    """Whether the C module is used (built, and computing as this numpy does)."""
    return _native() is not None
