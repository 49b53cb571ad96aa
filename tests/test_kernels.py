"""The C kernels (neuroevo_sparse/train/_kernels.c) against dense torch products, over the shapes
their vector loops split differently (batches below, at and past 8 and 64 samples, empty rows)."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from neuroevo_sparse import config
from neuroevo_sparse.train import kernels
from neuroevo_sparse.config import ConfigError
from neuroevo_sparse.train.paths import spec_for
from neuroevo_sparse.train.sparse import Pattern, sparse_matmul_t

pytestmark = pytest.mark.skipif(not kernels.available(), reason=kernels.status())


def _case(seed: int, out_f: int, in_f: int, batch: int, density: float):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_f, in_f, generator=g) < density
    w = torch.randn(out_f, in_f, generator=g) * mask
    h = torch.randn(in_f, batch, generator=g)
    return mask, w, h


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 16), out_f=st.integers(1, 40), in_f=st.integers(1, 40),
       batch=st.sampled_from([1, 3, 8, 9, 31, 64, 65, 130]), density=st.floats(0.0, 1.0))
def test_kernels_equal_dense_products(seed, out_f, in_f, batch, density):
    mask, w, h = _case(seed, out_f, in_f, batch, density)
    p = Pattern.of_mask(mask)
    values = w[p.rows, p.cols].contiguous()
    torch.testing.assert_close(kernels.spmm(p.crow, p.cols, values, h, out_f), w @ h, atol=1e-5, rtol=1e-5)
    dy = torch.randn(out_f, batch)
    torch.testing.assert_close(kernels.spmm(p.t_crow, p.t_col, values[p.t_perm].contiguous(), dy, in_f),
                               w.t() @ dy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernels.sampled(p.crow, p.cols, dy, h), (dy @ h.t())[p.rows, p.cols],
                               atol=1e-4, rtol=1e-5)


def _sampled_in_order(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The sampled product as _kernels.c documents its arithmetic, one float32 operation at a
    time: eight lanes summed over the batch's blocks of 8, the lanes added as a fixed tree,
    then the samples past the last block, in order."""
    x, y = a[rows], b[cols]
    lanes = np.zeros((len(rows), 8), np.float32)
    full = a.shape[1] // 8 * 8
    for k in range(0, full, 8):
        lanes = lanes + x[:, k: k + 8] * y[:, k: k + 8]
    s = lanes.T
    t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    for k in range(full, a.shape[1]):
        t = t + x[:, k] * y[:, k]
    return t


def _spmm_in_order(crow, cols, values, h) -> np.ndarray:
    """W h as documented: every output the sum of its row's products, in the row's order, from 0."""
    out = np.zeros((len(crow) - 1, h.shape[1]), np.float32)
    for r in range(len(crow) - 1):
        for e in range(crow[r], crow[r + 1]):
            out[r] = out[r] + values[e] * h[cols[e]]
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), batch=st.sampled_from([1, 7, 8, 13, 64, 100, 128]),
       density=st.sampled_from([0.1, 0.5, 1.0]))
def test_kernels_do_their_documented_arithmetic_bit_for_bit(seed, batch, density):
    # What makes histories the same on every x86 machine, whichever clone (AVX2 or portable)
    # runs and however a kernel groups its work (rows with 8 or more active weights take the
    # sampled product's eight-at-a-time path, fewer its four-at-a-time and single ones).
    mask, w, h = _case(seed, 12, 37, batch, density)
    p = Pattern.of_mask(mask)
    values = w[p.rows, p.cols].contiguous()
    dy = torch.randn(12, batch, generator=torch.Generator().manual_seed(seed + 1))
    expected = _sampled_in_order(dy.numpy(), h.numpy(), p.rows.numpy(), p.cols.numpy())
    assert np.array_equal(kernels.sampled(p.crow, p.cols, dy, h).numpy(), expected)
    assert np.array_equal(kernels.spmm(p.crow, p.cols, values, h, 12).numpy(),
                          _spmm_in_order(p.crow.numpy(), p.cols.numpy(), values.numpy(), h.numpy()))


