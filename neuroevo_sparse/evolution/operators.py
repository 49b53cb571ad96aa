"""Variation operators on mask genomes, registered in a DEAP toolbox.

All operators are pure: they return new genomes and never modify their parents, and every
random choice comes from the numpy Generator passed in (derived from the run seed and the
generation), never from Python's global `random`.

Size. With `sparsity.fixed = true` each crossover ends with `repair`, which brings every
layer back to its target count of active connections (the parents' mean count, the total kept
exact). With `sparsity.fixed = false` size is searched: a child keeps the counts it inherited
(neuron- and connection-wise crossover give counts between its parents', layer-wise crossover
a parent's), "grow" and "prune" scale every layer by (1 +/- resize_fraction), and every
genome is brought back within [min_density, max_density] (`Variation.fit`). "move" shifts
connections from one layer to another at a constant total, in either mode, so the per-layer
allocation evolves. Surplus connections are removed by smallest |w| (the least useful, as in
SET); missing ones are grown at random or by `evolution.grow_rule`. Every grown connection
starts at `structure.new_weights` (zero, or a fresh draw from the layer's init), the one rule
shared with the structure rules of `neuroevo train`. Inherited connections keep their parent's
exact trained weight.

The step of "grow"/"prune" is a fixed fraction, not self-adapted (as an evolution strategy's
sigma would be): a multiplicative step is already scale-free, the same relative move at 1% and
at 50% density, and NSGA-II keeps every size that is best for its accuracy, so there is no
single optimum for a step size to home in on.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from deap import base

from ..topology import structure
from ..config.schema import Experiment, StructureConfig
from ..topology.genome import Genome, Init, newborn
from ..problem.models import LayerInfo

Operator = Callable[..., Genome]


class Variation:
    """What operators need to know about the model: layer shapes, and how a connection is born."""

    def __init__(self, info: dict[str, LayerInfo], init: Init, new_weights: str,
                 bounds: tuple[int, int] | None = None, grow_rule: str = "random"):
        self.info = info
        self.init = init
        self.new_weights = new_weights
        self.bounds = bounds  # (least, most) active masked connections; None: fixed size
        self.grow_rule = grow_rule

    @classmethod
    def of(cls, exp: Experiment, info: dict[str, LayerInfo], names: list[str]) -> "Variation":
        sp = exp.sparsity
        total = sum(info[n].size for n in names)
        bounds = None if sp.fixed else (math.ceil(sp.min_density * total), math.floor(sp.max_density * total))
        return cls(info, Init.of(exp.training), exp.structure.new_weights, bounds, exp.evolution.grow_rule)

    def born(self, name: str, n: int, active: int, rng: np.random.Generator) -> np.ndarray:
        """Weights of `n` connections born in layer `name`, which then has `active` connections."""
        return newborn(self.new_weights, self.init, self.info[name], active / self.info[name].size, n, rng)

    # ------------------------------------------------------------------ density repair
    def repair(self, child: Genome, targets: dict[str, int], rng: np.random.Generator) -> Genome:
        """Every layer back to its target count (fixed size), missing connections grown at random."""
        self.resize(child.masks, child.weights, targets, rng, self.grow)
        return child

    def grow(self, name: str, mask: np.ndarray, w: np.ndarray, n: int,
             rng: np.random.Generator, exclude: np.ndarray | None = None) -> None:
        """Activate `n` random inactive positions of a flat mask, with newborn weights; not at the
        flat positions `exclude` (those a mutation just removed) unless nothing else is free."""
        free = ~mask
        if exclude is not None:  # cleared by position: no mask of the layer's size to build and join
            free[exclude] = False
        candidates = structure.positions(free)
        if len(candidates) < n:  # nothing else free: allow re-growing the excluded positions
            candidates = structure.positions(~mask)
        new = structure.choose(candidates, min(n, len(candidates)), rng)
        mask[new] = True
        w[new] = self.born(name, len(new), int(np.count_nonzero(mask)), rng)

    def grow_by_rule(self, name: str, mask: np.ndarray, w: np.ndarray, n: int, rng: np.random.Generator) -> None:
        """Activate `n` inactive positions chosen by `evolution.grow_rule`, with newborn weights."""
        if self.grow_rule == "strength":
            score = structure.neuron_strength(mask, w, self.info[name].shape)
            new = structure.grow_weighted(~mask, score, n, rng)
        else:
            new = structure.grow_random(~mask, n, rng)
        mask[new] = True
        w[new] = self.born(name, len(new), int(np.count_nonzero(mask)), rng)

    # ------------------------------------------------------------------ size
    def fit(self, counts: dict[str, int]) -> dict[str, int]:
        """`counts` brought within the size bounds (each layer keeps at least one connection and
        at most its size); counts already within them are returned as they are. Out of bounds,
        every layer is scaled by the same factor, so the allocation between layers is kept."""
        sizes = {n: self.info[n].size for n in counts}
        out = {n: min(sizes[n], max(1, c)) for n, c in counts.items()}
        if self.bounds is None:
            return out
        lo, hi = self.bounds
        total = sum(out.values())
        if lo <= total <= hi:
            return out
        goal = hi if total > hi else lo
        scaled = {n: c * goal / total for n, c in out.items()}
        out = {n: min(sizes[n], max(1, math.floor(v) if total > hi else math.ceil(v))) for n, v in scaled.items()}
        # Rounding and the per-layer limits can leave it a few off: one connection at a time,
        # from the layer with the most (when over) or the most room (when under).
        while sum(out.values()) > hi:
            out[max((n for n in out if out[n] > 1), key=lambda n: out[n])] -= 1
        while sum(out.values()) < lo:
            out[max(out, key=lambda n: sizes[n] - out[n])] += 1
        return out

    def resize(self, masks: dict[str, np.ndarray], weights: dict[str, np.ndarray], counts: dict[str, int],
               rng: np.random.Generator, grow: Callable[..., None] | None = None) -> None:
        """Bring every layer to `counts`: remove the smallest |w|; grow by `grow_rule` (or `grow`)."""
        for name, target in counts.items():
            mask, w = masks[name].reshape(-1), weights[name].reshape(-1)
            count = int(np.count_nonzero(mask))
            if count > target:
                drop = structure.smallest(mask, w, count - target)
                mask[drop] = False
                w[drop] = 0.0
            elif count < target:
                (grow or self.grow_by_rule)(name, mask, w, target - count, rng)


def _targets(a: Genome, b: Genome) -> dict[str, int]:
    """Per layer the parents' mean count. When the parents have the same total (fixed size,
    allocations moved by "move") the children get exactly that total: half-counts rounded the
    wrong way are turned, first layers first."""
    ca, cb = a.counts(), b.counts()
    sums = {n: ca[n] + cb[n] for n in a.masks}
    out = {n: int(round(s / 2)) for n, s in sums.items()}
    total = sum(ca[n] for n in a.masks)
    if total == sum(cb[n] for n in b.masks):
        gap = total - sum(out.values())
        for n in (n for n, s in sums.items() if s % 2):
            if gap == 0:
                break
            turned = (sums[n] + 1) // 2 if gap > 0 else sums[n] // 2
            gap -= turned - out[n]
            out[n] = turned
    return out


def _child(gid: int, parents: tuple[Genome, ...], generation: int, operator: str,
           masks: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> Genome:
    # The child's weights are its parents' trained ones, so it carries their training: a
    # mutant its parent's steps, a crossover child (weights from both) their mean.
    steps = int(round(sum(p.lineage_steps for p in parents) / len(parents))) if parents else 0
    return Genome(id=gid, masks=masks, weights=weights, parents=tuple(p.id for p in parents),
                  born=generation, operator=operator, lineage_steps=steps)


def _bias_of(name: str, weights: dict[str, np.ndarray]) -> str | None:
    bias = name[: -len("weight")] + "bias"
    return bias if name.endswith("weight") and bias in weights else None


# ------------------------------------------------------------------------ crossovers

def cx_neuron(var: Variation, a: Genome, b: Genome, ids: tuple[int, int], generation: int,
              rng: np.random.Generator) -> tuple[Genome, Genome]:
    """Neuron-wise: each output neuron (row of a masked tensor, with its bias) comes whole from
    one parent; the second child takes the other parent's row."""
    ca_m, ca_w = _copy(a)
    cb_m, cb_w = _copy(b)
    for name in a.masks:
        rows = rng.random(a.masks[name].shape[0]) < 0.5  # rows the first child takes from b
        ca_m[name][rows], cb_m[name][rows] = b.masks[name][rows], a.masks[name][rows]
        ca_w[name][rows], cb_w[name][rows] = b.weights[name][rows], a.weights[name][rows]
        bias = _bias_of(name, a.weights)
        if bias and bias not in a.masks:
            ca_w[bias][rows], cb_w[bias][rows] = b.weights[bias][rows], a.weights[bias][rows]
    return _finish(var, a, b, ids, generation, "cx_neuron", (ca_m, ca_w), (cb_m, cb_w), rng)


