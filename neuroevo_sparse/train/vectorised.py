"""Population-vectorised training: K individuals of one architecture trained in one batched pass.

Parameters of the K individuals are stacked along a new first dimension. MLPs run as a chain
of batched matmuls; a masked Linear layer that is truly sparse for every individual of the
group (sparse.layers_to_sparsify) holds only the K individuals' active weights and runs as
one sparse matmul whose matrix has the K masks on its block diagonal, the K inputs side by
side: population-vectorised and O(active connections) at once. Other models (CNNs,
your own modules) run under `torch.func.vmap` over `functional_call` with stacked parameters
and buffers (BatchNorm's running statistics update per individual; Conv2d becomes a grouped
convolution), dense masked. A module vmap cannot run (data-dependent control flow, dropout)
is found by `unvectorisable` on the driver and trained one by one instead.

Each individual keeps what the per-individual path gives it: its own mask, its own batch
order (from its own seed), its own optimiser state. Adam, SGD and weight decay are
elementwise, so one optimiser over the stacked tensors is K independent optimisers; the
loss is the sum of the K mean losses, so each individual's gradient is its own. Results equal
`training.train` up to float rounding (the tests check it).

An individual that diverges is frozen at once (its gradient zeroed, its input weights
returned) and reported as in the per-individual path; the others go on."""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import kernels
from .jobs import Resume, TrainJob, TrainResult, TrainSpec
from .sparse import Pattern, layers_to_sparsify, sparse_matmul_t
from .core import (DeviceData, batches_of, evaluate, lineage_lr, masked_step, optimiser_for, run_jobs, to_numpy,
                   total_steps)


def train_many(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData) -> list[TrainResult]:
    """Train `jobs` (same architecture) together; one TrainResult per job, in order (a
    failure of the group fails its individuals, not the run)."""
    results = run_jobs(jobs, spec, data, lambda: _train_many(jobs, spec, data))
    for r in results:
        r.extra["vectorised"] = float(len(jobs))
    return results


def _group_sparse(jobs: list[TrainJob], spec: TrainSpec, min_size: int | None) -> list[str]:
    """The masked Linear layers a group runs truly sparse: those the rules (or the measured
    plan) pick at the run's reference density, for every member whatever its own density.
    Deciding by the members would make a member's arithmetic depend on who shares its group,
    and so on the number of workers, once sizes differ (sparsity.fixed = false, "move")."""
    if spec.reference_density is None:
        each = [layers_to_sparsify(j.masks, spec.training, min_size, spec.sparse_layers) for j in jobs]
        return [n for n in each[0] if all(n in names for names in each[1:])]
    reference = {}
    for name, density in spec.reference_density:
        mask = np.zeros(jobs[0].masks[name].shape, dtype=bool)
        mask.reshape(-1)[: int(round(density * mask.size))] = True
        reference[name] = mask
    return layers_to_sparsify(reference, spec.training, min_size, spec.sparse_layers)


