"""Export one individual as plain torch: a state_dict with its masks applied, its masks, metrics.

The file loads with `torch.load(path, weights_only=True)` (no code from the file runs) into
an `nn.Sequential` of the same layer names, with no import of this package needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import report
from .store import RunDir


def export(run_dir: str | Path, out: str | Path | None = None, individual: int | None = None,
           max_params: int | None = None) -> Path:
    """Write one individual: `individual` by id, else the most accurate (by validation) with
    at most `max_params` active parameters, else the run's best."""
    run = RunDir(run_dir)
    loaded = run.load_checkpoint()
    metas = {m["id"]: m for m in loaded.state["genomes"]}
    if individual is None and max_params is not None:
        individual = int(report.best_under(report.load(run.path), max_params).individual_id)
    if individual is None:
        individual = json.loads((run.best / "metrics.json").read_text())["id"]
    if individual not in metas:
        raise KeyError(f"individual {individual} is not in the newest checkpoint of {run.path} "
                       f"(weights are kept for the population and the archive: the hall of fame, or in a "
                       f"Pareto run every non-dominated individual); "
                       f"available: {sorted(metas)}")
    meta = metas[individual]
    prefix = f"g{individual}/"
    # A Baldwinian individual's trained weights (what its metrics measured) if it has them.
    kind = "trained/" if any(k.startswith(prefix + "trained/") for k in loaded.arrays) else "weight/"
    weights = {k[len(prefix) + len(kind):]: v for k, v in loaded.arrays.items() if k.startswith(prefix + kind)}
    masks = {k[len(prefix) + 5:]: v for k, v in loaded.arrays.items() if k.startswith(prefix + "mask/")}
    config = run.config()
    payload = {
        "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
        "masks": {k: torch.from_numpy(np.array(v, dtype=bool)) for k, v in masks.items()},
        "metrics": {k: v for k, v in meta["metrics"].items() if isinstance(v, (int, float, str, type(None)))},
        "fitness": list(meta["fitness"] or []),
        "individual_id": individual, "born": meta["born"], "parents": list(meta["parents"]),
        "model": {**config.to_dict()["model"], "input_shape": loaded.state["input_shape"],
                  "num_classes": loaded.state["num_classes"]},
        "checkpoint": loaded.path.name,
    }
    out = Path(out) if out else run.path / "export" / f"individual-{individual}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return out
