"""Truly sparse Linear layers: cost follows the number of active connections, not the shape.

During one individual's training its mask is fixed, so a masked Linear can hold only its
active weights (`values`, in CSR order) and compute
    forward         y  = x W^T           CSR x dense
    input gradient  dx = dy W            CSR(W^T) x dense
    weight gradient dW = (dy^T x) at the active positions only   (sampled dense-dense product,
                                                                  torch.sparse.sampled_addmm)
The optimiser sees `values` alone, so inactive weights cannot move: this is the same
computation as dense masked training (where masked gradients are zero, so Adam/SGD states
stay zero there), in O(active) work instead of O(in x out). Conv layers stay dense-masked.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Collection

import numpy as np
import torch
from torch import nn

from . import kernels
from ..config.schema import TrainingConfig

# CSR matmuls used here (CSR x dense, sampled_addmm) are stable on CPU and CUDA; the beta notice
# would print once per worker process.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class Pattern:
    """CSR structure of a fixed set of active positions and of its transpose, with the map
    between their orders. `rows`, `cols` must be in row-major (CSR) order."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]):
        out_f, in_f = shape
        self.shape = (out_f, in_f)
        self.rows, self.cols = rows.contiguous(), cols.contiguous()
        self.crow = torch.zeros(out_f + 1, dtype=torch.int64, device=rows.device)
        self.crow[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)

    # The transpose is made when first used: a first layer's input needs no gradient, and an
    # evaluation no backward pass, so most patterns of a vectorised group never need it.
    @functools.cached_property
    def t_perm(self) -> torch.Tensor:
        return torch.argsort(self.cols * self.shape[0] + self.rows)  # CSR order of W^T

    @functools.cached_property
    def t_crow(self) -> torch.Tensor:
        t_crow = torch.zeros(self.shape[1] + 1, dtype=torch.int64, device=self.rows.device)
        t_crow[1:] = torch.cumsum(torch.bincount(self.cols, minlength=self.shape[1]), 0)
        return t_crow

    @functools.cached_property
    def t_col(self) -> torch.Tensor:
        return self.rows[self.t_perm]

    @classmethod
    def of_mask(cls, mask: torch.Tensor) -> "Pattern":
        rows, cols = mask.nonzero(as_tuple=True)                  # row-major: CSR order
        return cls(rows, cols, tuple(mask.shape))

    @classmethod
    def block_diagonal(cls, masks: torch.Tensor, nonzero: tuple[torch.Tensor, ...] | None = None) -> "Pattern":
        """The pattern of K masks (K, out, in) placed on the diagonal of a (K*out, K*in) matrix:
        one sparse matmul then computes all K layers, each on its own inputs. `nonzero`:
        `masks.nonzero(as_tuple=True)`, where the caller has it already."""
        k, out_f, in_f = masks.shape
        which, rows, cols = masks.nonzero(as_tuple=True) if nonzero is None else nonzero  # k-, then row-major
        return cls(which * out_f + rows, which * in_f + cols, (k * out_f, k * in_f))

    @classmethod
    def stacked(cls, masks: torch.Tensor, nonzero: tuple[torch.Tensor, ...] | None = None) -> "Pattern":
        """The K masks (K, out, in) stacked as one (K*out, in) matrix: the same values, in the
        same order as `block_diagonal`'s, applied to one input that all K share."""
        k, out_f, in_f = masks.shape
        which, rows, cols = masks.nonzero(as_tuple=True) if nonzero is None else nonzero
        return cls(which * out_f + rows, cols, (k * out_f, in_f))

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape, check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, values[self.t_perm], self.shape[::-1],
                                       check_invariants=False)


def sparse_matmul(x: torch.Tensor, values: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """x (B, in) times the transpose of the sparse (out, in) matrix `values` at `pattern`."""
    return _SparseMatmul.apply(x, values, pattern)


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        ctx.save_for_backward(x, values)
        ctx.pattern = pattern
        return (pattern.csr(values) @ x.t().contiguous()).t()

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, values = ctx.saved_tensors
        p: Pattern = ctx.pattern
        dx = (p.csr_t(values) @ dy.t().contiguous()).t() if ctx.needs_input_grad[0] else None
        dvalues = _sampled_product(dy, x, p) if ctx.needs_input_grad[1] else None
        return dx, dvalues, None


def sparse_matmul_t(h: torch.Tensor, values: torch.Tensor, pattern: Pattern, native: bool = False) -> torch.Tensor:
    """The sparse (out, in) matrix `values` at `pattern` times h (in, B): activations held
    feature-major (one row per feature, one column per sample), as the vectorised MLP path
    holds them, so that neither pass nor the weight gradient needs a transposed copy. `native`:
    the C kernels of neuroevo_sparse.train.kernels (CPU, float32) instead of torch's CSR ops."""
    return _SparseMatmulT.apply(h, values, pattern, native)


class _SparseMatmulT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, values: torch.Tensor, pattern: Pattern, native: bool) -> torch.Tensor:
        ctx.save_for_backward(h, values)
        ctx.pattern, ctx.native = pattern, native
        if native:
            return kernels.spmm(pattern.crow, pattern.cols, values, h, pattern.shape[0])
        return pattern.csr(values) @ h

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, values = ctx.saved_tensors
        p: Pattern = ctx.pattern
        dy = dy.contiguous()
        dh = dvalues = None
        if ctx.native:
            if ctx.needs_input_grad[0]:
                dh = kernels.spmm(p.t_crow, p.t_col, values[p.t_perm], dy, p.shape[1])
            if ctx.needs_input_grad[1]:
                dvalues = kernels.sampled(p.crow, p.cols, dy, h)
            return dh, dvalues, None, None
        if ctx.needs_input_grad[0]:
            dh = p.csr_t(values) @ dy
        if ctx.needs_input_grad[1]:
            # h.t() as a view: the sampled product reads it column-wise, faster than a copy.
            dvalues = _sampled(dy, h.t(), p)
        return dh, dvalues, None, None


