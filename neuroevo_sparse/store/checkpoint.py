"""Atomic, checksummed checkpoints made of JSON and raw arrays: loading one never runs code.

Layout of RUN_DIR/checkpoints/:
    individuals/<sha256>.ind  one individual (masks, weights, any other per-individual arrays),
                              stored sparse and named by the sha256 of its bytes: written once,
                              shared by every checkpoint that holds it
    gen-000005/state.json     plain JSON (generation, counters, lineage, fitness, config hash) and,
                              per individual, the hash of its file
    gen-000005/MANIFEST.json  sha256 of state.json and the individuals it refers to, written last
    LATEST                    name of the newest complete checkpoint

An individual's file holds each array of `Genome.to_arrays()` under its own name, encoded by
what it is: a mask as packed bits; an array of a masked tensor's shape that is zero outside the
mask (weights, trained weights, anything else a genome carries per connection) as its active
values in mask order; anything else as it is. The file is a magic line, the length of a JSON
header that says which (with each array's dtype, shape and length), the header, then the raw
bytes in the header's (sorted) order: any per-individual array a genome adds is carried without a change here, and reading
one is `np.frombuffer` of plain numeric dtypes, so no code and no pickle can come from it.
Its name is the sha256 of its bytes, checked again on every load. A survivor is therefore
written once however many checkpoints hold it, and a checkpoint costs the individuals that
are new since the last one, at about (4 x density + 1/8) bytes per maskable weight.

A checkpoint's individuals are written first, then its directory is built under a hidden
temporary name and renamed into place, then LATEST is replaced; a kill at any moment leaves
the previous checkpoint intact and named. Only then are the checkpoints beyond
`keep` removed, and an individual's file only once no checkpoint left refers to it. On load,
a checkpoint whose files are missing, truncated or do not match their hashes is reported and
the next older one is tried; a reader racing a writer that removes old checkpoints reads the
listing again. Format-1 checkpoints (every individual dense in one arrays.npz) still load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import operator
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from .. import faults

FORMAT = 2
READABLE = (1, 2)
FILES = ("state.json",)
OBJECTS = "individuals"
SUFFIX = ".ind"
MAGIC = b"neuroevo_sparse individual 1\n"

log = logging.getLogger("neuroevo_sparse")


class NoValidCheckpoint(RuntimeError):
    pass


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]
    skipped: list[str]  # "<dir>: <why>" for each newer checkpoint that could not be used
    # entry ("g<id>": an individual, "a<id>" / "f<id>": an archive's / a front point's own copy)
    # -> its file's bytes (format 2)
    # or its dense arrays (format 1)
    stored: dict[str, bytes | dict[str, np.ndarray]] = field(default_factory=dict)

    def arrays_of(self, entry: str) -> dict[str, np.ndarray]:
        """The arrays of one individual ("g<id>", or "a<id>" / "f<id>" for an archive's / a front's own copy), dense,
        as `Genome.to_arrays()` gave them."""
        return decode(self.stored[entry])

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every individual's arrays as one flat dict ("g<id>/<key>"), dense."""
        return {f"{entry}/{k}": v for entry in self.stored for k, v in self.arrays_of(entry).items()}


def name(generation: int) -> str:
    return f"gen-{generation:06d}"


# ---------------------------------------------------------------------------- one individual

def encode(arrays: dict[str, np.ndarray]) -> bytes:
    """An individual's arrays as the bytes of its file (see the module's docstring)."""
    values = [np.asarray(v) for v in arrays.values()]
    # What the names, shapes and dtypes decide is decided once per layout (_Plan): per individual
    # only its data is looked at, which is a checkpoint's cost per new individual.
    plan = _plan(tuple((key, v.shape, v.dtype) for key, v in zip(arrays, values)))
    encs: list[str] = []
    chunks: list[np.ndarray] = []
    for at, mask_at, bits in plan.entries:  # in the header's (sorted) order
        v = values[at]
        if bits:
            enc, data = "bits", np.packbits(v.ravel())
        elif mask_at is not None and (active := _active_values(v, values[mask_at])) is not None:
            enc, data = "active", active
        else:
            enc, data = "dense", np.ascontiguousarray(v)
        encs.append(enc)
        chunks.append(data)
    parts = plan.header(tuple(encs))
    head = ("".join(part + str(c.nbytes) for part, c in zip(parts, chunks)) + parts[-1]).encode()
    return b"".join([MAGIC, len(head).to_bytes(8, "little"), head, *(memoryview(c).cast("B") for c in chunks)])