class _Group:
    """K jobs of one architecture as stacked tensors, and their batched forward: what training
    and test scoring share. Which masked Linear layers are truly sparse is a function of the
    run (`_group_sparse`), never of the group; such a parameter holds the K individuals' active
    weights, in block-diagonal order."""

    def __init__(self, jobs: list[TrainJob], spec: TrainSpec, data: DeviceData):
        device = data.device
        self.model = model = spec.builder().to(device)
        self.names = [n for n, _ in model.named_parameters()]
        self.buffers = {n: torch.stack([torch.from_numpy(np.array(j.weights[n])) for j in jobs]).to(device)
                        for n, _ in model.named_buffers()}
        self.masks = masks = {n: torch.stack([torch.from_numpy(np.array(j.masks[n])) for j in jobs]).to(device)
                              for n in jobs[0].masks}
        self.chain = chain = _chain(model)
        # The C kernels have no per-call cost that a minimum layer size would have to repay.
        native = spec.native_kernels and device == "cpu"
        if native and not kernels.available():
            raise RuntimeError(f"the run uses the native sparse kernels (training.cpu_kernels), but on this "
                               f"worker: {kernels.status()}")
        sparse = _group_sparse(jobs, spec, 0 if native else None) if chain else []
        nonzero = {n: masks[n].nonzero(as_tuple=True) for n in sparse}  # (individual, row, column) of each value
        self.patterns = {n: Pattern.block_diagonal(masks[n], nonzero[n]) for n in sparse}
        self.owner = {n: nonzero[n][0] for n in sparse}   # individual of each value
        self.nonzero = nonzero
        # Where each individual's values start in a block-diagonal parameter.
        self.starts = {n: [0, *np.cumsum(masks[n].flatten(1).sum(1).tolist())] for n in sparse}
        self.holder = nn.Module()  # the optimiser wants parameters; the stacked tensors are them
        for i, n in enumerate(self.names):
            stacked = torch.stack([torch.from_numpy(np.array(j.weights[n])) for j in jobs]).to(device)
            self.holder.register_parameter(f"p{i}", nn.Parameter(stacked[nonzero[n]] if n in self.patterns
                                                                  else stacked))
        self.params = {n: self.holder.get_parameter(f"p{i}") for i, n in enumerate(self.names)}
        self.dense_masks = {n: m.to(torch.float32) for n, m in masks.items() if n not in self.patterns}
        self.forward = (_ChainForward(chain, self.patterns, masks, native, nonzero) if chain
                        else _vmapped(model, self.buffers))

    def individual(self, t: torch.Tensor, name: str, i: int) -> np.ndarray:
        """Individual i's dense tensor of the stacked parameter `name` (or of a tensor shaped
        like it: an optimiser's state)."""
        if name not in self.patterns:
            return to_numpy(t[i])
        starts = self.starts[name]
        dense = torch.zeros(self.masks[name].shape[1:], dtype=t.dtype, device=t.device)
        dense[self.masks[name][i]] = t.detach()[int(starts[i]): int(starts[i + 1])]
        return to_numpy(dense)

    def optimiser_state(self, optimiser, i: int) -> dict[str, dict[str, np.ndarray | int]]:
        """Individual i's optimiser state per parameter, dense: what the per-individual path's
        `training.optimiser_state` gives, so a Resume goes on on either path."""
        return {n: {k: self.individual(v, n, i) if torch.is_tensor(v) else v
                    for k, v in optimiser.state[p].items()}
                for n, p in self.params.items() if optimiser.state.get(p)}

    def load_optimiser_state(self, optimiser, states: list[dict[str, dict[str, np.ndarray | int]]]) -> None:
        """The K individuals' dense optimiser states (in job order) into the group's optimiser."""
        for n, p in self.params.items():
            if n not in states[0]:
                continue
            entry = {}
            for key, value in states[0][n].items():
                if not isinstance(value, np.ndarray):
                    entry[key] = value  # a step count: the same for every member
                    continue
                stacked = torch.stack([torch.from_numpy(np.array(s[n][key])) for s in states]).to(p.device)
                entry[key] = stacked[self.nonzero[n]] if n in self.patterns else stacked
            optimiser.state[p] = entry

    def logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Logits (K, classes, B) of the K individuals, each on its own samples idx[k] of x."""
        if self.chain:
            return self.forward(self.params, self.forward.inputs(x, idx))
        return self.forward(self.params, x[idx])

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per individual (mean cross-entropy, accuracy) over a split, in evaluation mode (norms
        use their running statistics, which stay as training left them)."""
        self.model.eval()
        k = len(next(iter(self.masks.values())))
        if self.chain:
            return _evaluate_many(self.forward, self.params, k, x, y)
        # one at a time: large evaluation batches under vmap (grouped convolutions) are slower
        return _evaluate_each(self.model, self.params, self.buffers, k, x, y)


def score_many(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData) -> list[TrainResult]:
    """The test accuracy of test-only jobs (their weights as they are), K at a time in one
    batched pass on the kernels their training used; a failure fails the group's results."""
    def score() -> list[TrainResult]:
        accuracy = _Group(jobs, spec, data).evaluate(*data.test)[1]
        return [TrainResult(j.individual_id, {}, test_accuracy=a) for j, a in zip(jobs, accuracy)]
    return run_jobs(jobs, spec, data, score)