def _sampled_product(dy: torch.Tensor, x: torch.Tensor, p: Pattern) -> torch.Tensor:
    """(dy^T x) at the active positions only, in CSR order, without forming dy^T x."""
    return _sampled(dy.t().contiguous(), x.contiguous(), p)


def _sampled(a: torch.Tensor, b: torch.Tensor, p: Pattern) -> torch.Tensor:
    """(a b) at the active positions of `p` only, in CSR order: a (out, B), b (B, in)."""
    zeros = p.csr(torch.zeros(len(p.rows), dtype=a.dtype, device=a.device))
    return torch.sparse.sampled_addmm(zeros, a, b, beta=0.0).values()


class SparseLinear(nn.Module):
    """A Linear layer holding only its active weights; `dense_weight()` gives them back."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.pattern = Pattern.of_mask(mask.bool())
        self.values = nn.Parameter(weight[self.pattern.rows, self.pattern.cols].clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sparse_matmul(x, self.values, self.pattern)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        return self.dense(self.values.detach())

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like `values` (the weights, or an optimiser's state of them) as the
        dense (out, in) matrix, zero at the inactive positions."""
        w = torch.zeros(self.pattern.shape, dtype=values.dtype, device=values.device)
        w[self.pattern.rows, self.pattern.cols] = values
        return w

    def active(self, dense: torch.Tensor) -> torch.Tensor:
        """The inverse of `dense`: the entries of a dense (out, in) matrix at the active positions."""
        return dense[self.pattern.rows, self.pattern.cols].contiguous()


def layers_to_sparsify(masks: dict[str, np.ndarray], cfg: TrainingConfig, min_size: int | None = None,
                       chosen: Collection[str] | None = None) -> list[str]:
    """Weight names of the masked Linear layers (2-D masks) that `cfg` runs truly sparse;
    `min_size` replaces `cfg.sparse_min_size` (the native kernels need none); `chosen`, the
    layers a measured plan picked (calibration.py), replaces the size rule altogether."""
    if cfg.sparse_kernels == "off":
        return []
    min_size = cfg.sparse_min_size if min_size is None else min_size
    def picked(k: str, m: np.ndarray) -> bool:
        return k in chosen if chosen is not None else m.size >= min_size
    return [k for k, m in masks.items() if m.ndim == 2 and (
        cfg.sparse_kernels == "on" or (picked(k, m) and m.mean() < cfg.sparse_below))]


def sparsify(model: nn.Module, masks: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """Replace the Linear layers whose weights are `names` by SparseLinear layers holding
    their weights at the positions active in `masks`; returns `names`."""
    for key in names:
        path = key.removesuffix(".weight")
        module = model.get_submodule(path)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{key} is not the weight of a Linear layer: {type(module).__name__}")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        mask = torch.as_tensor(np.asarray(masks[key]), device=module.weight.device)
        setattr(parent, attr, SparseLinear(module.weight.detach(), mask, module.bias))
    return names


def dense_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, SparseLinear | None]]:
    """Every parameter with its dense name (the genome's: a SparseLinear's `values` is its
    layer's `weight`) and, for those `values`, the layer that maps them to the dense matrix."""
    found = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, p in module.named_parameters(recurse=False):
            sparse_values = isinstance(module, SparseLinear) and pname == "values"
            found.append((prefix + ("weight" if sparse_values else pname), p, module if sparse_values else None))
    return found


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with every SparseLinear written back as a dense `weight`."""
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, SparseLinear):
            state[prefix + "weight"] = module.dense_weight()
            if module.bias is not None:
                state[prefix + "bias"] = module.bias.detach()
        else:
            for pname, p in module.named_parameters(recurse=False):
                state[prefix + pname] = p.detach()
            for bname, b in module.named_buffers(recurse=False):
                state[prefix + bname] = b
    return state