def cx_connection(var: Variation, a: Genome, b: Genome, ids: tuple[int, int], generation: int,
                  rng: np.random.Generator) -> tuple[Genome, Genome]:
    """Connection-wise uniform: each position (mask bit with its weight) from either parent."""
    ca_m, ca_w = _copy(a)
    cb_m, cb_w = _copy(b)
    for name in a.masks:
        pick = rng.random(a.masks[name].shape) < 0.5  # positions the first child takes from b
        ca_m[name][pick], cb_m[name][pick] = b.masks[name][pick], a.masks[name][pick]
        ca_w[name][pick], cb_w[name][pick] = b.weights[name][pick], a.weights[name][pick]
    return _finish(var, a, b, ids, generation, "cx_connection", (ca_m, ca_w), (cb_m, cb_w), rng)


def cx_layer(var: Variation, a: Genome, b: Genome, ids: tuple[int, int], generation: int,
             rng: np.random.Generator) -> tuple[Genome, Genome]:
    """Layer-wise: each masked tensor (with its bias) comes whole from one parent."""
    ca_m, ca_w = _copy(a)
    cb_m, cb_w = _copy(b)
    for name in a.masks:
        if rng.random() < 0.5:
            ca_m[name], cb_m[name] = b.masks[name].copy(), a.masks[name].copy()
            bias = _bias_of(name, a.weights)
            # A masked bias is a tensor of its own in this loop: it moves with its own mask.
            for key in filter(None, (name, bias if bias not in a.masks else None)):
                ca_w[key], cb_w[key] = b.weights[key].copy(), a.weights[key].copy()
    return _finish(var, a, b, ids, generation, "cx_layer", (ca_m, ca_w), (cb_m, cb_w), rng)


