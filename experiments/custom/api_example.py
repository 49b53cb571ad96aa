"""The Python API end to end, as in a notebook: your own network and data, a callback, the
front, and a ready nn.Module at the end.

    python experiments/custom/api_example.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from neuroevo_sparse import evolve, load_experiment


def make_net(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """Any nn.Module: its Linear and Conv weights are masked by default (see sparsity.include)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.BatchNorm1d(width),
                         nn.ReLU(), nn.Linear(width, num_classes))


def load_data(seed: int) -> dict:
    """Splits as arrays; the validation split is drawn from train (data.validation_fraction)."""
    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:360], order[360:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def main() -> None:
    exp = load_experiment({
        "experiment": {"name": "api_example", "seed": 0},
        "sparsity": {"fixed": False, "min_density": 0.02, "max_density": 0.6},
        "evolution": {"population": 8, "generations": 5, "mutations": ["set", "grow", "prune"]},
        "fitness": {"mode": "pareto", "objectives": ["val_accuracy", "active_params"], "weights": [1.0, -1.0]},
        "training": {"steps": 150, "batch_size": 32, "lr": 0.01},
        "resources": {"backend": "local"},
        "output": {"progress": "none"},
    })
    run = evolve(exp, model=make_net, data=load_data,
                 callbacks=[lambda info: print(f"generation {info.generation}: best val acc "
                                               f"{info.best['val_accuracy']:.3f}, hypervolume {info.hypervolume:.3f}")])
    print(run.front()[["individual_id", "active_params", "val_accuracy", "test_accuracy"]].to_string(index=False))
    small = run.module(max_params=2_000)                  # the best network of at most 2k parameters
    x, y = load_data(0)["test"]
    with torch.no_grad():
        accuracy = (small(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    print(f"{run.path}: a network of <= 2000 parameters, test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
