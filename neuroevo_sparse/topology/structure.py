"""Structure-update rules: which connections of one masked tensor die and which are born.

One rule, two uses: `neuroevo_sparse.train.single` applies it inside a single network's training run
(every epoch or every `update_every` steps), and `operators` applies it as a GA mutation (the
update index is then the generation). A rule sees one tensor at a time as flat numpy arrays
and returns the positions it removed and added; the caller edits mask and weights. Every
random choice comes from the Generator passed in.

Rules (`structure.method`):

- "set" (Mocanu et al. 2018): remove the `fraction` (zeta) of active connections with the
  smallest |w|; regrow as many uniformly at random among positions that were not just removed.
  The rate never decays, so SET's structure never stops changing. With `signed`, as SET's
  reference code does, the positive and the negative weights are pruned apart: the zeta of the
  positive ones nearest zero and the zeta of the negative ones nearest zero.
- "rigl" (Evci et al. 2020): remove the smallest-|w| fraction alpha/2 (1 + cos(pi t / T_end)) and
  regrow as many where the dense gradient |dL/dw| of inactive positions is largest; no update
  after `rigl_end` of training. Needs gradients, so it runs inside training, not as a mutation.
- "threshold" (the seed paper's first method, as we read it): a connection dies when its |w|
  falls below `threshold_t` times the layer's mean active |w|; as many are born at random
  (times `regrow_ratio`). threshold_t = threshold * threshold_decay**t, so the number of deaths
  shrinks geometrically and the structure converges; at most `max_fraction` die per update.
- "strength" (the seed paper's second method, as we read it): deaths as in "threshold";
  births are drawn with probability proportional to strength(post) * strength(pre), the
  summed |w| of the two neurons' active connections: new synapses form between neurons that
  already carry signal (preferential attachment, as in the scale-free topologies SET reports).

The library holds only the seed paper's abstract and introduction (Naji, Abtahi, Marvasti,
arXiv 2103.07674): prune-by-magnitude during training, a structure that converges, and fewer
parameters than dense. The death threshold, its decay, the growth rule and the cap are our
choices, each a config key in `[structure]` (see config.StructureConfig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import draws

METHODS_WITHOUT_GRADIENTS = ("set", "threshold", "strength")


@dataclass(frozen=True)
class Change:
    """Flat positions of one tensor that one update removed and added."""

    removed: np.ndarray
    added: np.ndarray

    def fraction_of(self, active: int) -> float:
        """Share of the active connections that changed (the convergence measure)."""
        return len(self.added) / max(active, 1)


def positions(mask: np.ndarray) -> np.ndarray:
    """`np.flatnonzero(mask)` without the cost of its wrappers, which is as much as the search on
    a layer of the driver's (it lists positions several times per layer and child)."""
    return mask.ravel().nonzero()[0]


