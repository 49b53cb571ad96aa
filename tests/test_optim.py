"""The training core's SGD and Adam are torch.optim's arithmetic, bit for bit, without its
import of torch._dynamo."""

import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from neuroevo_sparse.train import optim


def _run(make, steps: int, seed: int, lrs: list[float]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(7, 5, generator=gen).requires_grad_(), torch.randn(13, generator=gen).requires_grad_(),
              torch.randn(3, generator=gen).requires_grad_()]  # the last never gets a gradient
    opt = make(params)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[step % len(lrs)]
        opt.zero_grad(set_to_none=True)
        loss = (params[0].sin() * torch.randn(7, 5, generator=gen)).sum() + (params[1] ** 3).mean()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in params]


def _bits(tensors: list[torch.Tensor]) -> list[list[int]]:
    """The float32 bit patterns: bit for bit, and a NaN equal to the same NaN (a large learning
    rate on the cubic term can overflow; both optimisers must overflow the same way)."""
    return [t.view(torch.int32).flatten().tolist() for t in tensors]


@settings(max_examples=25, deadline=None)
@given(momentum=st.sampled_from([0.0, 0.5, 0.9]), weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
       lrs=st.lists(st.floats(1e-4, 0.5), min_size=1, max_size=3), seed=st.integers(0, 10_000))
@example(momentum=0.0, weight_decay=1e-4, lrs=[0.5], seed=35)  # overflows to NaN: torch.equal said "differs"
def test_sgd_is_torch_sgd_bit_for_bit(momentum, weight_decay, lrs, seed):
    ours = _run(lambda p: optim.SGD(p, lr=lrs[0], momentum=momentum, weight_decay=weight_decay), 12, seed, lrs)
    theirs = _run(lambda p: torch.optim.SGD(p, lr=lrs[0], momentum=momentum, weight_decay=weight_decay),
                  12, seed, lrs)
    assert _bits(ours) == _bits(theirs)


@settings(max_examples=25, deadline=None)
@given(weight_decay=st.sampled_from([0.0, 1e-4, 0.1]), lrs=st.lists(st.floats(1e-5, 0.1), min_size=1, max_size=3),
       seed=st.integers(0, 10_000))
def test_adam_is_torch_adam_bit_for_bit(weight_decay, lrs, seed):
    ours = _run(lambda p: optim.Adam(p, lr=lrs[0], weight_decay=weight_decay), 12, seed, lrs)
    theirs = _run(lambda p: torch.optim.Adam(p, lr=lrs[0], weight_decay=weight_decay), 12, seed, lrs)
    assert _bits(ours) == _bits(theirs)


@pytest.mark.parametrize("make, keys", [(lambda p: optim.SGD(p, lr=0.1, momentum=0.9), {"momentum_buffer"}),
                                        (lambda p: optim.Adam(p, lr=0.1), {"step", "exp_avg", "exp_avg_sq"})])
def test_state_uses_torch_key_names(make, keys):
    p = torch.ones(4, requires_grad=True)
    opt = make([p])
    p.sum().backward()
    opt.step()
    assert set(opt.state[p]) == keys
    assert set(torch.optim.SGD([p], lr=0.1, momentum=0.9).param_groups[0]) >= {"lr", "params"}


def test_training_never_imports_torch_dynamo():
    code = ("import sys, torch\n"
            "from neuroevo_sparse.train.core import optimiser_for\n"
            "from types import SimpleNamespace as N\n"
            "m = torch.nn.Linear(3, 2)\n"
            "for kind in ('sgd', 'adam'):\n"
            "    o = optimiser_for(N(optimizer=kind, lr=0.1, momentum=0.9, weight_decay=0.0), m)\n"
            "    o.zero_grad(); m(torch.ones(1, 3)).sum().backward(); o.step()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
