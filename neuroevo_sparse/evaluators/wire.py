"""Arrays as they cross to a Ray worker and back: parents once, children as what differs.

A child of a generation is its parent's arrays with a few positions changed (a mutation), or
its two parents' arrays interleaved with a few changed (a crossover). So the Ray evaluator puts
each parent's arrays in the object store once per `evaluate` call (`pack` without bases) and
sends each child as a `Packed` relative to its parents (`pack` with the job's `bases`): per
tensor, the cheapest of

- "patch": a start (a base's tensor, or zeros), the positions where the child differs from it
  (int32 indices or a packed bitmap, whichever is smaller), which of those are the other base's
  (a crossover child's second parent: one bit each), and for the rest the new values (the
  weight's non-zero ones, and the mask's bits packed). A child equal to its parent is an empty
  patch. Against zeros, a masked tensor is its active positions and values;
- "active": a masked tensor that is zero outside its mask as the mask's packed bits and the
  active values (results: their jobs' masks are known at both ends, so only the values);
- "dense": the arrays as they are, where nothing else is smaller (a child is never shipped
  larger than whole).

Every comparison is of the values' bits, so `unpack` gives back the arrays that were packed,
bit for bit (-0.0 and NaN included), in their order, dtypes and shapes: a job trains on a Ray
worker exactly as it trains in the driver's process.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ..train.jobs import Base

Arrays = Mapping[str, np.ndarray]

DENSE, ACTIVE, PATCH = 0, 1, 2
ZEROS = -1  # a patch's start: no base


class Tensor(NamedTuple):
    """One weight tensor (with its mask, if it has one) as it crosses."""

    name: str
    shape: tuple[int, ...]
    dtype: str                      # the weight's
    form: int                       # DENSE, ACTIVE or PATCH
    masked: bool
    # DENSE: `values` the weight, `mask` the mask (or None). ACTIVE: `values` the active
    # weights, `mask` the mask's packed bits (None where the receiver knows the mask).
    # PATCH: see the module's docstring.
    values: np.ndarray
    mask: np.ndarray | None = None
    start: int = ZEROS              # the base the patch starts from
    other: int = ZEROS              # the base the flagged changed positions come from
    where: np.ndarray | None = None  # the changed positions: int32 indices, or a bitmap if `bitmap`
    bitmap: bool = False
    taken: np.ndarray | None = None  # packed bits over the changed positions: the other base's
    nonzero: np.ndarray | None = None  # packed bits over the rest: non-zero weights, in `values`

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.values, self.mask, self.where, self.taken, self.nonzero) if a is not None)


class Packed(NamedTuple):
    """A job's masks and weights (or a result's weights: no mask order) as they cross."""

    tensors: tuple[Tensor, ...]     # in the weights' order
    masks: tuple[str, ...]          # the masks' order
    loose: tuple[tuple[str, np.ndarray], ...] = ()  # masks of no weight (none in a genome), as they are

    def nbytes(self) -> int:
        """The arrays' bytes (what pickling adds is a few hundred bytes)."""
        return sum(t.nbytes() for t in self.tensors) + sum(m.nbytes for _, m in self.loose)


# ----------------------------------------------------------------------------- bits

def _bits(a: np.ndarray) -> np.ndarray | None:
    """A flat unsigned-integer view of an array's bits; None for a dtype without one."""
    a = np.ascontiguousarray(a).reshape(-1)
    if a.dtype.hasobject or a.dtype.itemsize not in (1, 2, 4, 8):
        return None
    return a.view(f"u{a.dtype.itemsize}")


def _positions(flags: np.ndarray) -> tuple[np.ndarray, bool]:
    """The set positions of a flat boolean array: int32 indices or a packed bitmap, the smaller."""
    count = int(np.count_nonzero(flags))
    if count * 4 <= (flags.size + 7) // 8 and flags.size < 2**31:
        return np.flatnonzero(flags).astype(np.int32), False
    return np.packbits(flags), True


def _unpositions(where: np.ndarray, bitmap: bool, size: int) -> np.ndarray:
    if bitmap:
        return np.flatnonzero(np.unpackbits(where, count=size))
    return where.astype(np.intp)


