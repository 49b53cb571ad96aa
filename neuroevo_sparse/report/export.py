"""One individual of a run, as plain torch: its weights with the masks applied, its masks, metrics.

`export` writes it to a file that loads with `torch.load(path, weights_only=True)` (no code
from the file runs) into an `nn.Sequential` of the same layer names, with no import of this
package needed; `Individual.module()` gives the same network as a ready `nn.Module`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..problem import models
from . import tables as report
from ..store import RunDir


@dataclass
class Individual:
    """An individual's network as the newest checkpoint holds it."""

    id: int
    meta: dict[str, Any]             # lineage, metrics and fitness, as checkpointed
    weights: dict[str, np.ndarray]   # every tensor of the model; zero outside the masks
    masks: dict[str, np.ndarray]
    model: dict[str, Any]            # [model] of the config, with input_shape and num_classes
    checkpoint: str

    def module(self) -> nn.Module:
        """The network, built and loaded: `module(x)` gives the logits this individual was scored on."""
        from ..config.schema import ModelConfig

        cfg = ModelConfig(**{k: v for k, v in self.model.items() if k not in ("input_shape", "num_classes")})
        net = models.build(cfg, tuple(self.model["input_shape"]), int(self.model["num_classes"]))
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.weights.items()})
        return net.eval()


def exportable_ids(run_dir: str | Path) -> set[int]:
    """The individuals whose weights the newest checkpoint holds: the population, the archive
    and every point of the history's front. Empty before the first checkpoint."""
    from ..store.checkpoint import NoValidCheckpoint

    try:
        loaded = RunDir(run_dir).load_checkpoint()
    except NoValidCheckpoint:  # none written yet, or none whole: nothing can be exported
        return set()
    return {int(m["id"]) for m in loaded.state["genomes"]}


def load_individual(run_dir: str | Path, individual: int | None = None, max_params: int | None = None) -> Individual:
    """`individual` by id, else the most accurate (by validation) with at most `max_params`
    active parameters, else the run's best. KeyError if the checkpoint does not hold it,
    ValueError if no individual is that small."""
    run = RunDir(run_dir)
    loaded = run.load_checkpoint()
    metas = {m["id"]: m for m in loaded.state["genomes"]}
    if individual is None and max_params is not None:
        individual = int(report.best_under(report.load(run.path), max_params).individual_id)
    if individual is None:
        individual = json.loads((run.best / "metrics.json").read_text())["id"]
    if individual not in metas:
        raise KeyError(f"individual {individual} is not in the newest checkpoint of {run.path} "
                       f"(weights are kept for the population, the archive and every individual the "
                       f"history's front shows); "
                       f"available: {sorted(metas)}")
    arrays = loaded.arrays_of(f"g{individual}")
    # A Baldwinian individual's trained weights (what its metrics measured) if it has them.
    kind = "trained/" if any(k.startswith("trained/") for k in arrays) else "weight/"
    weights = {k[len(kind):]: v for k, v in arrays.items() if k.startswith(kind)}
    masks = {k[5:]: v for k, v in arrays.items() if k.startswith("mask/")}
    model = {**run.config().to_dict()["model"], "input_shape": loaded.state["input_shape"],
             "num_classes": loaded.state["num_classes"]}
    return Individual(individual, metas[individual], weights, masks, model, loaded.path.name)


def export(run_dir: str | Path, out: str | Path | None = None, individual: int | None = None,
           max_params: int | None = None) -> Path:
    """Write one individual (chosen as `load_individual` does) as a plain torch file."""
    ind = load_individual(run_dir, individual, max_params)
    payload = {
        "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in ind.weights.items()},
        "masks": {k: torch.from_numpy(np.array(v, dtype=bool)) for k, v in ind.masks.items()},
        "metrics": {k: v for k, v in ind.meta["metrics"].items() if isinstance(v, (int, float, str, type(None)))},
        "fitness": list(ind.meta["fitness"] or []),
        "individual_id": ind.id, "born": ind.meta["born"], "parents": list(ind.meta["parents"]),
        "model": ind.model,
        "checkpoint": ind.checkpoint,
    }
    out = Path(out) if out else RunDir(run_dir).path / "export" / f"individual-{ind.id}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return out
