"""Datasets as in-memory numpy arrays split into train / validation / test.

Arrays, not torch DataLoaders: a whole split is shipped once to each worker (or put once in
Ray's object store) and batches are drawn by index with a seed carried by each training
job, so the batch order does not depend on which worker trains an individual.
Fitness uses the validation split only; the test split is reported, never optimised.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.schema import ConfigError, DataConfig
from ..seeds import derive

DEFAULT_PATHS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
    "cifar10": "~/.cache/neuroevo_sparse/cifar-10-batches-py",
}

HOW_TO_GET = {
    "fashion_mnist": "on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`; or download the four "
                     "*-ubyte.gz files of Fashion-MNIST and set data.path to their directory",
    "mnist": "download the four MNIST *-ubyte(.gz) files and set data.path to their directory",
    "cifar10": "download and unpack 'CIFAR-10 python version' (cifar-10-python.tar.gz) and set "
               "data.path to the cifar-10-batches-py directory",
}


class DatasetNotFound(FileNotFoundError):
    pass


class DatasetError(ValueError):
    """A dataset file exists but cannot be read as what it should be (truncated, damaged)."""


@dataclass(frozen=True)
class Splits:
    """float32 inputs (N, *shape) and int64 labels (N,) for each split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def summary(self) -> str:
        return (f"train {len(self.train_y)}, validation {len(self.val_y)}, test {len(self.test_y)}, "
                f"input {self.input_shape}, {self.num_classes} classes")


def load(cfg: DataConfig, seed: int) -> Splits:
    """Load the configured dataset; the validation split is drawn with a seed derived from `seed`."""
    if cfg.factory is not None:
        return from_factory(cfg, seed)
    loaders = {"digits": _digits, "fashion_mnist": _idx, "mnist": _idx,
               "cifar10": _cifar10, "synthetic": _synthetic}
    try:
        (train_x, train_y), (test_x, test_y) = loaders[cfg.dataset](cfg, seed)
    except (DatasetNotFound, DatasetError):
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zlib.error,
            pickle.UnpicklingError) as e:
        how = HOW_TO_GET.get(cfg.dataset, "reinstall it")
        why = ("check the files' permissions" if isinstance(e, PermissionError) else
               f"its files are damaged or not what they should be. To get them again: {how}")
        raise DatasetError(f"dataset {cfg.dataset!r} could not be read ({type(e).__name__}: {e}); {why}") from e
    if len(train_y) != len(train_x) or len(test_y) != len(test_x):
        raise DatasetError(f"dataset {cfg.dataset!r}: {len(train_x)} training images but {len(train_y)} labels, "
                           f"{len(test_x)} test images but {len(test_y)} labels: the files do not belong together")
    val_idx, train_idx = _validation_split(len(train_y), cfg, seed)
    if cfg.train_fraction < 1.0:
        train_idx = train_idx[: max(1, int(round(cfg.train_fraction * len(train_idx))))]
    kept = train_x[train_idx]
    # Over the flat view (indexing made it C-contiguous, so the sums are the same): faster.
    flat = kept.reshape(-1)
    mean, std = flat.mean(), flat.std() + 1e-8
    num_classes = int(max(train_y.max(), test_y.max()) + 1)
    # The copies that indexing made are normalised in place: each new 100+ MB array costs
    # its page faults, a good part of the load.
    return Splits(_normalise(kept, mean, std, own=True), train_y[train_idx].astype(np.int64),
                  _normalise(train_x[val_idx], mean, std, own=True), train_y[val_idx].astype(np.int64),
                  _normalise(test_x, mean, std), test_y.astype(np.int64), num_classes)


def _normalise(x: np.ndarray, mean: np.floating, std: np.floating, own: bool = False) -> np.ndarray:
    """(x - mean) / std as float32; computed in `x` itself if it is `own` (a copy made here)."""
    y = np.subtract(x, mean, out=x if own and x.dtype == np.result_type(x, mean) else None)
    y /= std
    return y.astype(np.float32, copy=False)


def from_factory(cfg: DataConfig, seed: int) -> Splits:
    """Splits from the user's `data.factory`, checked: every problem is a DatasetError that
    names the factory, the split and what is wrong."""
    from ..config import plugins

    factory = plugins.resolve(cfg.factory, "data.factory")
    where = f"data.factory {cfg.factory!r}"
    try:
        out = plugins.call(factory, dict(cfg.args), "data.factory", seed=seed)
    except (ConfigError, DatasetError, FileNotFoundError):
        raise
    except Exception as e:
        raise DatasetError(f"{where} raised {type(e).__name__}: {e}") from e
    splits = _named_splits(out, where)
    arrays = {name: _pair(value, f"{where}, split {name!r}") for name, value in splits.items()}
    shapes = {name: x.shape[1:] for name, (x, _) in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DatasetError(f"{where}: the splits' inputs differ in shape ("
                           + ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items()) + "): they must be alike")
    classes = int(max(y.max() for _, y in arrays.values())) + 1
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    if "validation" in arrays:
        (val_x, val_y) = arrays["validation"]
        train_idx = np.arange(len(train_y))
    else:
        val_idx, train_idx = _validation_split(len(train_y), cfg, seed)
        val_x, val_y = train_x[val_idx], train_y[val_idx]
    if cfg.train_fraction < 1.0:
        train_idx = train_idx[: max(1, int(round(cfg.train_fraction * len(train_idx))))]
    return Splits(train_x[train_idx], train_y[train_idx], val_x, val_y, test_x, test_y, classes)


