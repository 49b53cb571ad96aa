"""Atomic, checksummed checkpoints made of JSON and raw arrays: loading one never runs code.

Layout of RUN_DIR/checkpoints/:
    packs/<sha256>.pack       the individuals new to one checkpoint, one after another (see below):
                              written once, shared by every later checkpoint that holds them
    gen-000005/state.json     plain JSON (generation, counters, lineage, fitness, config hash) and,
                              per individual, the sha256 of its bytes and where they lie
                              ("individuals": entry -> [sha256, pack, offset, length])
    gen-000005/MANIFEST.json  sha256 of state.json and the packs it refers to, written last
    LATEST                    name of the newest complete checkpoint

An individual's bytes hold each array of `Genome.to_arrays()` under its own name, encoded by
what it is: a mask as packed bits; an array of a masked tensor's shape that is zero outside the
mask (weights, trained weights, anything else a genome carries per connection) as its active
values in mask order; anything else as it is. They are a magic line, the length of a JSON
header that says which (with each array's dtype, shape and length), the header, then the raw
bytes in the header's (sorted) order: any per-individual array a genome adds is carried without a
change here, and reading one is `np.frombuffer` of plain numeric dtypes, so no code and no pickle
can come from it. An individual is named by the sha256 of its bytes, checked again on every load.

A checkpoint writes one pack: the individuals that no earlier kept checkpoint stored, so a
survivor is written once however many checkpoints hold it, and a checkpoint costs the new
individuals, at about (4 x density + 1/8) bytes per maskable weight, in one file (one file per
individual made the file system, not the data, a checkpoint's cost: 0.2-1 ms per file here). A
pack is removed once no kept checkpoint refers to it; before that, the bytes of its individuals
that no kept checkpoint refers to any more are freed in place (a hole punched in the file, on
Linux file systems that support it: ext4, xfs, btrfs, tmpfs), so the disk holds about what the
kept checkpoints need without an individual being written twice. An individual whose bytes
were freed is never referred to again: if it comes back, it is written anew.

A checkpoint's pack is written first, then its directory is built under a hidden temporary name
and renamed into place, then LATEST is replaced; a kill at any moment leaves the previous
checkpoint intact and named. Only then are the checkpoints beyond `keep` removed, and a pack
only once no checkpoint left refers to it. On load, a checkpoint whose files are missing,
truncated or do not match their hashes is reported and the next older one is tried; a reader
racing a writer that removes old checkpoints reads the listing again. Format-1 checkpoints
(every individual dense in one arrays.npz) and format-2 ones (one file per individual in
individuals/<sha256>.ind) still load.
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
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from .. import faults

FORMAT = 3
READABLE = (1, 2, 3)
FILES = ("state.json",)
PACKS = "packs"
PACK_SUFFIX = ".pack"
OBJECTS = "individuals"  # format 2: one file per individual
SUFFIX = ".ind"
BLOCK = 4096  # holes are punched in whole blocks of this size
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


def _checked(blob: bytes, key: str) -> bytes:
    """`blob`, once it matches its name `key` and is an individual's bytes (ValueError otherwise:
    refused here rather than deep inside a resume)."""
    if digest(blob) != key:
        raise ValueError("does not match its hash (truncated or modified)")
    decode(blob)
    return blob


# ---------------------------------------------------------------------------- writing

class Writer:
    """Writes the checkpoints of one run directory. It knows where each individual it stored lies
    (and, for a resumed run, those of the newest checkpoint), so a survivor is not written again;
    and which arrays it last stored per entry, so a survivor whose arrays are the same objects as
    last time is neither encoded nor hashed again (a genome's arrays are never modified in place:
    operators copy, write-back replaces)."""

    def __init__(self, ckpt_dir: Path):
        self.dir = ckpt_dir
        self._known: dict[str, tuple[list[np.ndarray], str]] = {}
        self._where: dict[str, tuple[str, int, int]] | None = None  # key -> (pack, offset, length)
        self._held: dict[str, set[str]] = {}  # checkpoint name -> the keys it refers to

    def _key(self, entry: str, arrays: dict[str, np.ndarray]) -> tuple[str, bytes | None]:
        """The individual's name, and its bytes unless they were not needed to find it."""
        same = self._known.get(entry)
        values = [arrays[k] for k in sorted(arrays)]
        if same is not None and len(same[0]) == len(values) and all(map(operator.is_, same[0], values)):
            return same[1], None
        blob = encode(arrays)
        key = digest(blob)
        self._known[entry] = (values, key)
        return key, blob

    def _locations(self) -> dict[str, tuple[str, int, int]]:
        """Where the individuals of the newest checkpoint that verifies lie (a resumed run's
        writer starts from them), once; then kept up to date by `saving`."""
        if self._where is None:
            self._where = {}
            for path in (self.dir / n for n in reversed(_listing(self.dir))):
                try:
                    state = _verified_state(path)
                    if state.get("format") != FORMAT:
                        break
                    places = _places(state)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                sizes: dict[str, int] = {}
                for key, pack, offset, length in places.values():
                    file = self.dir / PACKS / f"{pack}{PACK_SUFFIX}"
                    if pack not in sizes:
                        sizes[pack] = file.stat().st_size if file.is_file() else -1
                    if offset + length <= sizes[pack]:
                        self._where[key] = (pack, offset, length)
                break
        return self._where

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
        packs = self.dir / PACKS
        packs.mkdir(parents=True, exist_ok=True)
        where = self._locations()
        refs: dict[str, str] = {}
        new: dict[str, tuple[int, int]] = {}  # key -> (offset, length) in this checkpoint's pack
        tmp = packs / f".tmp-{name(generation)}-{os.getpid()}"
        with open(tmp, "wb") as out:
            for entry, arrays in individuals.items():
                key, blob = self._key(entry, arrays)
                if key not in where and key not in new:
                    blob = blob if blob is not None else encode(arrays)
                    new[key] = (out.tell(), len(blob))
                    out.write(blob)
                refs[entry] = key
                yield
        self._known = {e: self._known[e] for e in refs}
        if new:
            pack = hashlib.sha256("\n".join(new).encode()).hexdigest()  # the keys in order fix the bytes
            os.replace(tmp, packs / f"{pack}{PACK_SUFFIX}")
            _sync(packs, [str(packs / f"{pack}{PACK_SUFFIX}")])  # on disk before a checkpoint refers to it
            where.update({key: (pack, offset, length) for key, (offset, length) in new.items()})
        else:
            tmp.unlink()
        final = self.dir / name(generation)
        tmp = self.dir / f".tmp-{name(generation)}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        held = sorted({where[k][0] for k in refs.values()})
        index = {pack: i for i, pack in enumerate(held)}
        places = {entry: [key, index[where[key][0]], where[key][1], where[key][2]] for entry, key in refs.items()}
        (tmp / "state.json").write_text(_state_json({"format": FORMAT, **state, "individuals": places,
                                                     "packs": held}))
        manifest = {"format": FORMAT, "files": {f: _sha256(tmp / f) for f in FILES}, "packs": held}
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
        self._held[final.name] = set(refs.values())
        removed = set(_prune(self.dir, keep))
        self._free(where, removed)
        return final

    def _free(self, where: dict[str, tuple[str, int, int]], removed: set[str]) -> None:
        """Forget the individuals of removed packs; free the bytes of those no kept checkpoint
        refers to (known only once every kept checkpoint was written by this writer)."""
        kept = _listing(self.dir)
        self._held = {n: keys for n, keys in self._held.items() if n in kept}
        live = set().union(*self._held.values()) if set(kept) <= set(self._held) else None
        dead: dict[str, list[tuple[int, int]]] = {}
        for key, (pack, offset, length) in list(where.items()):
            if pack in removed:
                del where[key]
            elif live is not None and key not in live:
                dead.setdefault(pack, []).append((offset, length))
                del where[key]  # its bytes go: never referred to again
        for pack, ranges in dead.items():
            _punch(self.dir / PACKS / f"{pack}{PACK_SUFFIX}", ranges)


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
    state = _verified_state(path)
    if state["format"] == 1:
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
        stored: dict[str, bytes | dict[str, np.ndarray]] = {}
        for k, v in flat.items():
            entry, _, rest = k.partition("/")
            stored.setdefault(entry, {})[rest] = v  # type: ignore[index]
    else:
        if state["format"] == 3:
            places = _places(state)
            refs = {entry: place[0] for entry, place in state["individuals"].items()}
            cache = _read_packed(path.parent, {place[0]: place[1:] for place in places.values()})
        else:
            refs = state.get("individuals")
            if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
                raise ValueError("state.json: 'individuals' is missing or not a map of entry to hash")
            cache = _read_files(path.parent, set(refs.values()))
        stored = {entry: cache[key] for entry, key in refs.items()}
    _check_shape(state, stored)
    return state, stored


