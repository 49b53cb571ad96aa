"""Your own data from a .npz file: an example of `data.factory`.

`load` returns the splits as {"train": (x, y), "test": (x, y)}; the validation split is then
drawn from train (data.validation_fraction). Inputs are used as given, so they are scaled here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load(path: str = "digits.npz") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A relative `path` is taken from this file's directory."""
    file = Path(path) if Path(path).is_absolute() else Path(__file__).parent / path
    with np.load(file, allow_pickle=False) as d:
        scale = float(d["x_train"].max())
        return {"train": (d["x_train"] / scale, d["y_train"]), "test": (d["x_test"] / scale, d["y_test"])}
