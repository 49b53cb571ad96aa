"""The training core, and brief masked training of one individual with it.

The core is what every training path shares: the seeded batch order (`batches`), the
optimiser (`optimiser_for`), the learning-rate schedule (`set_lr`), the masked optimiser step
(`masked_step`), the step loop with its divergence check (`train_steps`) and evaluation. The
GA's per-individual path (`train`, here), the single-network harness (`dst.train_network`,
which adds structure updates between steps) and the vectorised path (`vectorised.train_many`,
K stacked individuals; its own loop, since it has K losses, but the same masked step) drive it.

The mask is enforced at every step: gradients of inactive connections are zeroed before the
optimiser step (so no momentum builds up on them) and the weights are multiplied by the mask
after it (so weight decay or numerical drift cannot revive them). The batch order comes from
the job's own seed, never from a global generator.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from . import optim
from . import sparse
from ..problem.data import Splits
from .jobs import Resume, TrainJob, TrainResult, TrainSpec


class DeviceData:
    """A dataset's splits as tensors on one device, built once per worker and reused."""

    def __init__(self, splits: Splits, device: str = "cpu"):
        def t(a: np.ndarray) -> torch.Tensor:
            # Arrays from Ray's object store are read-only and shared: torch only reads them,
            # so they are wrapped without a copy.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.as_tensor(a).to(device)
        self.device = device
        self.train = (t(splits.train_x), t(splits.train_y))
        self.val = (t(splits.val_x), t(splits.val_y))
        self.test = (t(splits.test_x), t(splits.test_y))


def pick_device(gpus: float) -> str:
    """The device a job that asked for `gpus` GPUs trains on: CUDA if asked and present.

    On CUDA, cuDNN is held to its deterministic algorithms, process-wide: its default
    convolution backward accumulates with atomics, so a CNN trained twice on one GPU differed
    in the 8th digit of its loss and a resumed run was not the run that never stopped
    (tests/test_gpu.py, on an H200). The matmuls of MLPs repeat themselves without it."""
    if gpus > 0 and torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        return "cuda"
    return "cpu"


def build_model(spec: TrainSpec, weights: dict[str, np.ndarray], device: str) -> nn.Module:
    model = spec.builder()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return model.to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A trained tensor as the genome stores it: float32, or its own dtype for integer buffers
    (BatchNorm's num_batches_tracked)."""
    a = t.detach().cpu().numpy()
    return a.astype(np.float32, copy=True) if a.dtype.kind == "f" else a.copy()


def train(job: TrainJob, spec: TrainSpec, data: DeviceData) -> TrainResult:
    """Train one individual; failures become a result with a status, never an exception."""
    return run_jobs([job], spec, data, lambda: [_train(job, spec, data)])[0]


def run_jobs(jobs: list[TrainJob], spec: TrainSpec, data: DeviceData,
             work: Callable[[], list[TrainResult]]) -> list[TrainResult]:
    """`work`'s results for `jobs` (one per job), computed on `spec.torch_threads` intra-op
    threads whatever the worker's own setting; an exception fails every job of the call (a
    failing individual must not stop the generation). Each result gets its share of the
    time, the worker and the device: what every training and scoring path reports."""
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.torch_threads)
    try:
        results = work()
    except Exception as e:
        results = [TrainResult(j.individual_id, {} if j.test_only else j.weights, status="failed",
                               error=f"{type(e).__name__}: {e}") for j in jobs]
    finally:
        torch.set_num_threads(previous_threads)
    elapsed = (time.perf_counter() - start) / len(jobs)
    for r in results:
        r.train_seconds = elapsed
        r.worker = f"{socket.gethostname()}:{os.getpid()}"
        r.device = data.device
    return results


