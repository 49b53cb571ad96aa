"""History parts: one parquet file per generation under RUN_DIR/history/.

Parts are written to a temporary name and renamed, so a reader (or a resume) never sees a
half-written part; `pandas.read_parquet(RUN_DIR / "history")` reads them all as one table.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# pyarrow imports pandas on its first pa.array call anyway: imported with this module, it is
# start-up time (beside the data load), not time of the first generation (0.4-0.6 s).
importlib.import_module("pandas")

# Columns every run has; per-layer densities follow as "density.<tensor name>" float columns.
FIXED = [
    ("run_id", pa.string()), ("generation", pa.int64()), ("individual_id", pa.int64()),
    ("parent_ids", pa.list_(pa.int64())), ("operator", pa.string()), ("born", pa.int64()),
    ("seed", pa.int64()), ("evaluated", pa.bool_()), ("selected", pa.bool_()),
    ("status", pa.string()), ("error", pa.string()),
    ("train_loss", pa.float64()), ("val_loss", pa.float64()), ("val_accuracy", pa.float64()),
    ("test_accuracy", pa.float64()), ("active_params", pa.int64()), ("density", pa.float64()),
    ("flops", pa.int64()), ("fitness", pa.list_(pa.float64())), ("steps", pa.int64()),
    ("train_seconds", pa.float64()), ("worker", pa.string()), ("device", pa.string()),
]

# Pareto runs only: the hypervolume of the archive after the row's generation (fitness.py).
# Runs with training.lineage_schedule or evolution.polish_steps: the optimiser steps the
# individual's weights carry (Genome.lineage_steps).
OPTIONAL = [("hypervolume", pa.float64()), ("lineage_steps", pa.int64())]

# Columns that vary between identical runs (timing, placement); everything else must not.
NONDETERMINISTIC = ("train_seconds", "worker", "device")


def part_path(history_dir: Path, generation: int) -> Path:
    return history_dir / f"gen-{generation:06d}.parquet"


def write_part(history_dir: Path, generation: int, columns: dict[str, list[Any]]) -> Path:
    """One generation's part from its rows given column by column (name -> one value per row):
    every FIXED column, any of OPTIONAL, and the per-layer densities."""
    history_dir.mkdir(parents=True, exist_ok=True)
    layer_cols = sorted(c for c in columns if c.startswith("density."))
    optional = [(c, t) for c, t in OPTIONAL if c in columns]
    schema = pa.schema(FIXED + optional + [(c, pa.float64()) for c in layer_cols])
    table = pa.Table.from_pydict(columns, schema=schema)
    path = part_path(history_dir, generation)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def drop_parts_after(history_dir: Path, generation: int) -> list[Path]:
    """Remove parts of generations > `generation` (written after the checkpoint resumed from)."""
    dropped = []
    for p in sorted(history_dir.glob("gen-*.parquet")):
        if int(p.stem.split("-")[1]) > generation:
            p.unlink()
            dropped.append(p)
    return dropped
