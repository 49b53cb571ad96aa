"""Seeds derived from the one run seed.

Every random draw in a run comes from a generator seeded by `derive(run_seed, *keys)`, with
keys naming its purpose (e.g. ("train", generation, individual_id)). Streams never share
state, so a result depends only on (seed, keys): not on which worker computed it, in what
order, nor on whether the run was interrupted and resumed in between.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from . import draws


def _key_int(key: int | str) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if key < 0:
            raise ValueError(f"seed keys must be non-negative, got {key}")
        return int(key)
    return _name_int(str(key))


@functools.lru_cache(maxsize=256)
def _name_int(name: str) -> int:
    """A key that names a purpose ("train", "variation"), hashed once: the driver derives a seed
    per individual and generation, always under the same few names."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def derive(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by `keys` under the run seed `seed`: the first 64-bit
    word of numpy's `SeedSequence(seed, spawn_key=keys)` state, shifted right by one (one word
    is all a longer state would start with; computed by draws.seed, numpy's at C speed)."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"the run seed must be non-negative, got {seed}")
    return draws.seed(seed, tuple(map(_key_int, keys))) >> 1


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng(derive(seed, *keys))