def _verified_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, once its manifest's checksums hold (ValueError otherwise)."""
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
    return state


def _places(state: dict[str, Any]) -> dict[str, tuple[str, str, int, int]]:
    """A format-3 state's individuals: entry -> (key, pack, offset, length)."""
    packs, refs = state.get("packs"), state.get("individuals")
    if not isinstance(packs, list) or not all(isinstance(p, str) and len(p) == 64 and p.isalnum() for p in packs):
        raise ValueError("state.json: 'packs' is missing or not a list of pack names")
    if not isinstance(refs, dict):
        raise ValueError("state.json: 'individuals' is missing or not a map of entry to place")
    out = {}
    for entry, place in refs.items():
        if not (isinstance(place, list) and len(place) == 4 and isinstance(place[0], str)
                and all(type(v) is int and v >= 0 for v in place[1:]) and place[1] < len(packs)):
            raise ValueError(f"state.json: the place of {entry!r} is not [sha256, pack, offset, length]")
        out[entry] = (place[0], packs[place[1]], place[2], place[3])
    return out


def _read_packed(ckpt_dir: Path, places: dict[str, tuple[str, int, int]]) -> dict[str, bytes]:
    """The bytes of the individuals `places` (key -> pack, offset, length), each checked against its name."""
    by_pack: dict[str, list[str]] = {}
    for key, (pack, _, _) in places.items():
        by_pack.setdefault(pack, []).append(key)
    out = {}
    for pack, held in by_pack.items():
        file = ckpt_dir / PACKS / f"{pack}{PACK_SUFFIX}"
        if not file.is_file():
            raise ValueError(f"{PACKS}/{file.name} is missing")
        with open(file, "rb") as f:
            for key in sorted(held, key=lambda k: places[k][1]):
                _, offset, length = places[key]
                f.seek(offset)
                blob = f.read(length)
                try:
                    if len(blob) < length:
                        raise ValueError(f"{length - len(blob)} bytes short (truncated)")
                    _checked(blob, key)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                    raise ValueError(f"{PACKS}/{file.name}: individual {key[:12]} cannot be used: {e}") from e
                out[key] = blob
    return out