def smallest(mask: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """The `n` active positions with the smallest |w|, in position order; ties (and NaNs, which
    count as largest) are broken by position, so the set is the one a stable argsort picks.

    A partition rather than a sort: this runs on the driver between generations, where every
    millisecond is a millisecond all workers wait."""
    return smallest_of(positions(mask), w, n)


def smallest_of(active: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """`smallest` of the sorted positions `active` (a mask's, already listed)."""
    n = min(n, len(active))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n == len(active):
        return active
    mag = np.abs(w[active])
    kth = np.partition(mag, n - 1)[n - 1]
    nan = kth != kth  # NaN (np.isnan costs a ufunc call on a scalar)
    if not nan:
        pick = mag <= kth
        if np.count_nonzero(pick) == n:  # the usual case: no tie at kth beyond the n, one comparison
            return active[pick]
    # More ties at kth (or NaNs) than can be taken: the first ones in position order.
    pick = ~np.isnan(mag) if nan else mag < kth
    tied = np.isnan(mag) if nan else mag == kth
    pick[np.flatnonzero(tied)[:n - np.count_nonzero(pick)]] = True
    return active[pick]


def below_threshold(mask: np.ndarray, w: np.ndarray, level: float, max_fraction: float) -> np.ndarray:
    """Active positions with |w| < level * mean active |w| (at most max_fraction of them: the weakest)."""
    active = np.flatnonzero(mask)
    if len(active) == 0:
        return np.empty(0, dtype=np.int64)
    mag = np.abs(w[active])
    weak = np.zeros_like(mask)
    weak[active[mag < level * mag.mean()]] = True
    return smallest(weak, w, int(math.floor(max_fraction * len(active))))


def choose(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`rng.choice(candidates, size=n, replace=False)` for a 1-d array: the same draws and the
    same result, without the checks `choice` adds, which cost several times the draw itself
    on the driver's layer sizes (draws.py)."""
    return candidates[draws.choice(rng, len(candidates), n)]


def grow_random(free: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` positions drawn uniformly without replacement from the boolean `free`."""
    candidates = positions(free)
    n = min(n, len(candidates))
    if n <= 0:
        return candidates[:0]
    chosen = choose(candidates, n, rng)
    chosen.sort()
    return chosen


def grow_weighted(free: np.ndarray, score: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` positions without replacement, each with probability proportional to `score`.

    Exponential-race sampling (Efraimidis and Spirakis): the `n` smallest Exp(1)/score keys are a
    weighted sample without replacement, in O(size) instead of numpy's O(size * n).
    """
    candidates = np.flatnonzero(free)
    n = min(n, len(candidates))
    if n <= 0:
        return candidates[:0]
    s = score[candidates].astype(np.float64) + 1e-12
    keys = rng.exponential(size=len(candidates)) / s
    pick = np.argpartition(keys, n - 1)[:n] if n < len(candidates) else np.arange(len(candidates))
    return np.sort(candidates[pick])


def grow_top(free: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """The `n` free positions with the largest score (ties by position)."""
    candidates = np.flatnonzero(free)
    n = min(n, len(candidates))
    if n <= 0:
        return candidates[:0]
    order = np.argsort(-score[candidates], kind="stable")[:n]
    return np.sort(candidates[order])


def neuron_strength(mask: np.ndarray, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-position score strength(post) * strength(pre) for a (out, in, ...) weight tensor."""
    mag = np.abs(w * mask).reshape(shape[0], -1)  # (post, pre * kernel)
    post = mag.sum(axis=1)
    pre = mag.sum(axis=0)
    # Adding the mean strength (as Barabasi-Albert adds 1 to a degree) keeps a neuron that lost
    # all its connections reachable: a strong pair is preferred, an isolated neuron not excluded.
    return np.outer(post + post.mean(), pre + pre.mean()).reshape(-1)


def rigl_fraction(alpha: float, t: int, t_end: int) -> float:
    """RigL's cosine-decayed drop fraction at update `t` of `t_end` (0 from t_end on)."""
    return 0.0 if t >= t_end else alpha / 2 * (1 + math.cos(math.pi * t / t_end))


def threshold_level(threshold: float, decay: float, t: int) -> float:
    return threshold * decay ** t


def update(method: str, mask: np.ndarray, w: np.ndarray, shape: tuple[int, ...], t: int,
           rng: np.random.Generator, *, fraction: float = 0.3, threshold: float = 0.5,
           threshold_decay: float = 0.5, max_fraction: float = 0.3, regrow_ratio: float = 1.0,
           grad: np.ndarray | None = None, t_end: int = 1, signed: bool = False) -> Change:
    """Apply one structure update to a flat mask and weights in place; return what changed.

    Removed positions get weight 0; added positions get weight 0 too (RigL's choice: a new
    connection starts silent and is grown by the gradient, so an update never jolts the
    network's function). `t` is the update index (epoch, step block or generation).
    """
    active = positions(mask)
    if method == "set" and signed:
        parts = [smallest(mask & side, w, int(round(fraction * np.count_nonzero(mask & side))))
                 for side in (w > 0, w < 0)]
        removed = np.sort(np.concatenate(parts))
        n_add = len(removed)
    elif method == "set":
        removed = smallest_of(active, w, int(round(fraction * len(active))))
        n_add = len(removed)
    elif method == "rigl":
        if grad is None:
            raise ValueError("structure.method = \"rigl\" needs gradients: it runs inside training only")
        removed = smallest_of(active, w, int(round(rigl_fraction(fraction, t, t_end) * len(active))))
        n_add = len(removed)
    elif method in ("threshold", "strength"):
        removed = below_threshold(mask, w, threshold_level(threshold, threshold_decay, t), max_fraction)
        n_add = int(round(regrow_ratio * len(removed)))
    else:
        raise ValueError(f"unknown structure method {method!r}")
    mask[removed] = False
    w[removed] = 0.0
    free = ~mask
    if method != "rigl" and mask.size - len(active) >= n_add:
        free[removed] = False  # RigL may regrow a just-removed position; the others only if
        # the layer has no other free position
    if method == "rigl":
        added = grow_top(free, np.abs(grad), n_add)
    elif method == "strength":
        added = grow_weighted(free, neuron_strength(mask, w, shape), n_add, rng)
    else:
        added = grow_random(free, n_add, rng)
    mask[added] = True
    w[added] = 0.0
    return Change(removed=removed, added=added)