class _Plan:
    """What `encode` decides from an individual's layout alone (names, shapes, dtypes: the same
    for every individual of a run), worked out once: the keys in sorted order, each with its place
    in the given order ("at": a genome's tensors come back in the order its network has them,
    which the operators' draws follow), the place of the mask of its tensor, whether it is a
    mask stored as bits; and per choice of encodings, the header's JSON without its sizes."""

    def __init__(self, layout: tuple[tuple[str, tuple[int, ...], np.dtype], ...]):
        at = {key: i for i, (key, _, _) in enumerate(layout)}
        self.keys = sorted(at)
        for key in self.keys:
            if layout[at[key]][2].hasobject:
                raise ValueError(f"{key}: an array of Python objects cannot be stored (numbers and booleans only)")
        self.entries = tuple((at[key], at.get("mask/" + key.split("/", 1)[1]) if "/" in key else None,
                              key.startswith("mask/") and layout[at[key]][2] == bool) for key in self.keys)
        self.layout = layout
        self._headers: dict[tuple[str, ...], tuple[str, ...]] = {}

    def header(self, encs: tuple[str, ...]) -> tuple[str, ...]:
        """The header's JSON for these encodings (in sorted key order), split where each size goes."""
        parts = self._headers.get(encs)
        if parts is None:
            if len(self._headers) >= 64:  # encodings that flip between individuals: keep it bounded
                self._headers.clear()
            parts = self._headers[encs] = _header_template(tuple(
                (key, self.layout[at][1], self.layout[at][2].str, at, enc)
                for key, (at, _, _), enc in zip(self.keys, self.entries, encs)))
        return parts


@functools.lru_cache(maxsize=64)
def _plan(layout: tuple[tuple[str, tuple[int, ...], np.dtype], ...]) -> _Plan:
    return _Plan(layout)