def _unbits(packed: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(packed, count=count).astype(bool)


# ----------------------------------------------------------------------------- packing

def _patch(name: str, w: np.ndarray, m: np.ndarray | None, start: int, s: tuple | None,
           other: int, o: tuple | None) -> Tensor | None:
    """`w` (and its mask `m`) as the positions where it differs from a start `s` (a base's
    (weight bits, mask) or None: zeros), those of them taken from `o`, and the rest's values."""
    wb = _bits(w)
    if wb is None:
        return None
    sb, sm = s if s is not None else (None, None)
    changed = wb != 0 if sb is None else wb != sb
    if m is not None:
        mf = m.reshape(-1)
        changed |= mf if sm is None else mf != sm
    taken = None
    if o is not None:
        ob, om = o
        from_other = changed & (wb == ob)
        if m is not None:
            from_other &= mf == om
        taken = from_other[changed]
        rest = changed & ~from_other
    else:
        rest = changed
    where, bitmap = _positions(changed)
    nz = wb[rest] != 0
    return Tensor(name, w.shape, w.dtype.str, PATCH, m is not None,
                  np.ascontiguousarray(w.reshape(-1)[rest][nz]),
                  np.packbits(mf[rest]) if m is not None else None,
                  start, other if o is not None else ZEROS, where, bitmap,
                  np.packbits(taken) if taken is not None else None, np.packbits(nz))


def _active(name: str, w: np.ndarray, m: np.ndarray, ship_mask: bool) -> Tensor | None:
    """A masked tensor zero outside its mask, down to the bit: the active values (and the mask)."""
    wb = _bits(w)
    if wb is None or m.dtype != bool or m.shape != w.shape:
        return None
    mf = m.reshape(-1)
    if np.any(wb[~mf]):
        return None
    return Tensor(name, w.shape, w.dtype.str, ACTIVE, True, np.ascontiguousarray(w.reshape(-1)[mf]),
                  np.packbits(mf) if ship_mask else None)


def _dense(name: str, w: np.ndarray, m: np.ndarray | None) -> Tensor:
    return Tensor(name, w.shape, w.dtype.str, DENSE, m is not None, np.asarray(w), None if m is None else np.asarray(m))


def _fits(base_w: np.ndarray | None, base_m: np.ndarray | None, w: np.ndarray, m: np.ndarray | None) -> bool:
    """Whether a base's tensor can be a start or a source for `w` (same shape and dtype; its
    mask too, where `w` has one)."""
    if base_w is None or base_w.shape != w.shape or base_w.dtype != w.dtype:
        return False
    if m is None:
        return True
    return base_m is not None and base_m.shape == m.shape and base_m.dtype == bool


def pack(masks: Arrays, weights: Arrays, bases: Sequence[Base] = ()) -> Packed:
    """A job's arrays as the smallest set of patches on its `bases` (up to two are used), active
    values or dense arrays; `unpack(packed, bases)` gives them back, bit for bit."""
    tensors = []
    for name, w in weights.items():
        w = np.asarray(w)
        m = masks.get(name)
        if m is not None:
            m = np.asarray(m)
            if m.dtype != bool or m.shape != w.shape:  # not a mask this module knows: as it is
                tensors.append(_dense(name, w, m))
                continue
        candidates = [_dense(name, w, m)]
        active = _active(name, w, m, ship_mask=True) if m is not None else None
        # Against zeros, a patch of a masked tensor is its active form and more.
        candidates.append(active or _patch(name, w, m, ZEROS, None, ZEROS, None))
        usable = [k for k, b in enumerate(bases[:2]) if _fits(b.weights.get(name), b.masks.get(name), w, m)]
        views = {k: (_bits(bases[k].weights[name]),
                     bases[k].masks[name].reshape(-1) if m is not None else None) for k in usable}
        for k in usable:
            others = [j for j in usable if j != k]
            j = others[0] if others else None
            candidates.append(_patch(name, w, m, k, views[k], ZEROS if j is None else j,
                                     None if j is None else views[j]))
        tensors.append(min((c for c in candidates if c is not None), key=Tensor.nbytes))
    return Packed(tuple(tensors), tuple(masks), tuple((n, np.asarray(m)) for n, m in masks.items() if n not in weights))


def pack_weights(weights: Arrays, masks: Arrays) -> Packed:
    """A result's weights, whose job's `masks` the receiver has: active values where a tensor
    is zero outside its mask, else a patch on zeros or the dense array, the smallest."""
    tensors = []
    for name, w in weights.items():
        w = np.asarray(w)
        m = masks.get(name)
        active = _active(name, w, np.asarray(m), ship_mask=False) if m is not None else None
        candidates = [_dense(name, w, None), active or _patch(name, w, None, ZEROS, None, ZEROS, None)]
        tensors.append(min((c for c in candidates if c is not None), key=Tensor.nbytes))
    return Packed(tuple(tensors), ())


# ----------------------------------------------------------------------------- unpacking

def unpack(packed: Packed, bases: Sequence[tuple[Arrays, Arrays]] = (),
           known_masks: Arrays | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(masks, weights) as they were packed. `bases`: the (masks, weights) of the bases `pack`
    was given, in their order; `known_masks`: the masks `pack_weights` was given."""
    masks: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for t in packed.tensors:
        dtype, size = np.dtype(t.dtype), int(np.prod(t.shape, dtype=np.int64))
        if t.form == DENSE:
            weights[t.name] = t.values
            if t.mask is not None:
                masks[t.name] = t.mask
            continue
        if t.form == ACTIVE:
            m = (_unbits(t.mask, size) if t.mask is not None else np.asarray(known_masks[t.name]).reshape(-1))
            w = np.zeros(size, dtype=dtype)
            w[m] = t.values
            weights[t.name] = w.reshape(t.shape)
            if t.mask is not None:
                masks[t.name] = m.reshape(t.shape)
            continue
        if t.start == ZEROS:
            w = np.zeros(size, dtype=dtype)
            m = np.zeros(size, dtype=bool) if t.masked else None
        else:
            bm, bw = bases[t.start]
            w = np.array(bw[t.name], dtype=dtype).reshape(-1)
            m = np.array(bm[t.name], dtype=bool).reshape(-1) if t.masked else None
        wb = w.view(f"u{dtype.itemsize}")
        changed = _unpositions(t.where, t.bitmap, size)
        if t.taken is not None:
            taken = _unbits(t.taken, len(changed))
            bm, bw = bases[t.other]
            src = changed[taken]
            wb[src] = _bits(np.asarray(bw[t.name]))[src]
            if m is not None:
                m[src] = np.asarray(bm[t.name]).reshape(-1)[src]
            changed = changed[~taken]
        nz = _unbits(t.nonzero, len(changed))
        wb[changed] = 0
        wb[changed[nz]] = _bits(t.values)
        if m is not None:
            m[changed] = _unbits(t.mask, len(changed))
            masks[t.name] = m.reshape(t.shape)
        weights[t.name] = w.reshape(t.shape)
    masks.update(packed.loose)
    if packed.masks:
        masks = {name: masks[name] for name in packed.masks}
    return masks, weights


def unpack_weights(packed: Packed, masks: Arrays) -> dict[str, np.ndarray]:
    """The weights `pack_weights(weights, masks)` was given."""
    return unpack(packed, known_masks=masks)[1]
