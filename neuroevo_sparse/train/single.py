"""One network, one structure rule: dense, static sparse, SET, RigL, the seed paper's two
methods, one-shot and gradual magnitude pruning, trained by the same loop on the same data.

This is the harness behind `neuroevo train` and benchmarks/paper_claims.py. Every method gets
the same model, optimiser, learning-rate schedule, batches and initial weights for a given
seed, so a difference between two rows of a comparison is the structure rule and nothing else.

Training is dense-masked (weight * mask, gradient * mask) rather than truly sparse: RigL needs
the dense gradient of inactive positions, and a single code path for every method keeps the
comparison fair. Optimiser state of a connection is reset when it dies or is born.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..problem import models
from . import optim
from .. import seeds
from ..topology import structure
from ..config.schema import Experiment
from ..problem.data import Splits
from ..topology.genome import Init, newborn, random_genome, target_counts
from .core import DeviceData, Diverged, batches, evaluate, optimiser_for, train_steps


class DivergedError(RuntimeError):
    """The loss or the weights became non-finite; the message says where and what to change."""


@dataclass
class EpochRecord:
    epoch: int                 # 1-based; 0 is the untrained network
    train_loss: float
    val_loss: float
    val_accuracy: float
    test_accuracy: float
    density: float             # active fraction of the maskable weights
    active_params: int         # active masked weights + every unmasked parameter
    flops: int                 # forward FLOPs per sample of the masked layers
    changed: float             # connections born this epoch / active connections
    seconds: float             # wall time since training started


@dataclass
class NetworkRun:
    method: str
    seed: int
    records: list[EpochRecord]
    converged_epoch: int | None     # first epoch from which every update changed < converged_below
    masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def final(self) -> EpochRecord:
        return self.records[-1]


def train_network(exp: Experiment, splits: Splits, seed: int | None = None,
                  on_epoch: Callable[[EpochRecord], None] | None = None) -> NetworkRun:
    """Train one network of `exp` with `exp.structure.method`; one record per epoch."""
    seed = exp.experiment.seed if seed is None else seed
    s, cfg = exp.structure, exp.training
    torch.manual_seed(seeds.derive(seed, "torch"))  # nothing should draw from it; belt and braces
    arch = models.Architecture.of(exp, splits.input_shape, splits.num_classes)
    model, info, names, template = arch.build(), arch.info, arch.maskable, arch.template
    sparse_from_start = s.method not in ("dense", "magnitude", "gradual")
    density = exp.sparsity.density if sparse_from_start else 1.0
    counts = target_counts(info, names, density, exp.sparsity.init)
    genome = random_genome(0, template, info, counts, Init.of(cfg), seeds.rng(seed, "init"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in genome.weights.items()})
    params = dict(model.named_parameters())
    bool_masks = {n: genome.masks[n].copy() for n in names}  # what structure rules edit
    masks = {n: torch.from_numpy(m.astype(np.float32)) for n, m in bool_masks.items()}  # what steps use

    data = DeviceData(splits)
    n = len(data.train[1])
    epochs = max(1, math.ceil(cfg.epochs))
    per_epoch = math.ceil(n / cfg.batch_size)
    total = epochs * per_epoch
    optimiser = optimiser_for(cfg, model)
    rng = seeds.rng(seed, "structure")
    schedule = _Schedule(s, epochs, per_epoch)
    prune_after = epochs - s.finetune_epochs if s.method == "magnitude" else None

    start = time.perf_counter()
    records = [_record(0, float("nan"), model, data, masks, info, params, 0.0, 0.0)]
    changes: list[tuple[int, float]] = []  # (epoch, changed fraction) of every update
    order = batches(n, cfg.batch_size, total, seeds.derive(seed, "batches"), data.device)
    due = lambda step: schedule.due(step + 1, epoch_end=(step + 1) % per_epoch == 0)  # noqa: E731
    stream = train_steps(model, optimiser, params, masks, cfg, data.train, order, total,
                         keep_grads=lambda step: s.method == "rigl" and due(step))
    for epoch in range(1, epochs + 1):
        loss_sum, born = 0.0, 0
        for _ in range(per_epoch):
            try:
                step, loss, grads = next(stream)
            except Diverged as d:
                raise DivergedError(f"{s.method}, seed {seed}: {d} (epoch {epoch}); lower training.lr "
                                    f"(now {cfg.lr}) or use training.lr_schedule = \"cosine\"") from None
            loss_sum += loss
            if due(step) and s.method == "gradual":
                progress = (step + 1 - schedule.start) / max(1, schedule.stop_pruning - schedule.start)
                pruned, active = _magnitude_prune(params, bool_masks, masks, _gradual_counts(
                    info, target_counts(info, names, exp.sparsity.density, exp.sparsity.init), progress), optimiser)
                changes.append((epoch, pruned / max(active, 1)))
            elif due(step):
                b, active = _apply_update(s, params, bool_masks, masks, info, optimiser, schedule.index, schedule.t_end,
                                          grads, rng, Init.of(cfg))
                schedule.index += 1
                born += b
                changes.append((epoch, b / max(active, 1)))
        if epoch == prune_after:
            _magnitude_prune(params, bool_masks, masks, target_counts(info, names, exp.sparsity.density, exp.sparsity.init),
                             optimiser)
        active = sum(int(m.sum()) for m in masks.values())
        record = _record(epoch, loss_sum / per_epoch, model, data, masks, info, params,
                         born / max(active, 1), time.perf_counter() - start)
        if not math.isfinite(record.val_loss):
            raise DivergedError(f"{s.method}, seed {seed}: weights became non-finite in epoch {epoch}; "
                                f"lower training.lr (now {cfg.lr})")
        records.append(record)
        if on_epoch:
            on_epoch(record)
    return NetworkRun(
        method=s.method, seed=seed, records=records,
        converged_epoch=converged_epoch(changes, epochs, s.converged_below, s.method, prune_after),
        masks={k: m.copy() for k, m in bool_masks.items()},
        state={k: v.detach().numpy().copy() for k, v in model.state_dict().items()})


def converged_epoch(changes: list[tuple[int, float]], epochs: int, below: float, method: str,
                    prune_after: int | None) -> int | None:
    """The epoch from which the structure stopped changing: after it, no update changed
    `below` or more of the active connections.

    0 for a structure that never changes (dense, static); the prune epoch for magnitude
    pruning; None when large changes go on until the last epoch that has updates (SET at a
    fixed rate never converges).
    """
    if method == "magnitude":
        return prune_after
    last_big = max((e for e, c in changes if c >= below), default=0)
    return None if last_big >= epochs - 1 and last_big > 0 else last_big


class _Schedule:
    """When structure updates happen, and how many there are before RigL stops."""

    def __init__(self, s, epochs: int, per_epoch: int):
        self.method, self.every, self.index = s.method, s.update_every, 0
        self.total = epochs * per_epoch
        if s.method == "rigl" or (s.method == "set" and s.set_schedule == "cosine"):
            horizon = s.rigl_end * self.total
            self.stop = horizon
            self.t_end = max(1, int(horizon // (s.update_every or per_epoch)))
        elif s.method == "gradual":  # prunes from gradual_start to gradual_end, then fine-tunes
            self.start = int(s.gradual_start * self.total)
            self.stop_pruning = max(self.start + 1, int(s.gradual_end * self.total))
            self.stop = self.stop_pruning + (s.update_every or per_epoch)  # one update at or after the end
            self.t_end = 1
        else:
            self.stop = self.total - 1  # no update after the last step: nothing would train it
            self.t_end = 1

    def due(self, step: int, epoch_end: bool) -> bool:
        if self.method in ("dense", "static", "magnitude") or step >= self.stop:
            return False
        if self.method == "gradual" and step < self.start:
            return False
        return step % self.every == 0 if self.every else epoch_end


@torch.no_grad()
def _apply_update(s, params, bool_masks, masks, info, optimiser, t, t_end, grads, rng,
                  init) -> tuple[int, int]:
    born = active = 0
    for name, m in bool_masks.items():
        flat_m = m.reshape(-1)
        w = params[name].detach().numpy().reshape(-1)  # shares memory with the parameter
        fraction = structure.rigl_fraction(s.fraction, t, t_end) \
            if s.method == "set" and s.set_schedule == "cosine" else s.fraction
        change = structure.update(
            s.method, flat_m, w, tuple(m.shape), t, rng, fraction=fraction, threshold=s.threshold,
            threshold_decay=s.threshold_decay, max_fraction=s.max_fraction, regrow_ratio=s.regrow_ratio,
            grad=None if grads is None else grads[name].numpy().reshape(-1), t_end=t_end,
            signed=s.set_prune == "signed")
        if s.new_weights != "zero" and len(change.added):
            w[change.added] = newborn(s.new_weights, init, info[name], float(flat_m.mean()), len(change.added), rng)
        _reset_state(optimiser, params[name], np.concatenate([change.removed, change.added]))
        masks[name].copy_(torch.from_numpy(m))
        born += len(change.added)
        active += int(flat_m.sum())
    return born, active


def _gradual_counts(info, final: dict[str, int], progress: float) -> dict[str, int]:
    """Zhu & Gupta's (2017) cubic schedule, per layer: density d_f + (1 - d_f) (1 - p)^3 at
    progress p in [0, 1] of the pruning span, d_f the layer's final density (the counts the
    sparse methods start from, so every method ends with the same connections per layer)."""
    p = min(1.0, max(0.0, progress))
    out = {}
    for name, target in final.items():
        size = info[name].size
        d_f = target / size
        out[name] = max(target, int(round((d_f + (1.0 - d_f) * (1.0 - p) ** 3) * size)))
    return out


@torch.no_grad()
def _magnitude_prune(params, bool_masks, masks, counts: dict[str, int], optimiser) -> tuple[int, int]:
    """Keep each layer's `counts[name]` largest |w| (one-shot: the same per-layer counts the
    sparse methods start from, so every method ends with the same number of connections);
    returns (connections removed, connections left)."""
    removed = 0
    for name, m in bool_masks.items():
        flat_m = m.reshape(-1)
        w = params[name].detach().numpy().reshape(-1)
        drop = structure.smallest(flat_m, w, max(0, int(flat_m.sum()) - counts[name]))
        flat_m[drop] = False
        w[drop] = 0.0
        _reset_state(optimiser, params[name], drop)
        masks[name].copy_(torch.from_numpy(m))
        removed += len(drop)
    return removed, sum(int(m.sum()) for m in bool_masks.values())


def _reset_state(optimiser: optim.Optimizer, param: torch.Tensor, positions: np.ndarray) -> None:
    state = optimiser.state.get(param)
    if not state or len(positions) == 0:
        return
    idx = torch.from_numpy(positions)
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if state.get(key) is not None:
            state[key].view(-1)[idx] = 0.0


def _record(epoch, train_loss, model, data, masks, info, params, changed, seconds) -> EpochRecord:
    val_loss, val_acc = evaluate(model, *data.val)
    _, test_acc = evaluate(model, *data.test)
    active_masked = sum(int(m.sum()) for m in masks.values())
    size_masked = sum(m.numel() for m in masks.values())
    unmasked = sum(p.numel() for k, p in params.items() if k not in masks)
    flops = sum(2 * int(m.sum()) * info[k].positions for k, m in masks.items())
    return EpochRecord(epoch, train_loss, val_loss, val_acc, test_acc, active_masked / size_masked,
                       active_masked + unmasked, flops, changed, seconds)