@functools.lru_cache(maxsize=64)
def _header_template(layout: tuple[tuple[str, tuple[int, ...], str, int, str], ...]) -> tuple[str, ...]:
    """The header's JSON split where each entry's "nbytes" value goes (in sorted key order: the
    only unescaped '"nbytes":' in the text are those fields)."""
    header = {key: {"shape": list(shape), "dtype": dtype, "at": at, "enc": enc, "nbytes": 0}
              for key, shape, dtype, at, enc in layout}
    parts = json.dumps(header, sort_keys=True, separators=(",", ":")).split('"nbytes":0')
    return tuple(part + '"nbytes":' for part in parts[:-1]) + (parts[-1],)


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _active_values(v: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """`v`'s values on `mask`, in mask order, if `v` is zero outside the mask down to the bit (a
    -0.0 keeps it dense), so that the round trip is exact; else None.

    Counted rather than gathered: `v` is zero outside the mask exactly when its values on the
    mask hold all of its non-zero bit patterns, which spares a copy of the (larger) inactive part."""
    if mask.dtype != bool or v.shape != mask.shape or v.dtype.kind not in "fiu":
        return None
    data = np.compress(mask.ravel(), v.ravel())  # v[mask], in half the time
    unsigned = _UNSIGNED.get(v.dtype.itemsize)
    if unsigned is None:
        zero = not np.any(np.ascontiguousarray(v[~mask]).view(np.uint8))
    else:
        zero = np.count_nonzero(v.view(unsigned)) == np.count_nonzero(data.view(unsigned))
    return data if zero else None


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def decode(blob: bytes | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays `encode` was given, bit for bit. A format-1 individual (a dict) is dense already.
    Raises ValueError for bytes that are not an individual's file."""
    if isinstance(blob, dict):
        return dict(blob)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        raise ValueError("not an individual's file (no magic line)")
    size = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8 + size
    header = json.loads(blob[len(MAGIC) + 8:start].decode())
    places, offset = {}, start
    for key in sorted(header):
        places[key] = offset
        offset += int(header[key]["nbytes"])
    if offset > len(blob):
        raise ValueError(f"{offset - len(blob)} bytes short (truncated)")
    out: dict[str, np.ndarray] = {}
    for key in sorted(header, key=lambda k: header[k]["enc"] != "bits"):  # masks first
        e = header[key]
        shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
        stored = np.dtype(np.uint8) if e["enc"] == "bits" else dtype
        if dtype.hasobject or dtype.kind not in "biuf" or e["nbytes"] % stored.itemsize:
            raise ValueError(f"{key}: dtype {e['dtype']!r} is not a plain number or boolean")
        data = np.frombuffer(blob, dtype=stored, count=e["nbytes"] // stored.itemsize, offset=places[key])
        if e["enc"] == "bits":
            out[key] = np.unpackbits(data, count=math.prod(shape)).astype(bool).reshape(shape)
        elif e["enc"] == "active":
            full = np.zeros(shape, dtype=dtype)
            full[out[f"mask/{key.split('/', 1)[1]}"]] = data
            out[key] = full
        elif e["enc"] == "dense":
            out[key] = data.reshape(shape).copy()
        else:
            raise ValueError(f"{key}: unknown encoding {e['enc']!r}")
    return dict(sorted(out.items(), key=lambda kv: header[kv[0]].get("at", 0)))


def _read_individual(path: Path) -> bytes:
    blob = path.read_bytes()
    if digest(blob) != path.stem:
        raise ValueError("does not match its hash (truncated or modified)")
    decode(blob)  # refuses what is not an individual's file, here rather than in a resume
    return blob


# ---------------------------------------------------------------------------- writing

class Writer:
    """Writes the checkpoints of one run directory; remembers which individuals it has stored,
    so a survivor whose arrays are the same objects as last time is neither encoded nor hashed
    again (a genome's arrays are never modified in place: operators copy, write-back replaces)."""

    def __init__(self, ckpt_dir: Path):
        self.dir = ckpt_dir
        self._known: dict[str, tuple[list[np.ndarray], str]] = {}

    def _store(self, entry: str, arrays: dict[str, np.ndarray], objects: str, written: list[str]) -> str:
        same = self._known.get(entry)
        values = [arrays[k] for k in sorted(arrays)]
        if same is not None and len(same[0]) == len(values) and all(map(operator.is_, same[0], values)):
            key = same[1]
        else:
            blob = encode(arrays)
            key = digest(blob)
            # Paths as strings: pathlib's objects cost more than these calls do.
            path = os.path.join(objects, f"{key}{SUFFIX}")
            if not os.path.exists(path):
                tmp = os.path.join(objects, f".tmp-{key}-{os.getpid()}")
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
                written.append(path)
        self._known[entry] = (values, key)
        return key

    def save(self, generation: int, state: dict[str, Any], individuals: dict[str, dict[str, np.ndarray]],
             keep: int) -> Path:
        """Checkpoint `state` with `individuals` (entry -> `Genome.to_arrays()`); keep the newest `keep`."""
        steps = self.saving(generation, state, individuals, keep)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def saving(self, generation: int, state: dict[str, Any], individuals: dict[str, dict[str, np.ndarray]],
               keep: int) -> Generator[None, None, Path]:
        """`save` in steps: each `next` stores one individual, the last one does the rest. Another
        thread may take the steps over between two (the driver's checkpoint writer does)."""
        objects = self.dir / OBJECTS
        objects.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        refs: dict[str, str] = {}
        for entry, arrays in individuals.items():
            refs[entry] = self._store(entry, arrays, str(objects), written)
            yield
        self._known = {e: self._known[e] for e in refs}
        _sync(objects, written)  # on disk before any checkpoint that refers to them
        final = self.dir / name(generation)
        tmp = self.dir / f".tmp-{name(generation)}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "state.json").write_text(_state_json({"format": FORMAT, **state, "individuals": refs}))
        manifest = {"format": FORMAT, "files": {f: _sha256(tmp / f) for f in FILES},
                    "individuals": sorted(set(refs.values()))}
        for f in FILES:
            _fsync(tmp / f)
        faults.point("checkpoint-files", generation)
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / "MANIFEST.json")
        if final.exists():  # re-checkpointing a generation (after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        faults.point("checkpoint-renamed", generation)
        _write_atomic(self.dir / "LATEST", final.name + "\n")
        _fsync_dir(self.dir)
        _prune(self.dir, keep)
        return final


def save(ckpt_dir: Path, generation: int, state: dict[str, Any], individuals: dict[str, dict[str, np.ndarray]],
         keep: int) -> Path:
    """One checkpoint, by a Writer that has stored nothing before (every individual is hashed)."""
    return Writer(ckpt_dir).save(generation, state, individuals, keep)


# ---------------------------------------------------------------------------- reading

def load_latest(ckpt_dir: Path, attempts: int = 5) -> Loaded:
    """The newest valid checkpoint; newer ones that are damaged are listed in `skipped`. If the
    checkpoints change while they are read (a writer removes old ones), they are read again."""
    for attempt in range(attempts):
        listing = _listing(ckpt_dir)
        try:
            loaded = _newest_valid(ckpt_dir, listing)
        except NoValidCheckpoint:
            if _listing(ckpt_dir) != listing and attempt + 1 < attempts:
                continue
            raise
        if not loaded.skipped or _listing(ckpt_dir) == listing or attempt + 1 == attempts:
            return loaded
    raise AssertionError("unreachable")


def _listing(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.glob("gen-*") if p.is_dir())


def _newest_valid(ckpt_dir: Path, listing: list[str]) -> Loaded:
    # Newest first by name, not by LATEST alone: a checkpoint renamed into place just before
    # a kill (LATEST not yet updated) is complete and verified, so it is the one to use.
    skipped = []
    for path in (ckpt_dir / n for n in reversed(listing)):
        try:
            state, stored = read(path)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        return Loaded(path, state, skipped, stored)
    where = "; ".join(skipped) if skipped else "there are none"
    raise NoValidCheckpoint(f"no valid checkpoint in {ckpt_dir} ({where})")


def read(path: Path) -> tuple[dict[str, Any], dict[str, bytes | dict[str, np.ndarray]]]:
    """Verify and read one checkpoint directory: its state and, per entry, the individual's
    arrays as stored. Raises ValueError naming what is wrong."""
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        raise ValueError("no MANIFEST.json (checkpoint incomplete)")
    manifest = json.loads(manifest_path.read_bytes())
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("MANIFEST.json is not a checkpoint manifest (expected {\"files\": {name: sha256}})")
    files = ("state.json", "arrays.npz") if manifest.get("format", 1) == 1 else FILES
    for f in files:
        if not (path / f).is_file():
            raise ValueError(f"{f} is missing")
        if _sha256(path / f) != manifest["files"].get(f):
            raise ValueError(f"{f} does not match its checksum (truncated or modified)")
    state = json.loads((path / "state.json").read_bytes())
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise ValueError(f"state.json is not a checkpoint state of format {' or '.join(map(str, READABLE))}")
    if state["format"] == 1:
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
        stored: dict[str, bytes | dict[str, np.ndarray]] = {}
        for k, v in flat.items():
            entry, _, rest = k.partition("/")
            stored.setdefault(entry, {})[rest] = v  # type: ignore[index]
    else:
        refs = state.get("individuals")
        if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
            raise ValueError("state.json: 'individuals' is missing or not a map of entry to hash")
        objects, cache = path.parent / OBJECTS, {}
        for key in set(refs.values()):
            file = objects / f"{key}{SUFFIX}"
            if not file.is_file():
                raise ValueError(f"{OBJECTS}/{file.name} is missing")
            try:
                cache[key] = _read_individual(file)
            except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise ValueError(f"{OBJECTS}/{file.name} cannot be used: {e}") from e
        stored = {entry: cache[key] for entry, key in refs.items()}
    _check_shape(state, stored)
    return state, stored


def _check_shape(state: dict[str, Any], stored: dict[str, Any]) -> None:
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
        if f"g{g['id']}" not in stored:
            raise ValueError(f"no stored arrays for individual {g['id']}")
        ids.add(g["id"])
    missing = [i for i in state["population"] + state["archive"] if i not in ids]
    if missing:
        raise ValueError(f"state.json: individuals {missing[:5]} are listed but have no record")
    for kind, prefix in (("archive_copies", "a"), ("front_copies", "f")):
        for g in state.get(kind, []):
            if not isinstance(g, dict) or f"{prefix}{g.get('id')}" not in stored:
                raise ValueError(f"state.json: an entry of {kind!r} has no stored individual")


def _state_json(state: dict[str, Any]) -> str:
    """`state` as compact standard JSON. Walked for NaN and infinities only when the encoder
    finds one: the walk costs more than the encoding, and most states have none."""
    try:
        return json.dumps(state, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_json_safe(state), separators=(",", ":"), allow_nan=False)


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
    """The newest `keep` checkpoints stay; then the individuals none of them refers to go. If
    a checkpoint's references cannot be read, no individual is removed: it may need them."""
    complete = sorted(p for p in ckpt_dir.glob("gen-*") if p.is_dir())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    objects = ckpt_dir / OBJECTS
    # Listed once, as names: a Path per stored individual costs more than the rest of this.
    stored = [entry.name for entry in os.scandir(objects)] if objects.is_dir() else []
    for tmp in [*ckpt_dir.glob(".tmp-*"), *(objects / n for n in stored if n.startswith(".tmp-"))]:
        if f"-{os.getpid()}" not in tmp.name:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process
            else:
                tmp.unlink(missing_ok=True)
    referenced: set[str] = set()
    for kept in complete[-keep:]:
        try:
            manifest = json.loads((kept / "MANIFEST.json").read_bytes())
            referenced |= set(manifest.get("individuals", []))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("individuals of old checkpoints are kept: the manifest of %s cannot be read (%s)", kept, e)
            return
    for n in stored:
        if n.endswith(SUFFIX) and not n.startswith(".") and n[:-len(SUFFIX)] not in referenced:
            (objects / n).unlink(missing_ok=True)


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


def _sync(directory: Path, files: list[str]) -> None:
    """Make `files` and their names in `directory` durable: one syncfs(2) of the filesystem on
    Linux (one fsync per small file costs milliseconds each, more than writing it), else an
    fsync per file."""
    if files:
        fd = os.open(directory, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                for f in files:
                    _fsync(f)
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(fd: int) -> int:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs(fd)
    except (OSError, AttributeError):
        return -1


def _fsync(path: Path | str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