def _read_files(ckpt_dir: Path, keys: set[str]) -> dict[str, bytes]:
    """Format 2: the bytes of the individuals `keys`, one file each."""
    out = {}
    for key in keys:
        file = ckpt_dir / OBJECTS / f"{key}{SUFFIX}"
        if not file.is_file():
            raise ValueError(f"{OBJECTS}/{file.name} is missing")
        try:
            out[key] = _checked(file.read_bytes(), key)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{OBJECTS}/{file.name} cannot be used: {e}") from e
    return out


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


def _prune(ckpt_dir: Path, keep: int) -> list[str]:
    """The newest `keep` checkpoints stay; then the packs (and format-2 individual files) none of
    them refers to go. If a checkpoint's references cannot be read, nothing is removed: it may
    need them. Returns the names of the packs removed."""
    complete = sorted(p for p in ckpt_dir.glob("gen-*") if p.is_dir())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # Listed once, as names: a Path per stored file costs more than the rest of this.
    listed = {d: [entry.name for entry in os.scandir(ckpt_dir / d)] if (ckpt_dir / d).is_dir() else []
              for d in (PACKS, OBJECTS)}
    for tmp in [*ckpt_dir.glob(".tmp-*"), *(ckpt_dir / d / n for d, names in listed.items() for n in names
                                            if n.startswith(".tmp-"))]:
        if f"-{os.getpid()}" not in tmp.name:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process
            else:
                tmp.unlink(missing_ok=True)
    referenced: dict[str, set[str]] = {PACKS: set(), OBJECTS: set()}
    for kept in complete[-keep:]:
        try:
            manifest = json.loads((kept / "MANIFEST.json").read_bytes())
            referenced[PACKS] |= set(manifest.get("packs", []))
            if manifest.get("format") == 2:  # its individuals are files; a format-3 one's lie in packs
                referenced[OBJECTS] |= set(manifest.get("individuals", []))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("the packs of old checkpoints are kept: the manifest of %s cannot be read (%s)", kept, e)
            return []
    removed = []
    for d, suffix in ((PACKS, PACK_SUFFIX), (OBJECTS, SUFFIX)):
        for n in listed[d]:
            if n.endswith(suffix) and not n.startswith(".") and n[:-len(suffix)] not in referenced[d]:
                (ckpt_dir / d / n).unlink(missing_ok=True)
                removed.append(n[:-len(suffix)])
    return removed


def _punch(path: Path, ranges: list[tuple[int, int]]) -> None:
    """Free the whole blocks of `path` within the (offset, length) `ranges`, the file's size and
    every other byte unchanged (fallocate's PUNCH_HOLE; nothing where the system lacks it)."""
    merged: list[list[int]] = []
    for offset, length in sorted(ranges):
        if merged and offset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset + length)
        else:
            merged.append([offset, offset + length])
    fallocate = _fallocate()
    if fallocate is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return
    try:
        for start, end in merged:
            start, end = -(-start // BLOCK) * BLOCK, end // BLOCK * BLOCK
            if end > start and fallocate(fd, 0x02 | 0x01, start, end - start) != 0:  # PUNCH_HOLE | KEEP_SIZE
                return  # not supported by this file system: the bytes stay until the pack goes
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _fallocate():
    """libc's fallocate(2), with 64-bit offsets, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        f = ctypes.CDLL(None, use_errno=True).fallocate
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return f
    except (OSError, AttributeError):
        return None


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