def _copy(g: Genome) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return ({k: v.copy() for k, v in g.masks.items()}, {k: v.copy() for k, v in g.weights.items()})


def _finish(var, a, b, ids, generation, op, first, second, rng):
    children = [_child(gid, (a, b), generation, op, m, w) for gid, (m, w) in zip(ids, (first, second))]
    if var.bounds is None:  # fixed size: every layer back to the parents' mean count
        targets = _targets(a, b)
        return tuple(var.repair(c, targets, rng) for c in children)
    for masks, weights in (first, second):  # size searched: the inherited counts, within the bounds
        var.resize(masks, weights, var.fit({n: int(np.count_nonzero(m)) for n, m in masks.items()}), rng)
    return tuple(children)


# ------------------------------------------------------------------------- mutations

def clone(g: Genome, gid: int, generation: int) -> Genome:
    """A new individual with a parent's exact masks and weights: what a child is when no
    operator applies to it (no mutation configured, crossover not drawn). Its training then
    goes on from the parent's weights with a seed of its own."""
    masks, weights = _copy(g)
    return _child(gid, (g,), generation, "clone", masks, weights)


def mut_set(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
            fraction: float, signed: bool = False) -> Genome:
    """SET (Mocanu et al. 2018) as a mutation: `structure.update("set")` on every layer, with
    the GA's zeta (`evolution.prune_fraction`) and the rule's options (`structure.set_prune`),
    so a GA and `neuroevo train` prune and regrow by one implementation."""
    masks, weights = _copy(g)
    for name in masks:
        mask, w = masks[name].reshape(-1), weights[name].reshape(-1)
        change = structure.update("set", mask, w, masks[name].shape, generation, rng,
                                  fraction=fraction, signed=signed)
        if len(change.added):
            w[change.added] = var.born(name, len(change.added), int(np.count_nonzero(mask)), rng)
    return _child(gid, (g,), generation, "mut_set", masks, weights)


def mut_rewire(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
               fraction: float) -> Genome:
    """Random rewiring: per layer, move a random `fraction` of active connections elsewhere."""
    masks, weights = _copy(g)
    for name in masks:
        mask, w = masks[name].reshape(-1), weights[name].reshape(-1)
        active = structure.positions(mask)
        n = int(round(fraction * len(active)))
        if n == 0:
            continue
        drop = structure.choose(active, n, rng)
        mask[drop] = False
        w[drop] = 0.0
        var.grow(name, mask, w, n, rng, exclude=drop)
    return _child(gid, (g,), generation, "mut_rewire", masks, weights)