_SPLITS = ("train", "validation", "test")


def _named_splits(out, where: str) -> dict:
    if isinstance(out, dict):
        unknown = sorted(set(out) - set(_SPLITS))
        if unknown or not {"train", "test"} <= set(out):
            raise DatasetError(f"{where}: returned a dict with keys {sorted(out)}; it needs \"train\" and \"test\" "
                               f"and may have \"validation\"" + (f" (unknown: {unknown})" if unknown else ""))
        return dict(out)
    if isinstance(out, (tuple, list)) and len(out) in (2, 3):
        names = ("train", "test") if len(out) == 2 else _SPLITS
        return dict(zip(names, out))
    raise DatasetError(f"{where}: returned {type(out).__name__}; it must return {{\"train\": (x, y), \"test\": (x, y)}} "
                       f"(optionally \"validation\"), or a tuple (train, test) or (train, validation, test)")


def _pair(value, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 (N, ...), labels int64 (N,)) from a pair of arrays/tensors or a Dataset."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2) and hasattr(value, "__getitem__") \
            and hasattr(value, "__len__"):
        items = [value[i] for i in range(len(value))]  # a torch Dataset of (x, y)
        if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise DatasetError(f"{where}: a dataset must yield (x, y) pairs")
        value = (np.stack([np.asarray(x) for x, _ in items]), np.asarray([np.asarray(y) for _, y in items]))
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise DatasetError(f"{where}: must be a pair (inputs, labels) or a dataset of pairs, got {type(value).__name__}")
    x, y = (np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in value)
    if x.ndim < 2:
        raise DatasetError(f"{where}: inputs of shape {x.shape}; they must be (samples, features...)")
    if y.ndim != 1:
        raise DatasetError(f"{where}: labels of shape {y.shape}; they must be one class index per sample, shape (N,)")
    if len(x) != len(y):
        raise DatasetError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise DatasetError(f"{where}: is empty")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x.astype(np.float64)).all():
        raise DatasetError(f"{where}: inputs must be finite numbers (dtype {x.dtype})")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and (y == np.round(y)).all())):
        raise DatasetError(f"{where}: labels must be class indices (integers), got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(f"{where}: labels must be class indices 0..C-1, found {int(y.min())}")
    return x.astype(np.float32), y.astype(np.int64)


def _validation_split(n: int, cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, training indices) of a training split of n samples."""
    rng = np.random.default_rng(derive(seed, "data-split"))
    order = rng.permutation(n)
    n_val = max(1, int(round(cfg.validation_fraction * len(order))))
    return order[:n_val], order[n_val:]


def _digits(cfg: DataConfig, seed: int):
    """scikit-learn's 8x8 digits: ships inside scikit-learn, so it needs no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    y = d.target
    # Digits has no official test split: a fixed 20% is held out with a seed of its own.
    order = np.random.default_rng(derive(seed, "digits-test")).permutation(len(y))
    n_test = len(y) // 5
    return (x[order[n_test:]], y[order[n_test:]]), (x[order[:n_test]], y[order[:n_test]])


def _resolve(cfg: DataConfig, required: list[str]) -> Path:
    root = Path(os.path.expanduser(cfg.path or DEFAULT_PATHS[cfg.dataset]))
    missing = [name for name in required if _find(root, name) is None]
    if missing:
        raise DatasetNotFound(
            f"dataset {cfg.dataset!r}: looked in {root} and did not find {', '.join(missing)}.\n"
            f"To get it: {HOW_TO_GET[cfg.dataset]}.")
    return root


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        # One call for the whole file, not gzip.open's read loop: 2-3x faster, and without
        # the GIL all along, so that it runs beside the imports of a starting run (cli).
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not a complete gzip file ({e})") from e
    if len(data) < 4:
        raise DatasetError(f"{path}: {len(data)} bytes, too short for an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} values)")
    return body.reshape(shape)


def _idx(cfg: DataConfig, seed: int):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    root = _resolve(cfg, names)
    xtr, ytr, xte, yte = (read_idx(_find(root, n)) for n in names)
    return (_images(xtr, 255.0), ytr), (_images(xte, 255.0), yte)


def _images(a: np.ndarray, top: float) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W) float32 divided by `top` in place (the arithmetic of
    `a.astype(np.float32) / top` without a second array of the dataset's size), in C order's
    own strides: a size-1 channel axis with another stride reads to torch as channels-last,
    and its convolutions then round differently."""
    x = a.astype(np.float32)
    x /= top
    return x.reshape(len(x), 1, *x.shape[1:])


def _cifar10(cfg: DataConfig, seed: int):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    root = _resolve(cfg, names)

    def batch(name: str):
        with open(root / name, "rb") as f:
            # The CIFAR-10 python batches are pickles of plain dicts of arrays; they are read
            # only from the user's own data directory, never from a run directory.
            d = pickle.load(f, encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, np.array(d[b"labels"])

    parts = [batch(n) for n in names[:5]]
    test = batch(names[5])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), test


def _synthetic(cfg: DataConfig, seed: int):
    """Gaussian blobs as 1x8x8 'images': learnable in a few steps, for fast tests."""
    rng = np.random.default_rng(derive(seed, "synthetic"))
    n, classes = cfg.synthetic_samples, 4
    centres = rng.normal(0, 1.0, size=(classes, 64)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0, 0.7, size=(n, 64)).astype(np.float32)
    x = x.reshape(n, 1, 8, 8)
    n_test = n // 5
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])
