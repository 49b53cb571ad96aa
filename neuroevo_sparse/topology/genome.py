"""The mask genome: one boolean mask per maskable tensor, the weights it inherited, its lineage.

Invariant: for every masked tensor, `weights[name] == weights[name] * masks[name]`; an
inactive connection holds exactly zero, so a genome's state_dict can be exported as it is.
Weights are numpy float32 (not tensors) so a genome crosses process boundaries as plain
data and is saved without pickle.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config.schema import ConfigError
from ..problem.models import LayerInfo
from .. import draws


@dataclass
class Genome:
    id: int
    masks: dict[str, np.ndarray]      # maskable parameter name -> bool array
    weights: dict[str, np.ndarray]    # every parameter and buffer -> float32 (integer buffers keep theirs)
    parents: tuple[int, ...] = ()
    born: int = 0                      # generation of birth
    operator: str = "init"
    metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation (TrainResult fields)
    fitness: Any = None                # a deap.base.Fitness, attached by the driver
    # Baldwinian runs only: the weights its last training reached (what `metrics` measured);
    # never inherited. Lamarckian runs write them into `weights` instead.
    trained: dict[str, np.ndarray] | None = None
    # Optimiser steps its weights carry: its lineage's training, inherited with the weights
    # (a mutant its parent's, a crossover child its parents' mean); what the learning rate of
    # training.lineage_schedule is read from.
    lineage_steps: int = 0
    # training.inherit_optimizer: the optimiser state its weights were trained to (per parameter
    # under its dense name: SGD's "momentum_buffer", Adam's "exp_avg", "exp_avg_sq" and "step"),
    # what its next training starts from; its children's is `inherited_optimiser`. None: a
    # fresh optimiser.
    optimiser: dict[str, dict[str, np.ndarray | int]] | None = None
    # The mask arrays last counted, with their counts, the sum of these and the masks' size.
    _counted: tuple[tuple[np.ndarray, ...], dict[str, int], int, int] | None = field(
        default=None, init=False, repr=False, compare=False)

    def network_weights(self) -> dict[str, np.ndarray]:
        """The weights of the network its metrics describe: what an export holds."""
        return self.weights if self.trained is None else self.trained

    # --------------------------------------------------------------------- counting
    def counts(self) -> dict[str, int]:
        """Active connections per masked tensor, counted once per set of mask arrays.

        The driver asks for them several times per individual and generation (fitness, the
        history's row, the front); a genome's masks are never modified in place once an
        operator has returned it (write-back replaces weights, never masks), so a count holds
        as long as the mask arrays are the same objects, which is what is checked."""
        return self._count()[1]

    def _count(self) -> tuple[tuple[np.ndarray, ...], dict[str, int], int, int]:
        masks = tuple(self.masks.values())
        counted = self._counted
        if counted is None or len(counted[0]) != len(masks) or not all(map(operator.is_, counted[0], masks)):
            counts = {name: int(np.count_nonzero(m)) for name, m in self.masks.items()}
            counted = self._counted = (masks, counts, sum(counts.values()), sum(m.size for m in masks))
        return counted

    def active(self, name: str) -> int:
        return self.counts()[name]

    def density(self) -> float:
        """Active fraction of the maskable weights (the quantity sparsity.density targets)."""
        _, _, active, total = self._count()
        return active / total

    def layer_density(self) -> dict[str, float]:
        counts = self.counts()
        return {name: counts[name] / m.size for name, m in self.masks.items()}

    def active_params(self) -> int:
        """Parameters that can be non-zero: active masked entries plus every unmasked tensor."""
        dense = sum(w.size for name, w in self.weights.items() if name not in self.masks)
        return dense + self._count()[2]

    def flops(self, info: dict[str, LayerInfo]) -> int:
        """Forward FLOPs per sample of the masked layers (a multiply-add counts as 2)."""
        counts = self.counts()
        return sum(2 * counts[name] * info[name].positions for name in self.masks)

    # --------------------------------------------------------------------- storage
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"mask/{k}": v for k, v in self.masks.items()}
        arrays.update({f"weight/{k}": v for k, v in self.weights.items()})
        arrays.update({f"trained/{k}": v for k, v in (self.trained or {}).items()})
        # "optim.<key>/<parameter>": after the "/", the parameter's name, so that a checkpoint
        # stores a masked tensor's state as its active values (store/checkpoint.py); a step
        # count as a 0-d int64 array.
        for name, state in (self.optimiser or {}).items():
            arrays.update({f"optim.{key}/{name}": v if isinstance(v, np.ndarray) else np.array(v, dtype=np.int64)
                           for key, v in state.items()})
        return arrays

    def meta(self) -> dict[str, Any]:
        values = list(self.fitness.values) if self.fitness is not None and self.fitness.valid else None
        return {"id": self.id, "parents": list(self.parents), "born": self.born,
                "operator": self.operator, "metrics": self.metrics, "fitness": values,
                "lineage_steps": self.lineage_steps}

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Genome":
        masks = {k[5:]: v.astype(bool) for k, v in arrays.items() if k.startswith("mask/")}
        weights = {k[7:]: v for k, v in arrays.items() if k.startswith("weight/")}
        trained = {k[8:]: v for k, v in arrays.items() if k.startswith("trained/")}
        optimiser: dict[str, dict[str, np.ndarray | int]] = {}
        for k, v in arrays.items():
            if k.startswith("optim."):
                key, name = k[6:].split("/", 1)
                optimiser.setdefault(name, {})[key] = int(v) if v.ndim == 0 and v.dtype.kind in "iu" else v
        return cls(id=int(meta["id"]), masks=masks, weights=weights,
                   parents=tuple(meta["parents"]), born=int(meta["born"]),
                   operator=meta["operator"], metrics=dict(meta["metrics"]), trained=trained or None,
                   lineage_steps=int(meta.get("lineage_steps", 0)), optimiser=optimiser or None)


def inherited_optimiser(child: Genome, parents: list[Genome]) -> dict[str, dict[str, np.ndarray | int]] | None:
    """The optimiser state `child` starts its training from (training.inherit_optimizer): its
    parents' states (the first parent first, then the second of a crossover), following the weights.

    Per masked tensor, the state at a position is the first parent's whose weight the child
    holds there (the same value, active in both), else zero; unmasked tensors (biases, norms)
    and Adam's step count take the first parent's that has a state for them. Why by the weights:
    a connection's momentum belongs to the weight it was built up on, and comparing values
    tells which weights a child kept without the operators saying so. A mutant keeps its
    parent's state where its weights are unchanged; a connection grown or regrown (or any weight
    an operator changed) starts at zero momentum, as a fresh optimiser starts it; a pruned one
    drops its state; a crossover child's weights each keep their own parent's momentum; a network
    pruned by magnitude (the trunk's ladder) keeps the state of the connections it keeps. None
    where no parent has a state (the initial population): a fresh optimiser."""
    parents = [p for p in parents if p.optimiser]
    if not parents:
        return None
    state: dict[str, dict[str, np.ndarray | int]] = {}
    for name in child.weights:
        sources = [p for p in parents if name in p.optimiser]
        if not sources:
            continue
        mask = child.masks.get(name)
        first = sources[0].optimiser[name]
        entry: dict[str, np.ndarray | int] = {}
        for key, value in first.items():
            if not isinstance(value, np.ndarray) or mask is None:
                entry[key] = value  # arrays are never modified in place: sharing them is safe
                continue
            out = np.zeros_like(value)
            taken = ~mask  # positions decided: inactive ones stay zero
            for p in sources:
                theirs = p.optimiser[name].get(key)
                w = p.weights.get(name)
                if theirs is None or w is None or w.shape != mask.shape or p.masks.get(name) is None:
                    continue
                same = ~taken & p.masks[name] & (child.weights[name] == w)
                out[same] = theirs[same]
                taken = taken | same
            entry[key] = out
        state[name] = entry
    return state


# ------------------------------------------------------------------------- initialising

def layer_densities(info: dict[str, LayerInfo], names: list[str], density: float,
                    rule: str) -> dict[str, float]:
    """Per-layer densities whose active counts add up to `density` of all maskable weights.

    "erdos_renyi" is the ERK rule of SET/RigL: density of a layer proportional to
    sum(shape) / prod(shape) (epsilon chosen to meet the global target), so small layers stay
    denser. Layers that would exceed 1 are made dense and epsilon re-solved for the rest.
    """
    if rule == "uniform":
        return {n: density for n in names}
    sizes = {n: info[n].size for n in names}
    raw = {n: sum(info[n].shape) / info[n].size for n in names}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in names if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        eps = remaining / sum(raw[n] * sizes[n] for n in free)
        saturated = {n for n in free if eps * raw[n] > 1.0}
        if not saturated:
            out = {n: 1.0 for n in dense}
            out.update({n: eps * raw[n] for n in free})
            return out
        dense |= saturated


def target_counts(info: dict[str, LayerInfo], names: list[str], density: float,
                  rule: str, key: str = "sparsity.density") -> dict[str, int]:
    """Active connections per masked tensor. A layer left with none would cut the network
    (chance accuracy at whatever density the rounding gives), so that is an error that says
    which density is the least that works."""
    dens = layer_densities(info, names, density, rule)
    counts = {n: min(info[n].size, int(round(dens[n] * info[n].size))) for n in names}
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        least = density * max(0.5 / (dens[n] * info[n].size) for n in empty)
        raise ConfigError([f"{key}: {density:g} leaves {', '.join(empty)} with no connection "
                           f"({'x'.join(map(str, info[empty[0]].shape))} weights at "
                           f"{dens[empty[0]]:.2g}); use a density of at least {least:.2g}"
                           + ("" if rule == "erdos_renyi" else " or sparsity.init = \"erdos_renyi\"")])
    return counts


@dataclass(frozen=True)
class Init:
    """How a connection gets its first weight: at the start, when grown, when regrown.

    `kind` is the rule (Kaiming or Xavier uniform) and `fan` what it counts as a neuron's
    fan-in/out. "dense" counts every position of the layer, as torch initialises a dense
    layer; "sparse" counts only the active connections, which widens the bound by
    1/sqrt(density) so that activations keep their variance at initialisation (Evci et al.
    2022). The sparse bound is the theory's choice but not the better one under brief SGD
    training: with it (and newborns drawn at its scale) the GA of benchmarks/ablation.py ends
    9 points lower at 2% density and 2 points lower at 10% (docs/ABLATION.md),
    hence "dense" by default.
    """

    kind: str = "kaiming_uniform"
    fan: str = "dense"

    @classmethod
    def of(cls, training: Any) -> "Init":
        return cls(training.init, training.init_fan)

    def bound(self, info: LayerInfo, density: float) -> float:
        scale = density if self.fan == "sparse" else 1.0
        fan_in = max(1.0, scale * info.fan_in)
        fan_out = max(1.0, scale * info.fan_out)
        if self.kind == "xavier_uniform":
            return math.sqrt(6.0 / (fan_in + fan_out))
        return math.sqrt(6.0 / fan_in)  # kaiming_uniform, ReLU gain

    def draw(self, info: LayerInfo, density: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` fresh weights for a layer at `density`."""
        return fresh_weights(n, self.bound(info, density), rng)


def newborn(rule: str, init: Init, info: LayerInfo, density: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Weights of `n` connections born in a layer at `density` (structure.new_weights): "zero";
    "random", a draw from the run's init; "glorot", Glorot/Xavier-uniform on the layer's dense
    fans whatever the run's init, as SET's reference code draws its newborns."""
    if rule == "zero":
        return np.zeros(n, dtype=np.float32)
    if rule == "glorot":
        return Init("xavier_uniform", "dense").draw(info, 1.0, n, rng)
    return init.draw(info, density, n, rng)


def fresh_weights(n: int, bound: float, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-bound, bound, size=n).astype(np.float32)


def random_genome(gid: int, template: dict[str, np.ndarray], info: dict[str, LayerInfo],
                  counts: dict[str, int], init: Init, rng: np.random.Generator) -> Genome:
    """A genome with `counts[name]` active connections per masked tensor at random positions.

    `template` gives the names and shapes of all model tensors; unmasked Linear/Conv weights
    get the same init at density 1, their biases start at zero, and every other tensor (norms,
    buffers such as BatchNorm running statistics, a user's own parameters) starts as the template
    has it, in its own dtype.
    """
    masks, weights = {}, {}
    for name, like in template.items():
        if name in counts:
            flat = np.zeros(like.size, dtype=bool)
            flat[draws.choice(rng, like.size, counts[name])] = True
            masks[name] = flat.reshape(like.shape)
            w = np.zeros(like.size, dtype=np.float32)
            w[flat] = init.draw(info[name], counts[name] / like.size, counts[name], rng)
            weights[name] = w.reshape(like.shape)
        elif name in info and info[name].role == "weight":
            weights[name] = init.draw(info[name], 1.0, like.size, rng).reshape(like.shape)
        elif name in info and info[name].role == "bias":
            weights[name] = np.zeros(like.shape, dtype=np.float32)
        else:
            weights[name] = np.array(like, dtype=np.float32 if like.dtype.kind == "f" else like.dtype)
    return Genome(id=gid, masks=masks, weights=weights)


def pruned(source: Genome, gid: int, counts: dict[str, int]) -> Genome:
    """`source` pruned by magnitude: per masked tensor, its `counts[name]` active connections of
    largest |w|, with the source's weights (masked) and lineage steps; its child (parent
    `source.id`, operator "init"). Ties and a count beyond the source's active connections take
    positions in index order (stable sort), those beyond starting at zero as grown ones do."""
    masks, weights = {}, {}
    for name, w in source.weights.items():
        if name in counts:
            score = np.where(source.masks[name].ravel(), np.abs(w).ravel(), -1.0)
            keep = np.argsort(-score, kind="stable")[:counts[name]]
            flat = np.zeros(w.size, dtype=bool)
            flat[keep] = True
            masks[name] = flat.reshape(w.shape)
            weights[name] = np.where(masks[name], w, 0).astype(w.dtype)
        else:  # arrays are never modified in place: sharing the source's is safe
            weights[name] = w
    return Genome(id=gid, masks=masks, weights=weights, parents=(source.id,),
                  lineage_steps=source.lineage_steps)