def _train_many(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData) -> list[TrainResult]:
    cfg, device, k = spec.training, data.device, len(jobs)
    group = _Group(jobs, spec, data)
    model, names, buffers = group.model, group.names, group.buffers
    patterns, owner, params = group.patterns, group.owner, group.params
    optimiser = optimiser_for(cfg, group.holder)

    x_train, y_train = data.train
    n = len(y_train)
    steps = jobs[0].steps or total_steps(cfg, n)
    first, last = jobs[0].span(steps)
    if any(j.span(j.steps or total_steps(cfg, n)) != (first, last) for j in jobs):
        raise ValueError("the jobs of a vectorised group must train the same steps")
    rates = [lineage_lr(cfg, j, steps) for j in jobs]
    rated = None if all(r is None for r in rates) else \
        [r if r is not None else (lambda step: cfg.lr) for r in rates]
    order = itertools.islice(batches_of(n, cfg.batch_size, last, [j.seed for j in jobs], device), first, None)
    alive = torch.ones(k, dtype=torch.bool, device=device)
    diverged: dict[int, tuple[int, str]] = {}  # index -> (steps done, why)
    total = torch.zeros(k, dtype=torch.float64, device=device)
    if jobs[0].resume is not None:  # go on exactly where the first part stopped
        group.load_optimiser_state(optimiser, [j.resume.optimiser for j in jobs])
        total = torch.tensor([j.resume.loss_sum for j in jobs], dtype=torch.float64, device=device)
    # The time limit is per job, so a group of k jobs may take k times as long.
    limit = None if spec.time_limit_s is None else spec.time_limit_s * k
    deadline = None if limit is None else time.perf_counter() + limit

    model.train()
    for step in range(first, last):
        if deadline is not None and time.perf_counter() > deadline:
            return [TrainResult(j.individual_id, j.weights, status="failed", steps=step,
                                error=f"timeout: {limit:g}s ({k} x resources.job_timeout_s, vectorised "
                                      f"group) passed after {step} of {steps} steps") for j in jobs]
        idx = next(order)                                         # (K, B)
        out = group.logits(x_train, idx)                          # (K, classes, B)
        losses = nn.functional.cross_entropy(out, y_train[idx], reduction="none").mean(1)
        bad = alive & ~torch.isfinite(losses)
        for i in bad.nonzero().flatten().tolist():
            diverged[i] = (step, f"loss became {losses[i].item()} at step {step + 1} of {steps}")
        alive &= ~bad
        keep = None
        if diverged:  # until one diverges, every entry counts: the same numbers, without the masking
            keep = {name: alive[owner[name]] if name in owner else alive.view(k, *[1] * (p.dim() - 1))
                    for name, p in params.items()}
            losses = torch.where(alive, losses, torch.zeros_like(losses))
        lr = None
        if rated is not None:  # each individual at its own rate, per value of each parameter
            each = torch.tensor([r(step) for r in rated], dtype=torch.float32, device=device)
            lr = {name: each[owner[name]] if name in owner else each.view(k, *[1] * (p.dim() - 1))
                  for name, p in params.items()}
        masked_step(losses.sum(), optimiser, params, group.dense_masks, cfg, step, steps, keep=keep, lr=lr)
        total += losses.detach().double()

    results = []
    val = group.evaluate(*data.val)
    test = group.evaluate(*data.test) if spec.score_test else None
    with torch.no_grad():
        for i, job in enumerate(jobs):
            if i in diverged:
                done, why = diverged[i]
                results.append(TrainResult(job.individual_id, job.weights, status="diverged",
                                           error=why, steps=done))
                continue
            weights = {name: group.individual(params[name], name, i) for name in names}
            weights.update({name: to_numpy(b[i]) for name, b in buffers.items()})
            if not all(np.isfinite(w).all() for w in weights.values()):
                results.append(TrainResult(job.individual_id, job.weights, status="diverged", steps=last,
                                           error="weights became non-finite during training"))
                continue
            resume = None if last == steps else Resume(last, float(total[i]), group.optimiser_state(optimiser, i))
            results.append(TrainResult(job.individual_id, weights, train_loss=float(total[i]) / last,
                                       val_loss=val[0][i], val_accuracy=val[1][i],
                                       test_accuracy=None if test is None else test[1][i], steps=last,
                                       extra={"sparse_layers": float(len(patterns))}, resume=resume))
    return results


def _vmapped(model: nn.Module, buffers: dict[str, torch.Tensor]):
    """Forward of K copies of `model`, each with its own parameters and buffers (updated in
    place, per individual, where the module updates them: BatchNorm in training mode); logits
    (K, classes, batch)."""
    run = vmap(lambda p, b, x: functional_call(model, (p, b), (x,)))
    return lambda params, x: run(params, buffers, x).transpose(1, 2)  # (K, classes, B), as the chain's


