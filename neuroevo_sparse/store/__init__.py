"""The run directory: everything a run leaves on disk, and nothing else writes there.

    RUN_DIR/.writer.lock         the writer lock (see lock.py); RUN_DIR/writer.json: its holder
    RUN_DIR/config.toml          the resolved experiment, exactly what ran
    RUN_DIR/plan.json            the training path measured for the run (calibration.py), if it was
    RUN_DIR/history/             one parquet part per generation (see history.py)
    RUN_DIR/checkpoints/         atomic checkpoints, each individual stored once (see checkpoint.py)
    RUN_DIR/best/                the best individual: model.pt (plain state_dict, masks applied),
                                 masks.npz and metrics.json

Owns: the layout of a run directory, its one writer (lock.py), its atomic writes, the history parts (history.py) and
the checkpoints with their checksums (checkpoint.py).

May import: config, faults. It stores plain data (numpy arrays, JSON); what the data means
is the GA's (evolution) and the reports' (report) business.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Generator

import numpy as np

from ..config.schema import ConfigError, Experiment, load as load_config, to_toml
from . import checkpoint
from . import history
from .lock import HOLDER, LOCK, RunDirLocked, WriterLock

__all__ = ["RunDir", "RunDirExists", "RunDirLocked", "WriterLock"]


class RunDirExists(FileExistsError):
    pass


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.history = self.path / "history"
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best"
        self.config_path = self.path / "config.toml"
        self.plan_path = self.path / "plan.json"
        self._lock: WriterLock | None = None
        self._writer: checkpoint.Writer | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    def acquire(self, command: str) -> "RunDir":
        """Take the run directory's writer lock for `command` (RunDirLocked, naming the holder,
        if another process has it); held until `release`."""
        if self._lock is None or not self._lock.held:
            self._lock = WriterLock(self.path, command).acquire()
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    @classmethod
    def create(cls, exp: Experiment, path: str | Path | None = None, plan: dict | None = None,
               command: str = "run") -> "RunDir":
        """A new run directory, with `plan` (the measured training path) if there is one;
        refuses one that already holds a run (resume it instead). It comes with its writer lock
        held (`release` it when done)."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            base = Path(exp.output.root) / exp.experiment.name / f"{stamp}-seed{exp.experiment.seed}"
            path, n = base, 1
            while path.exists():  # two runs started in the same second
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirExists(f"{run.path} is a file: a run writes only into a new or empty directory; "
                               f"choose another --run-dir")
        if not (run.config_path.exists() or run.checkpoints.exists()):
            run._refuse_unless_empty()  # before the lock, whose file would go into a user's directory
        run.path.mkdir(parents=True, exist_ok=True)
        # The lock, then the checks again: of two runs started on one new directory, one writes it.
        run.acquire(command)
        try:
            run._refuse_unless_empty()
            _write_text(run.config_path, to_toml(exp))
            if plan is not None:
                _write_text(run.plan_path, json.dumps(plan, indent=1))
        except BaseException:
            run.release()
            raise
        return run

    def _refuse_unless_empty(self) -> None:
        if self.config_path.exists() or self.checkpoints.exists():
            raise RunDirExists(f"{self.path} already holds a run; continue it with "
                               f"`neuroevo resume {self.path}` or choose another --run-dir")
        if self.path.is_dir() and any(p.name not in (LOCK, HOLDER) for p in self.path.iterdir()):
            # A run writes only into a new or empty directory: files of the user's that happen
            # to have the names a run writes (best/model.pt, history/...) are never overwritten.
            raise RunDirExists(f"{self.path} is not empty and holds no run: a run writes only into a new or "
                               f"empty directory; choose another --run-dir")

    def read_plan(self) -> Any:
        """The stored plan.json as parsed JSON, None if there is none."""
        try:
            return json.loads(self.plan_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigError([f"cannot be read ({e}); delete it to resume on the rules' training path "
                               f"(the run may then round differently)"], source=str(self.plan_path)) from e

    def remove_stale_temporaries(self) -> list[Path]:
        """Half-written files a killed process left behind (every write here goes to a hidden
        temporary name first, then is renamed): removed when the run is resumed."""
        stale = [p for p in self.path.rglob(".*tmp*") if ".tmp" in p.name]
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale

    def config(self, overrides: list[str] | None = None) -> Experiment:
        return load_config(self.config_path, overrides)

    # ------------------------------------------------------------------ history
    def write_history(self, generation: int, columns: dict[str, list[Any]]) -> Path:
        """One generation's history part, its rows given column by column (history.write_part)."""
        return history.write_part(self.history, generation, columns)

    def drop_history_after(self, generation: int) -> list[Path]:
        return history.drop_parts_after(self.history, generation) if self.history.exists() else []

    def missing_history(self, through: int) -> list[int]:
        """Generations 0..`through` that have no history part."""
        return [g for g in range(through + 1) if not history.part_path(self.history, g).is_file()]

    def read_history(self):
        import pandas as pd
        return pd.read_parquet(self.history)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, generation: int, state: dict[str, Any], individuals: dict[str, dict[str, np.ndarray]],
                        keep: int) -> Path:
        """Checkpoint `state` with `individuals` ("g<id>" or "a<id>" -> `Genome.to_arrays()`);
        an individual stored by an earlier checkpoint of this RunDir is not written again."""
        return self._checkpoint_writer().save(generation, state, individuals, keep)

    def saving_checkpoint(self, generation: int, state: dict[str, Any],
                          individuals: dict[str, dict[str, np.ndarray]], keep: int
                          ) -> Generator[None, None, Path]:
        """`save_checkpoint` in steps (checkpoint.Writer.saving): one individual per `next`."""
        return self._checkpoint_writer().saving(generation, state, individuals, keep)

    def _checkpoint_writer(self) -> checkpoint.Writer:
        if self._writer is None:
            self._writer = checkpoint.Writer(self.checkpoints)
        return self._writer

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was ever completed or started here (valid or not)."""
        return self.checkpoints.is_dir() and any(p.is_dir() for p in self.checkpoints.glob("gen-*"))

    def load_checkpoint(self) -> checkpoint.Loaded:
        return checkpoint.load_latest(self.checkpoints)

    # ------------------------------------------------------------------ best model
    def save_model(self, out_dir: Path, weights: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                   metrics: dict[str, Any]) -> Path:
        """A plain torch state_dict (masks already applied), masks and metrics, loadable with
        `torch.load(path, weights_only=True)` and no code from this package."""
        import torch

        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".model.pt.tmp-{os.getpid()}"
        # Serialised in memory, written by Python: a full disk is then an OSError (ENOSPC) that
        # names itself, not torch's C++ "basic_ios::clear: iostream error".
        buffer = io.BytesIO()
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, buffer)
        tmp.write_bytes(buffer.getbuffer())
        os.replace(tmp, out_dir / "model.pt")
        tmp = out_dir / f".masks.npz.tmp-{os.getpid()}.npz"
        np.savez(tmp, **masks)
        os.replace(tmp, out_dir / "masks.npz")
        _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
        return out_dir


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