def _train(job: TrainJob, spec: TrainSpec, data: DeviceData) -> TrainResult:
    cfg = spec.training
    device = data.device
    model = build_model(spec, job.weights, device)
    # Layers turned truly sparse hold only their active weights: no mask to enforce there.
    sparse_layers = sparse.sparsify(model, job.masks, sparse.layers_to_sparsify(job.masks, cfg, chosen=spec.sparse_layers))
    params = dict(model.named_parameters())
    masks = {k: torch.from_numpy(np.array(v)).to(device=device, dtype=params[k].dtype)
             for k, v in job.masks.items() if k not in sparse_layers}
    optimiser = optimiser_for(cfg, model)
    n = len(data.train[1])
    steps = job.steps or total_steps(cfg, n)
    first, last = job.span(steps)
    lr = lineage_lr(cfg, job, steps)
    # Randomness inside a user's network (dropout) comes from the job's seed, not the worker's.
    torch.manual_seed(job.seed % 2 ** 63)
    total, done = 0.0, first
    if job.resume is not None:  # go on exactly where the first part stopped
        load_optimiser_state(model, optimiser, job.resume.optimiser)
        total = job.resume.loss_sum
        if job.resume.rng is not None:
            torch.set_rng_state(torch.from_numpy(np.array(job.resume.rng)))
    elif job.optimiser is not None:  # training.inherit_optimizer: the state its weights came with
        load_optimiser_state(model, optimiser, job.optimiser)

    deadline = None if spec.time_limit_s is None else time.perf_counter() + spec.time_limit_s
    order = itertools.islice(batches(n, cfg.batch_size, last, job.seed, device), first, None)
    try:
        for _, loss, _ in train_steps(model, optimiser, params, masks, cfg, data.train, order, steps, first=first,
                                      lr=lr):
            total += loss
            done += 1
            if done < last and deadline is not None and time.perf_counter() > deadline:
                return TrainResult(job.individual_id, job.weights, status="failed", steps=done,
                                   error=f"timeout: {spec.time_limit_s}s (resources.job_timeout_s) "
                                         f"passed after {done} of {steps} steps")
    except Diverged as d:
        return TrainResult(job.individual_id, job.weights, status="diverged", steps=d.step, error=str(d))

    weights = {k: to_numpy(v) for k, v in sparse.dense_state_dict(model).items()}
    if not all(np.isfinite(w).all() for w in weights.values()):
        return TrainResult(job.individual_id, job.weights, status="diverged", steps=done,
                           error="weights became non-finite during training")
    val_loss, val_acc = evaluate(model, *data.val)
    test_acc = evaluate(model, *data.test)[1] if spec.score_test else None
    state = optimiser_state(model, optimiser) if done < steps or cfg.inherit_optimizer else None
    resume = None if done == steps else Resume(done, total, state, torch.get_rng_state().numpy().copy())
    return TrainResult(job.individual_id, weights, train_loss=total / done, val_loss=val_loss,
                       val_accuracy=val_acc, test_accuracy=test_acc, steps=done, resume=resume,
                       optimiser=_positive_zeros(state) if cfg.inherit_optimizer else None)


def _positive_zeros(state: dict[str, dict[str, np.ndarray | int]]) -> dict[str, dict[str, np.ndarray | int]]:
    """`state` with every -0.0 made +0.0 (x + 0.0; every other value is left as it is, bit for
    bit). Masked gradients are -0.0 where a negative one was zeroed, so SGD's momentum holds
    -0.0 at inactive connections; a checkpoint stores an array as its active values only where
    it is zero to the bit outside the mask, and would store such a state dense. The sign of a
    zero there changes no weight: an inactive weight stays +0.0 either way."""
    return {name: {k: v + v.dtype.type(0) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                   for k, v in entry.items()} for name, entry in state.items()}


def total_steps(cfg, n: int) -> int:
    """The optimiser steps of one individual's training on `n` samples."""
    return cfg.steps or max(1, math.ceil(cfg.epochs * n / cfg.batch_size))


def optimiser_state(model: nn.Module, optimiser: optim.Optimizer) -> dict[str, dict[str, np.ndarray | int]]:
    """The optimiser's state per parameter under its dense name, as numpy: what a Resume holds."""
    state = {}
    for name, p, layer in sparse.dense_parameters(model):
        if optimiser.state.get(p):
            state[name] = {k: to_numpy(layer.dense(v) if layer is not None else v) if torch.is_tensor(v) else v
                           for k, v in optimiser.state[p].items()}
    return state


def load_optimiser_state(model: nn.Module, optimiser: optim.Optimizer,
                         state: dict[str, dict[str, np.ndarray | int]]) -> None:
    """The inverse of `optimiser_state`, into a fresh optimiser of the same model."""
    for name, p, layer in sparse.dense_parameters(model):
        if name in state:
            def tensor(a: np.ndarray) -> torch.Tensor:
                t = torch.from_numpy(np.array(a)).to(p.device)
                return layer.active(t) if layer is not None else t
            optimiser.state[p] = {k: tensor(v) if isinstance(v, np.ndarray) else v for k, v in state[name].items()}


def score_test(job: TrainJob, spec: TrainSpec, data: DeviceData) -> TrainResult:
    """The test accuracy of a job's weights as they are (a test-only job), on the kernels
    training would use; a failure becomes a result with a status."""
    def score() -> list[TrainResult]:
        model = build_model(spec, job.weights, data.device)
        sparse.sparsify(model, job.masks, sparse.layers_to_sparsify(job.masks, spec.training, chosen=spec.sparse_layers))
        return [TrainResult(job.individual_id, {}, test_accuracy=evaluate(model, *data.test)[1])]
    return run_jobs([job], spec, data, score)[0]


def optimiser_for(cfg, model: nn.Module) -> optim.Optimizer:
    """torch.optim's SGD or Adam, bit for bit (optim.py says why they are not torch's own)."""
    if cfg.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Diverged(ArithmeticError):
    """The loss of a step was not finite; `step` steps were done before it."""

    def __init__(self, step: int, steps: int, loss: float):
        self.step = step
        super().__init__(f"loss became {loss} at step {step + 1} of {steps}")


