"""Atomic, checksummed checkpoints made of JSON and .npz: loading one never runs code.

Layout of RUN_DIR/checkpoints/:
    gen-000005/state.json     plain JSON (generation, counters, lineage, fitness, config hash)
    gen-000005/arrays.npz     masks and weights, read with allow_pickle=False
    gen-000005/MANIFEST.json  sha256 of the two files above, written last
    LATEST                    name of the newest complete checkpoint

A checkpoint is built in a hidden temporary directory and renamed into place, then LATEST
is replaced; a kill at any moment leaves the previous checkpoint intact and named. On
load, a checkpoint whose files are missing, truncated or do not match their checksums is
reported and the next older one is tried.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import faults

FORMAT = 1
FILES = ("state.json", "arrays.npz")


class NoValidCheckpoint(RuntimeError):
    pass


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]
    arrays: dict[str, np.ndarray]
    skipped: list[str]  # "<dir>: <why>" for each newer checkpoint that could not be used


def name(generation: int) -> str:
    return f"gen-{generation:06d}"


def save(ckpt_dir: Path, generation: int, state: dict[str, Any], arrays: dict[str, np.ndarray],
         keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / name(generation)
    tmp = ckpt_dir / f".tmp-{name(generation)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / "state.json").write_text(json.dumps(_json_safe({"format": FORMAT, **state}), indent=1, allow_nan=False))
    np.savez(tmp / "arrays.npz", **arrays)
    manifest = {"format": FORMAT, "files": {f: _sha256(tmp / f) for f in FILES}}
    for f in FILES:
        _fsync(tmp / f)
    faults.point("checkpoint-files", generation)
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    _fsync(tmp / "MANIFEST.json")
    if final.exists():  # re-checkpointing a generation (after a resume): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    faults.point("checkpoint-renamed", generation)
    _write_atomic(ckpt_dir / "LATEST", final.name + "\n")
    _fsync_dir(ckpt_dir)
    _prune(ckpt_dir, keep)
    return final


def load_latest(ckpt_dir: Path) -> Loaded:
    """The newest valid checkpoint; newer ones that are damaged are listed in `skipped`."""
    # Newest first by name, not by LATEST alone: a checkpoint renamed into place just before
    # a kill (LATEST not yet updated) is complete and verified, so it is the one to use.
    candidates = sorted((p for p in ckpt_dir.glob("gen-*") if p.is_dir()), reverse=True)
    skipped = []
    for path in candidates:
        try:
            state, arrays = read(path)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        return Loaded(path, state, arrays, skipped)
    where = "; ".join(skipped) if skipped else "there are none"
    raise NoValidCheckpoint(f"no valid checkpoint in {ckpt_dir} ({where})")


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Verify and read one checkpoint directory. Raises ValueError naming what is wrong."""
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        raise ValueError("no MANIFEST.json (checkpoint incomplete)")
    manifest = json.loads(manifest_path.read_bytes())
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("MANIFEST.json is not a checkpoint manifest (expected {\"files\": {name: sha256}})")
    for f in FILES:
        if not (path / f).is_file():
            raise ValueError(f"{f} is missing")
        digest = _sha256(path / f)
        if digest != manifest["files"].get(f):
            raise ValueError(f"{f} does not match its checksum (truncated or modified)")
    state = json.loads((path / "state.json").read_bytes())
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"state.json is not a format-{FORMAT} checkpoint state")
    # allow_pickle=False: an object array (the only way a pickle hides in .npz) is refused.
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    _check_shape(state, arrays)
    return state, arrays


def _check_shape(state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """What resuming reads must be there, of the right kind: a checkpoint that passes its
    checksums but was written by something else is refused here, not deep inside a resume."""
    for key, kind in (("generation", int), ("next_id", int), ("population", list), ("archive", list),
                      ("genomes", list), ("config_hash", str)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ValueError(f"state.json: {key!r} is missing or not a {kind.__name__}")
    ids = set()
    for g in state["genomes"]:
        if not isinstance(g, dict) or not isinstance(g.get("id"), int):
            raise ValueError("state.json: a genome record has no integer id")
        if not any(k.startswith(f"g{g['id']}/weight/") for k in arrays):
            raise ValueError(f"arrays.npz: no weights for individual {g['id']}")
        ids.add(g["id"])
    missing = [i for i in state["population"] + state["archive"] if i not in ids]
    if missing:
        raise ValueError(f"state.json: individuals {missing[:5]} are listed but have no record")


def _json_safe(obj: Any) -> Any:
    """NaN and infinities (a failed individual's loss) as null: state.json stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _prune(ckpt_dir: Path, keep: int) -> None:
    complete = sorted(p for p in ckpt_dir.glob("gen-*") if p.is_dir())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in ckpt_dir.glob(".tmp-*"):
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
