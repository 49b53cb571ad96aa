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
    word of the stream's state, shifted right by one (as a Python int: numpy's scalar
    arithmetic costs more than the shift; one word is all a longer state would start with)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(map(_key_int, keys)))
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng(derive(seed, *keys))