def train_steps(model: nn.Module, optimiser: optim.Optimizer, params: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor], cfg, train: tuple[torch.Tensor, torch.Tensor],
                order: Iterator[torch.Tensor], steps: int,
                keep_grads: Callable[[int], bool] = lambda step: False, first: int = 0,
                lr: Callable[[int], float] | None = None,
                ) -> Iterator[tuple[int, float, dict[str, torch.Tensor] | None]]:
    """The step loop of one network: per batch of `order` (steps `first`, `first` + 1, ... of
    `steps`), cross-entropy, the finite check, one `masked_step`; yields (step, loss, dense
    gradients if `keep_grads(step)`) after each, so a caller may change `masks` in place
    between steps (structure updates). `lr`, the rate of each step, replaces
    `training.lr_schedule` (lineage_lr). Raises Diverged."""
    x, y = train
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for step, idx in enumerate(order, first):
        loss = loss_fn(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise Diverged(step, steps, loss.item())
        grads = masked_step(loss, optimiser, params, masks, cfg, step, steps, keep_grads=keep_grads(step),
                            lr=None if lr is None else lr(step))
        yield step, loss.item(), grads


def masked_step(loss: torch.Tensor, optimiser: optim.Optimizer, params: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor], cfg, step: int, steps: int, keep_grads: bool = False,
                keep: dict[str, torch.Tensor] | None = None,
                lr: float | dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """One optimiser step that keeps inactive connections at exactly zero: gradients masked
    before the step (no momentum builds up), weights masked after it. With `keep_grads`, the
    dense gradients of the masked tensors, taken before masking, are returned (RigL's regrowth).
    `keep` (the vectorised path) says per parameter where its gradient counts at all: entries of
    individuals that diverged get none (by `where`: their gradient may hold NaN, and NaN * 0 = NaN).
    `lr`: this step's rate instead of `training.lr_schedule`'s, one number, or per parameter a
    tensor of rates that broadcasts against it (K individuals at their own rates)."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    dense = {k: params[k].grad.detach().clone() for k in masks} if keep_grads else None
    with torch.no_grad():
        for name, where in (keep or {}).items():
            if params[name].grad is not None:
                params[name].grad = torch.where(where, params[name].grad, 0.0)
        for name, m in masks.items():
            if params[name].grad is not None:  # None: the module did not use the tensor
                params[name].grad.mul_(m)
    if lr is None:
        set_lr(optimiser, cfg, step, steps)
    elif isinstance(lr, dict):
        optimiser.lr_of = {params[name]: rate for name, rate in lr.items()}
    else:
        for group in optimiser.param_groups:
            group["lr"] = lr
    optimiser.step()
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    return dense


def set_lr(optimiser: optim.Optimizer, cfg, step: int, steps: int) -> None:
    """The learning rate of step `step` of `steps` under `training.lr_schedule`."""
    if cfg.lr_schedule == "cosine":
        for group in optimiser.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def lineage_rate(cfg, lineage_step: int) -> float:
    """The rate of a lineage's step `lineage_step` under `training.lineage_schedule`: `lr` down
    a cosine to `lr * lineage_floor` at `lineage_horizon`, flat after it."""
    if cfg.lineage_schedule == "none":
        return cfg.lr
    t = min(lineage_step, cfg.lineage_horizon) / cfg.lineage_horizon
    return cfg.lr * (cfg.lineage_floor + (1 - cfg.lineage_floor) * 0.5 * (1 + math.cos(math.pi * t)))


def lineage_lr(cfg, job: TrainJob, steps: int) -> Callable[[int], float] | None:
    """The rate of each step of a job (of `steps`) that training.lineage_schedule or a polish
    sets; None where `training.lr_schedule` applies as it is. A polish decays by a cosine from
    the rate its lineage has reached to zero at its last step."""
    if job.polish:
        start = lineage_rate(cfg, job.lineage_step)
        return lambda step: start * 0.5 * (1 + math.cos(math.pi * step / steps))
    if cfg.lineage_schedule == "none":
        return None
    return lambda step: lineage_rate(cfg, job.lineage_step + step)


def batches(n: int, batch_size: int, steps: int, seed: int, device: str) -> Iterator[torch.Tensor]:
    """`steps` mini-batches of indices: epochs of seeded permutations, the last one partial."""
    return (idx[0] for idx in batches_of(n, batch_size, steps, [seed], device))


def batches_of(n: int, batch_size: int, steps: int, seeds: list[int], device: str) -> Iterator[torch.Tensor]:
    """`batches` of K seeds at once, step by step as one (K, b) tensor: row k is seed k's batch.
    An epoch's K permutations are drawn and stacked together, not K batches per step."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    done = 0
    while done < steps:
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        for i in range(0, n, batch_size):
            if done == steps:
                return
            yield orders[:, i: i + batch_size].contiguous()
            done += 1


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i: i + batch])
        loss += nn.functional.cross_entropy(out, y[i: i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i: i + batch]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)
