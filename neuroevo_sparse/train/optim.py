"""SGD and Adam for the training core, without torch.optim's first-use cost.

The first `torch.optim.Optimizer` a process builds imports torch._dynamo (its methods are
wrapped by `torch._disable_dynamo`): about 2 s of CPU, paid by every Ray worker in its
first job and by every `neuroevo train`, while both workers of a laptop run compete for the
same cores. Training here needs only the elementwise update rules the config offers, so they
are written out: op for op the arithmetic of torch.optim's single-tensor code (what torch
runs on the CPU), so training gives bit-identical weights (tests/test_optim.py compares them
with torch.optim step by step).

The interface is the part of torch's the training code uses: `param_groups[i]["lr"]` (the
learning-rate schedule sets it), `state[param]` with torch's key names (structure updates
reset "momentum_buffer", "exp_avg", "exp_avg_sq" where connections are regrown),
`zero_grad` and `step`. A parameter without a gradient is skipped, as torch does.
"""

from __future__ import annotations

from typing import Iterable

import torch


class Optimizer:
    """One parameter group; subclasses say how one tensor is updated."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": lr}]
        self.weight_decay = weight_decay
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        # Per parameter, a tensor of rates that broadcasts against it, in place of the group's
        # rate: K stacked individuals, each at its own rate (training.lineage_schedule).
        self.lr_of: dict[torch.Tensor, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            self._update(p, grad, self.state.setdefault(p, {}), self.lr_of.get(p, lr))

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD without dampening or Nesterov: v = m v + g (v = g at the first step);
    p -= lr v."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float) -> None:
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(grad, alpha=1)
            grad = buf
        if torch.is_tensor(lr):
            p.sub_(grad * lr)
        else:
            p.add_(grad, alpha=-lr)


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient, no AMSGrad)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = betas, eps

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float) -> None:
        beta1, beta2 = self.betas
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])  # torch keeps it as a float32 tensor and reads it with .item()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1 ** step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
        if torch.is_tensor(step_size):
            p.sub_(exp_avg * step_size / denom)
        else:
            p.addcdiv_(exp_avg, denom, value=-step_size)
