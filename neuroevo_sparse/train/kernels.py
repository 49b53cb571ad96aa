"""The C kernels of `_kernels.c` (built at install time when a C compiler is there), for the
sparse layers of the vectorised MLP path on a CPU.

Activations there are feature-major, so a sparse product is, per active weight, a multiply-add
of two contiguous rows of the batch: forward `W h`, input gradient `W^T dy` (the same kernel on
the transposed pattern) and the sampled weight gradient `(dy h^T)` at the active positions.
They exist because torch's CSR ops pay a per-call cost that groups of small layers do not
repay (how much faster: benchmarks/kernels.py, docs/performance.md). Without the built library
everything falls back to torch's CSR ops: same results up to float rounding.
"""

from __future__ import annotations

import ctypes
import functools

import torch

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """The library, or None and why not: never built (None), or built but unloadable (the error)."""
    try:
        from . import _kernels
        lib = ctypes.CDLL(_kernels.__file__)
    except ModuleNotFoundError:
        return None, None
    except (ImportError, OSError) as e:  # a damaged or foreign build
        return None, f"{type(e).__name__}: {e}"
    for name in ("ne_spmm", "ne_sampled"):
        getattr(lib, name).argtypes = [_I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR]
        getattr(lib, name).restype = None
    lib.ne_gather_t.argtypes = [_I64, _I64, _I64, _PTR, _PTR, _PTR]
    lib.ne_gather_t.restype = None
    return lib, None


def _library() -> ctypes.CDLL | None:
    return _loaded()[0]


def available() -> bool:
    """Whether the C kernels were built for this installation and load."""
    return _library() is not None


def status() -> str:
    if available():
        return "native (neuroevo_sparse/train/_kernels.c, built at install time)"
    error = _loaded()[1]
    if error is not None:
        return (f"torch CSR ops: the C kernels were built but could not be loaded ({error}); "
                f"rebuild them with `pip install -e .`")
    return ("torch CSR ops: the C kernels were not built (no C compiler when the package was installed; "
            "install gcc and reinstall with `pip install -e .` to build them)")


def _checked(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError("the native sparse kernels take contiguous tensors on the CPU")
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ValueError(f"the native sparse kernels take float32 tensors, not {t.dtype}: "
                             f"set training.cpu_kernels = \"torch\"")


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, h: torch.Tensor, rows: int) -> torch.Tensor:
    """W h for the (rows x len(h)) CSR matrix W = (crow, col, values) and h (in, B): (rows, B)."""
    lib = _library()
    _checked(crow, col, values, h)
    out = torch.empty(rows, h.shape[1], dtype=h.dtype)
    lib.ne_spmm(rows, h.shape[1], crow.data_ptr(), col.data_ptr(), values.data_ptr(), h.data_ptr(), out.data_ptr())
    return out


def sampled(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a b^T) at the active positions of the CSR pattern (crow, col) only, in CSR order:
    a (rows, B), b (columns, B)."""
    lib = _library()
    _checked(crow, col, a, b)
    out = torch.empty(len(col), dtype=a.dtype)
    lib.ne_sampled(a.shape[0], a.shape[1], crow.data_ptr(), col.data_ptr(), a.data_ptr(), b.data_ptr(),
                   out.data_ptr())
    return out


def gather_t(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` (K, B) of x (N, ...) as K feature-major batches (K, features, B), in one pass."""
    lib = _library()
    _checked(x, idx)
    if idx.dtype != torch.int64:
        raise ValueError("gather_t takes int64 indices")
    k, b = idx.shape
    features = x[0].numel() if len(x) else 0
    out = torch.empty(k, features, b, dtype=x.dtype)
    lib.ne_gather_t(k, b, features, idx.data_ptr(), x.data_ptr(), out.data_ptr())
    return out