def unvectorisable(builder) -> str | None:
    """Why the network cannot be trained under vmap, or None if it can: two stacked copies are
    run forward and backward on a tiny batch, in training mode, as the vectorised path would."""
    try:
        model = builder()
        params = {n: torch.stack([p.detach()] * 2).requires_grad_() for n, p in model.named_parameters()}
        buffers = {n: torch.stack([b] * 2) for n, b in model.named_buffers()}
        x = torch.zeros(2, 2, *builder.input_shape)
        model.train()
        _vmapped(model, buffers)(params, x).sum().backward()
        return None
    except Exception as e:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU)


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of an MLP (Flatten, Linear, activations) in order; None for anything else,
    which is then run under vmap."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model.named_children())
    ok = all(isinstance(m, (nn.Flatten, nn.Linear) + _ELEMENTWISE) for _, m in layers)
    return layers if ok and any(isinstance(m, nn.Linear) for _, m in layers) else None


class _ChainForward:
    """Forward of K MLPs at once, activations held feature-major, (K, features, batch), from
    the input on (samples flattened): a dense layer is one batched matmul W h; a truly sparse
    one is one sparse matmul whose matrix has the K masks on the diagonal of a block matrix,
    applied to the K inputs stacked as (K * features, batch), which that layout already is, so
    no layer needs a transposed copy. `native`: those sparse matmuls, and the gathering of the
    inputs, on the C kernels (neuroevo_sparse.train.kernels). Logits come out as (K, classes, batch).

    An input that all K share (an evaluation split) enters once, (features, batch): the first
    layer's K masks are then stacked (K * out, in) instead of placed on a diagonal, in the same
    order of values, so the input is never copied K times."""

    def __init__(self, chain: list[tuple[str, nn.Module]], patterns: dict[str, Pattern],
                 masks: dict[str, torch.Tensor], native: bool, nonzero: dict[str, tuple[torch.Tensor, ...]]):
        self.chain, self.patterns, self.native = chain, patterns, native
        first = next(f"{n}.weight" for n, m in chain if isinstance(m, nn.Linear))
        self.first = first
        self.k = len(masks[first]) if first in masks else None
        self.stacked = Pattern.stacked(masks[first], nonzero[first]) if first in patterns else None

    def inputs(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Samples `idx` (K, B) of x (N, ...) as the first layer takes them, (K, features, B)."""
        if self.native:
            return kernels.gather_t(x, idx)
        return x[idx].flatten(2).transpose(1, 2).contiguous()

    def __call__(self, params: dict[str, torch.Tensor], h: torch.Tensor, shared: bool = False) -> torch.Tensor:
        for name, module in self.chain:
            if isinstance(module, nn.Linear):
                key = f"{name}.weight"
                w, b = params[key], params.get(f"{name}.bias")
                pattern = self.patterns.get(key)
                if shared and key == self.first:  # h: (features, batch), the same for every individual
                    k, batch = len(w) if pattern is None else self.k, h.shape[1]
                    h = torch.matmul(w, h) if pattern is None else \
                        sparse_matmul_t(h, w, self.stacked, self.native).view(k, -1, batch)
                elif pattern is None:
                    h = torch.bmm(w, h)
                else:
                    k, width, batch = h.shape
                    h = sparse_matmul_t(h.view(k * width, batch), w, pattern, self.native).view(k, -1, batch)
                if b is not None:
                    h = h + b.unsqueeze(2)
            elif not isinstance(module, nn.Flatten):  # samples are flat from the input on
                h = module(h)
        return h


class _Member(nn.Module):
    """Individual i of the stacked parameters and buffers, as a module `evaluate` can run."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.state = model, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.state, (x,))


def _evaluate_each(model: nn.Module, params: dict, buffers: dict, k: int, x: torch.Tensor,
                   y: torch.Tensor) -> tuple[list[float], list[float]]:
    results = [evaluate(_Member(model, {n: t[i] for n, t in {**params, **buffers}.items()}), x, y)
               for i in range(k)]
    return [r[0] for r in results], [r[1] for r in results]


@torch.no_grad()
def _evaluate_many(forward: _ChainForward, params: dict, k: int, x: torch.Tensor, y: torch.Tensor,
                   batch: int = 1024) -> tuple[list[float], list[float]]:
    """Per individual (mean cross-entropy, accuracy) over a split shared by all of them."""
    loss = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.int64, device=x.device)
    for i in range(0, len(y), batch):
        xb, yb = x[i: i + batch], y[i: i + batch]
        out = forward(params, xb.flatten(1).t().contiguous(), shared=True)  # (K, classes, b)
        loss += nn.functional.cross_entropy(out, yb.expand(k, -1), reduction="none").sum(1).double()
        correct += (out.argmax(1) == yb).sum(1)
    return (loss / len(y)).tolist(), (correct.double() / len(y)).tolist()
