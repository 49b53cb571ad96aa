import gzip
from pathlib import Path

import numpy as np
import pytest

from neuroevo_sparse.problem import data
from neuroevo_sparse.config import DataConfig

FASHION = Path(data.DEFAULT_PATHS["fashion_mnist"])
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


@needs_fashion
def test_real_fashion_mnist():
    s = data.load(DataConfig(dataset="fashion_mnist", validation_fraction=0.1), seed=0)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (54000, 6000, 10000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.train_x.dtype == np.float32 and abs(float(s.train_x.mean())) < 1e-3
    assert np.bincount(s.test_y).tolist() == [1000] * 10  # the official balanced test split


def test_digits_splits_are_disjoint_and_seeded():
    a = data.load(DataConfig(dataset="digits"), seed=0)
    b = data.load(DataConfig(dataset="digits"), seed=0)
    c = data.load(DataConfig(dataset="digits"), seed=1)
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797
    assert np.array_equal(a.val_x, b.val_x) and not np.array_equal(a.val_x, c.val_x)
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert not rows(a.val_x) & rows(a.test_x)


def test_train_fraction():
    full = data.load(DataConfig(dataset="digits"), seed=0)
    part = data.load(DataConfig(dataset="digits", train_fraction=0.25), seed=0)
    assert len(part.train_y) == round(0.25 * len(full.train_y))
    assert np.array_equal(part.val_y, full.val_y)  # validation unchanged


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(data.DatasetNotFound) as e:
        data.load(DataConfig(dataset="fashion_mnist", path=str(tmp_path)), seed=0)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_idx_reader_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(header + arr.tobytes()))
    assert np.array_equal(data.read_idx(good), arr)
    bad = tmp_path / "y-idx3-ubyte"
    bad.write_bytes(header + arr.tobytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(bad)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes()))


def test_idx_images_are_normalised_as_the_plain_formula_in_c_order(tmp_path):
    """The in-place loading gives the bits of the plain formula, in C order's own strides: a
    (N, 1, H, W) array whose channel axis has another stride reads to torch as channels-last,
    and convolutions on it round differently (the stored CNN results did not reproduce)."""
    import torch

    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    for name, arr in [("train-images-idx3-ubyte", train), ("train-labels-idx1-ubyte", rng.integers(0, 10, 300, dtype=np.uint8)),
                      ("t10k-images-idx3-ubyte", test), ("t10k-labels-idx1-ubyte", rng.integers(0, 10, 50, dtype=np.uint8))]:
        _write_idx(tmp_path / f"{name}.gz", arr)
    cfg = DataConfig(dataset="mnist", path=str(tmp_path), validation_fraction=0.2)
    s = data.load(cfg, seed=3)

    x = train.astype(np.float32)[:, None] / 255.0
    val_idx, train_idx = data._validation_split(300, cfg, 3)
    kept = x[train_idx]
    mean, std = kept.mean(), kept.std() + 1e-8
    for got, want in [(s.train_x, (kept - mean) / std), (s.val_x, (x[val_idx] - mean) / std),
                      (s.test_x, (test.astype(np.float32)[:, None] / 255.0 - mean) / std)]:
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
        assert got.strides == np.empty(got.shape, np.float32).strides
        t = torch.from_numpy(got)
        assert t.stride() == t.contiguous().stride()