def test_gather_t_is_the_transposed_gather():
    x = torch.randn(50, 1, 3, 5)
    idx = torch.randint(0, 50, (3, 13))
    assert torch.equal(kernels.gather_t(x, idx), x[idx].flatten(2).transpose(1, 2))


def test_stacked_first_layer_gives_the_block_diagonal_result_on_a_shared_input():
    masks = torch.rand(3, 20, 30) < 0.2
    p, s = Pattern.block_diagonal(masks), Pattern.stacked(masks)
    values = torch.randn(len(p.rows))
    h = torch.randn(30, 17)
    for native in (True, False):
        diag = sparse_matmul_t(h.repeat(3, 1), values, p, native)
        torch.testing.assert_close(sparse_matmul_t(h, values, s, native), diag, atol=1e-6, rtol=1e-6)


def test_native_and_torch_sparse_matmuls_agree_in_both_passes():
    mask, w, h = _case(0, 60, 90, 128, 0.1)
    p = Pattern.of_mask(mask)
    grads = []
    for native in (True, False):
        values = w[p.rows, p.cols].clone().requires_grad_()
        x = h.clone().requires_grad_()
        y = sparse_matmul_t(x, values, p, native)
        (y.sin()).sum().backward()
        grads.append((y.detach(), x.grad, values.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kernels_refuse_what_they_cannot_read():
    mask, w, h = _case(1, 8, 8, 16, 0.5)
    p = Pattern.of_mask(mask)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.spmm(p.crow, p.cols, w[p.rows, p.cols], h.t(), 8)
    with pytest.raises(ValueError, match="float32 tensors, not torch.float64"):
        kernels.spmm(p.crow, p.cols, w[p.rows, p.cols].double(), h.double(), 8)


def test_cpu_kernels_resolves_on_the_driver(monkeypatch):
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.problem.models import Architecture

    exp = config.from_dict({"data": {"dataset": "digits"}})
    splits = data.load(exp.data, 0)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    with_ = lambda mode, **res: dataclasses.replace(  # noqa: E731
        exp, training=dataclasses.replace(exp.training, cpu_kernels=mode),
        resources=dataclasses.replace(exp.resources, **res))
    assert spec_for(with_("auto"), arch).native_kernels
    assert not spec_for(with_("torch"), arch).native_kernels
    assert not spec_for(with_("native", gpus_per_job=1.0), arch).native_kernels  # GPUs: torch's
    monkeypatch.setattr(kernels, "_library", lambda: None)
    assert not spec_for(with_("auto"), arch).native_kernels
    with pytest.raises(ConfigError, match="training.cpu_kernels: 'native', but torch CSR ops: the C kernels "
                                          "were not built"):
        spec_for(with_("native"), arch)


def test_a_damaged_library_is_named_as_such(tmp_path):
    """A build that is there but does not load (overwritten, another platform's) falls back
    to torch's ops, and the status says what happened instead of blaming the compiler."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if not kernels.available():
        pytest.skip("the C kernels are not built here")
    package = Path(kernels.__file__).parent
    copy = tmp_path / "neuroevo_sparse"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (library,) = copy.glob("_kernels*.so")
    library.write_bytes(b"\x7fELF not really a shared library" * 64)
    code = "from neuroevo_sparse import kernels; print(kernels.available()); print(kernels.status())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    available, status = out.stdout.strip().splitlines()
    assert available == "False"
    assert "built but could not be loaded" in status and "pip install -e ." in status


def test_native_kernels_missing_is_refused_before_the_run_dir_exists(tmp_path, monkeypatch):
    from neuroevo_sparse import launch

    exp = config.from_dict({"data": {"dataset": "digits"}, "training": {"cpu_kernels": "native"},
                            "resources": {"backend": "local"}, "evolution": {"generations": 1}})
    monkeypatch.setattr(kernels, "_library", lambda: None)
    with pytest.raises(ConfigError, match="training.cpu_kernels: 'native'"):
        launch.start(exp, tmp_path / "run")
    assert not (tmp_path / "run").exists()