def mut_structure(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
                  method: str, params: StructureConfig) -> Genome:
    """The seed paper's methods as mutations ("threshold", "strength"; see structure.py): one
    structure update per layer on the inherited (trained) weights, the generation as update
    index, so the threshold decays and a lineage's structure settles as generations pass."""
    masks, weights = _copy(g)
    for name in masks:
        mask, w = masks[name].reshape(-1), weights[name].reshape(-1)
        change = structure.update(method, mask, w, masks[name].shape, generation, rng,
                                  threshold=params.threshold, threshold_decay=params.threshold_decay,
                                  max_fraction=params.max_fraction, regrow_ratio=params.regrow_ratio)
        if len(change.added):
            w[change.added] = var.born(name, len(change.added), int(np.count_nonzero(mask)), rng)
    # regrow_ratio < 1 regrows fewer than died: with sizes searched that is a smaller network,
    # never below min_density; at a fixed size every layer gets back its parent's count.
    if var.bounds is None:
        var.resize(masks, weights, {n: g.active(n) for n in masks}, rng)
    else:
        var.resize(masks, weights, var.fit({n: int(np.count_nonzero(m)) for n, m in masks.items()}), rng)
    return _child(gid, (g,), generation, f"mut_{method}", masks, weights)


def mut_grow(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
             fraction: float) -> Genome:
    """Every layer gets `fraction` more active connections (at least one), placed by
    `grow_rule`, within the density bounds."""
    return _resized(var, g, gid, generation, rng, fraction, +1, "mut_grow")


def mut_prune(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
              fraction: float) -> Genome:
    """Every layer loses `fraction` of its active connections (at least one), the smallest
    |w| first, within the density bounds."""
    return _resized(var, g, gid, generation, rng, fraction, -1, "mut_prune")


def _resized(var, g, gid, generation, rng, fraction, sign, op) -> Genome:
    masks, weights = _copy(g)
    counts = {n: g.active(n) + sign * max(1, int(round(fraction * g.active(n)))) for n in masks}
    var.resize(masks, weights, var.fit(counts), rng)
    return _child(gid, (g,), generation, op, masks, weights)


def mut_move(var: Variation, g: Genome, gid: int, generation: int, rng: np.random.Generator,
             fraction: float) -> Genome:
    """Move `fraction` of one random layer's active connections (its smallest |w|) to another
    random layer (placed by `grow_rule`): the total is unchanged, the allocation changes."""
    masks, weights = _copy(g)
    names = list(masks)
    donors = [n for n in names if g.active(n) > 1]
    if len(names) > 1 and donors:
        src = donors[rng.integers(len(donors))]
        takers = [n for n in names if n != src and g.active(n) < masks[n].size]
        if takers:
            dst = takers[rng.integers(len(takers))]
            n = min(max(1, int(round(fraction * g.active(src)))), g.active(src) - 1,
                    masks[dst].size - g.active(dst))
            counts = {**{k: g.active(k) for k in names}, src: g.active(src) - n, dst: g.active(dst) + n}
            var.resize(masks, weights, counts, rng)
    return _child(gid, (g,), generation, "mut_move", masks, weights)


CROSSOVERS = {"neuron": cx_neuron, "connection": cx_connection, "layer": cx_layer}


def make_toolbox(exp: Experiment, var: Variation) -> base.Toolbox:
    """The DEAP toolbox of this experiment: `mate(a, b, ids, generation, rng)` and one
    `mutate_<name>(g, gid, generation, rng)` per configured mutation."""
    ev = exp.evolution
    toolbox = base.Toolbox()
    if ev.crossover != "none":
        toolbox.register("mate", CROSSOVERS[ev.crossover], var)
    # Each mutation with its settings; any other name is a structure rule (mut_structure).
    functions = {"set": (mut_set, dict(fraction=ev.prune_fraction, signed=exp.structure.set_prune == "signed")),
                 "rewire": (mut_rewire, dict(fraction=ev.rewire_fraction)),
                 "grow": (mut_grow, dict(fraction=ev.resize_fraction)),
                 "prune": (mut_prune, dict(fraction=ev.resize_fraction)),
                 "move": (mut_move, dict(fraction=ev.move_fraction))}
    for name in ev.mutations:
        if name in functions:
            function, settings = functions[name]
            toolbox.register(f"mutate_{name}", function, var, **settings)
        else:
            toolbox.register(f"mutate_{name}", mut_structure, var, method=name, params=exp.structure)
    toolbox.mutations = list(ev.mutations)
    return toolbox
