"""The run directory's checkpoints: each individual stored once, sparse, by content hash."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from neuroevo_sparse.store import checkpoint


def individual(rng: np.random.Generator, density: float = 0.2, extra: bool = False) -> dict[str, np.ndarray]:
    mask = rng.random((30, 20)) < density
    arrays = {"mask/fc.weight": mask, "weight/fc.weight": np.where(mask, rng.standard_normal(mask.shape), 0)
              .astype(np.float32), "weight/fc.bias": rng.standard_normal(30).astype(np.float32)}
    if extra:  # what a genome may add per individual: carried without a change in the store
        arrays["momentum/fc.weight"] = np.where(mask, 1.5, 0).astype(np.float32)
        arrays["lineage/steps"] = np.array(1234, dtype=np.int64)
    return arrays


def individual_of(rng: np.random.Generator, shape: tuple[int, int], density: float = 0.5) -> dict[str, np.ndarray]:
    mask = rng.random(shape) < density
    return {"mask/fc.weight": mask, "weight/fc.weight": np.where(mask, rng.standard_normal(shape), 0).astype(np.float32)}


def state(ids: list[int], generation: int = 0) -> dict:
    return {"generation": generation, "next_id": max(ids) + 1, "population": ids, "archive": [], "config_hash": "x",
            "genomes": [{"id": i, "parents": [], "born": 0, "operator": "init", "metrics": {}, "fitness": None}
                        for i in ids]}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


def test_an_individual_comes_back_bit_for_bit_and_small(tmp_path):
    rng = np.random.default_rng(0)
    arrays = individual(rng, extra=True)
    odd = arrays["weight/fc.weight"].copy()
    odd[~arrays["mask/fc.weight"]] = -0.0  # zero, but not the bits of 0.0: kept dense, exact
    for a in (arrays, {**arrays, "weight/fc.weight": odd}, {**arrays, "trained/fc.weight": arrays["weight/fc.weight"]}):
        stored = checkpoint.encode(a)
        assert same(checkpoint.decode(stored), a)
    blob = checkpoint.encode(arrays)
    size = int.from_bytes(blob[len(checkpoint.MAGIC):len(checkpoint.MAGIC) + 8], "little")
    header = json.loads(blob[len(checkpoint.MAGIC) + 8:len(checkpoint.MAGIC) + 8 + size])
    assert {k: v["enc"] for k, v in header.items()} == {
        "mask/fc.weight": "bits", "weight/fc.weight": "active", "momentum/fc.weight": "active",
        "weight/fc.bias": "dense", "lineage/steps": "dense"}
    dense = sum(v.nbytes for v in arrays.values())
    assert len(blob) < 0.4 * dense
    with pytest.raises(ValueError, match="numbers and booleans only"):
        checkpoint.encode({"mask/x": np.ones(3, bool), "odd/x": np.array([object()])})


def test_an_individuals_header_is_the_json_of_its_entries():
    """The header comes from a template per layout, its sizes put in: the same bytes as
    json.dumps of the entries, whatever the names hold."""
    rng = np.random.default_rng(6)
    odd = {'mask/a"nbytes":0': np.array([True, False]), 'weight/a"nbytes":0': np.array([1.5, 0.0]),
           "weight/\u00e9\\": np.arange(3), "mask/b": rng.random((4, 5)) < 0.5}
    for arrays in (individual(rng, extra=True), odd, {}):
        blob = checkpoint.encode(arrays)
        size = int.from_bytes(blob[len(checkpoint.MAGIC):len(checkpoint.MAGIC) + 8], "little")
        head = blob[len(checkpoint.MAGIC) + 8:len(checkpoint.MAGIC) + 8 + size]
        assert head == json.dumps(json.loads(head), sort_keys=True, separators=(",", ":")).encode()
        assert same(checkpoint.decode(blob), arrays)


def test_an_individual_comes_back_in_its_networks_order():
    """The operators draw per tensor in the genome's order (the network's): tensors that came
    back sorted by name made a resumed run of a network whose names do not sort in that order
    (a residual CNN's stem, blocks, fc; an MLP's weight before its bias) draw differently."""
    arrays = {"mask/stem.weight": np.array([True, False]), "mask/fc.weight": np.array([True]),
              "mask/blocks.0.bias": np.array([False, True]), "weight/stem.weight": np.array([1.0, 0.0]),
              "weight/fc.weight": np.array([2.0]), "weight/blocks.0.bias": np.array([0.0, 3.0]),
              "weight/bn.num_batches_tracked": np.array(7)}
    back = checkpoint.decode(checkpoint.encode(arrays))
    assert list(back) == list(arrays)
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())


def packs(root) -> dict[str, int]:
    """pack name -> mtime of each pack in a checkpoint directory."""
    return {p.name: p.stat().st_mtime_ns for p in (root / checkpoint.PACKS).glob(f"*{checkpoint.PACK_SUFFIX}")}


def pack_of(root, generation: int, entry: str) -> str:
    """The pack file in which checkpoint `generation` holds `entry`."""
    st = json.loads((root / checkpoint.name(generation) / "state.json").read_text())
    return st["packs"][st["individuals"][entry][1]] + checkpoint.PACK_SUFFIX


def test_a_survivor_is_written_once_and_removed_when_no_checkpoint_needs_it(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c, d = (individual(rng) for _ in range(4))
    writer = checkpoint.Writer(tmp_path)
    writer.save(0, state([0, 1]), {"g0": a, "g1": b}, keep=2)
    first = packs(tmp_path)
    assert len(first) == 1 and pack_of(tmp_path, 0, "g0") == pack_of(tmp_path, 0, "g1")
    writer.save(1, state([0, 2]), {"g0": a, "g2": c}, keep=2)  # 0 survives, 1 is gone, 2 is born
    after = packs(tmp_path)
    assert len(after) == 2 and all(after[n] == t for n, t in first.items())  # a is not written again
    assert pack_of(tmp_path, 1, "g0") in first and pack_of(tmp_path, 1, "g2") not in first
    writer.save(2, state([2, 3]), {"g2": c, "g3": d}, keep=2)  # gen-000000 goes; gen-000001 keeps a's pack
    assert set(packs(tmp_path)) == {pack_of(tmp_path, 1, "g0"), pack_of(tmp_path, 2, "g2"), pack_of(tmp_path, 2, "g3")}
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded.path.name == "gen-000002" and same(loaded.arrays_of("g3"), d) and same(loaded.arrays_of("g2"), c)
    # A new writer (a resumed run) finds the same individuals where the newest checkpoint has them,
    # writes none again; gen-000001 goes, and with it the pack only it needed (a's).
    again, a_pack = packs(tmp_path), pack_of(tmp_path, 1, "g0")
    checkpoint.Writer(tmp_path).save(3, state([2, 3]), {"g2": c, "g3": d}, keep=2)
    assert packs(tmp_path) == {n: t for n, t in again.items() if n != a_pack}
    assert same(checkpoint.load_latest(tmp_path).arrays_of("g2"), c)


def test_the_bytes_of_individuals_no_checkpoint_needs_are_freed_and_never_referred_to_again(tmp_path):
    """A pack stays while a kept checkpoint refers to one of its individuals; the others' bytes
    are freed in place (a hole punched), and one that comes back is written anew."""
    from neuroevo_sparse.store.checkpoint import _punch

    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 3 * checkpoint.BLOCK)
    os.fsync(os.open(probe, os.O_RDONLY))
    _punch(probe, [(0, 3 * checkpoint.BLOCK)])
    if probe.stat().st_blocks * 512 >= 3 * checkpoint.BLOCK:
        pytest.skip("this file system does not punch holes")
    rng = np.random.default_rng(7)
    big = [individual_of(rng, (200, 100)) for _ in range(6)]
    root = tmp_path / "ckpt"
    writer = checkpoint.Writer(root)
    writer.save(0, state(list(range(5))), {f"g{i}": big[i] for i in range(5)}, keep=1)
    pack = root / checkpoint.PACKS / pack_of(root, 0, "g0")
    size, used = pack.stat().st_size, pack.stat().st_blocks * 512
    writer.save(1, state([0, 5]), {"g0": big[0], "g5": big[5]}, keep=1)  # 1-4 gone: their bytes freed
    assert pack_of(root, 1, "g0") == pack.name and pack.stat().st_size == size
    assert pack.stat().st_blocks * 512 < 0.4 * used
    assert same(checkpoint.load_latest(root).arrays_of("g0"), big[0])
    writer.save(2, state([0, 1]), {"g0": big[0], "g1": big[1]}, keep=1)  # 1 is back: written anew
    assert pack_of(root, 2, "g1") != pack.name
    loaded = checkpoint.load_latest(root)
    assert same(loaded.arrays_of("g1"), big[1]) and same(loaded.arrays_of("g0"), big[0])


def test_a_damaged_individual_falls_back_to_an_older_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    a, b = individual(rng), individual(rng)
    writer = checkpoint.Writer(tmp_path)
    writer.save(0, state([0]), {"g0": a}, keep=3)
    writer.save(1, state([1]), {"g1": b}, keep=3)
    path = tmp_path / checkpoint.PACKS / pack_of(tmp_path, 1, "g1")
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 1
    path.write_bytes(bytes(blob))
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded.path.name == "gen-000000"
    assert f"packs/{path.name}: individual {checkpoint.digest(checkpoint.encode(b))[:12]} cannot be used" \
        in loaded.skipped[0] and "does not match its hash" in loaded.skipped[0]
    path.write_bytes(bytes(blob[:-100]))
    assert "bytes short (truncated)" in checkpoint.load_latest(tmp_path).skipped[0]


def test_format_1_checkpoints_still_load(tmp_path):
    from neuroevo_sparse.store.checkpoint import _sha256

    rng = np.random.default_rng(3)
    a = individual(rng)
    ckpt = tmp_path / "gen-000004"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"format": 1, **state([0])}))
    np.savez(ckpt / "arrays.npz", **{f"g0/{k}": v for k, v in a.items()})
    (ckpt / "MANIFEST.json").write_text(json.dumps({"format": 1, "files": {
        f: _sha256(ckpt / f) for f in ("state.json", "arrays.npz")}}))
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded.path == ckpt and same(loaded.arrays_of("g0"), a)


def test_format_2_checkpoints_load_and_go_once_no_checkpoint_needs_them(tmp_path):
    """One file per individual (format 2): read as before; a run that goes on writes packs, and
    the old files go with the last checkpoint that refers to them."""
    from neuroevo_sparse.store.checkpoint import _sha256

    rng = np.random.default_rng(8)
    a, b = individual(rng), individual(rng)
    blob = checkpoint.encode(a)
    (tmp_path / checkpoint.OBJECTS).mkdir()
    old = tmp_path / checkpoint.OBJECTS / f"{checkpoint.digest(blob)}{checkpoint.SUFFIX}"
    old.write_bytes(blob)
    ckpt = tmp_path / "gen-000004"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"format": 2, **state([0]), "individuals": {"g0": old.stem}}))
    (ckpt / "MANIFEST.json").write_text(json.dumps({"format": 2, "files": {"state.json": _sha256(ckpt / "state.json")},
                                                    "individuals": [old.stem]}))
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded.path == ckpt and same(loaded.arrays_of("g0"), a)
    writer = checkpoint.Writer(tmp_path)
    writer.save(5, state([0, 1]), {"g0": a, "g1": b}, keep=2)
    assert old.exists() and same(checkpoint.load_latest(tmp_path).arrays_of("g0"), a)
    writer.save(6, state([0, 1]), {"g0": a, "g1": b}, keep=2)
    assert not old.exists() and same(checkpoint.load_latest(tmp_path).arrays_of("g1"), b)


def test_a_reader_racing_the_writer_reads_a_whole_checkpoint(tmp_path):
    """keep = 1: every save removes the checkpoint a reader may be reading, and its individuals."""
    rng = np.random.default_rng(4)
    pool = [individual(rng) for _ in range(6)]
    writer = checkpoint.Writer(tmp_path)
    writer.save(0, state([0]), {"g0": pool[0]}, keep=1)
    done, errors = threading.Event(), []

    def write() -> None:
        for g in range(1, 60):
            writer.save(g, state([g], g), {f"g{g}": pool[g % 6]}, keep=1)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    reads = 0
    while not done.is_set():
        try:
            loaded = checkpoint.load_latest(tmp_path, attempts=50)
            g = loaded.state["generation"]
            assert same(loaded.arrays_of(f"g{g}"), pool[g % 6]) and not loaded.skipped
            reads += 1
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)
    thread.join()
    assert not errors and reads


def test_a_checkpoint_written_in_steps_is_the_one_written_at_once(tmp_path):
    rng = np.random.default_rng(5)
    pool = {f"g{i}": individual(rng) for i in range(3)}
    checkpoint.Writer(tmp_path / "once").save(0, state([0, 1, 2]), pool, keep=2)
    steps = checkpoint.Writer(tmp_path / "steps").saving(0, state([0, 1, 2]), pool, keep=2)
    assert sum(1 for _ in steps) == len(pool)  # one step per individual; the last one finishes
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(tmp_path / "once") == files(tmp_path / "steps")


def test_the_checkpoint_writer_hands_its_steps_to_whoever_joins():
    """The writer thread runs at idle priority; whoever joins finishes the steps left in a thread of
    its own priority. Every step runs once and in order, whichever thread takes it; the error of a
    step comes back from join."""
    from neuroevo_sparse.evolution.loop import _Background

    started, release, done = threading.Event(), threading.Event(), []

    def steps(fail: bool = False):
        for i in range(50):
            if i == 1:
                started.set()
                release.wait(10)  # the idle thread is held here: the rest is left to the joiner
            done.append((i, threading.current_thread().name))
            yield
        if fail:
            raise OSError("disk full")

    writer = _Background(steps())
    started.wait(10)
    threading.Timer(0.2, release.set).start()  # once join has taken over
    writer.join()
    assert [i for i, _ in done] == list(range(50))
    assert {name for _, name in done} == {"neuroevo-checkpoint", "neuroevo-checkpoint-finish"}
    release.clear(), started.clear(), done.clear()
    writer = _Background(steps(fail=True))
    started.wait(10)
    threading.Timer(0.2, release.set).start()
    with pytest.raises(OSError, match="disk full"):
        writer.join()
    assert [i for i, _ in done] == list(range(50))


def test_checkpoint_bytes_scale_with_what_changed(tiny, tmp_path):
    """A run's checkpoints after the first write the individuals that are new, sparse, in one
    file each."""
    from dataclasses import replace

    from neuroevo_sparse import launch

    exp = replace(tiny, evolution=replace(tiny.evolution, generations=3),
                  output=replace(tiny.output, keep_checkpoints=10))
    run, _ = launch.start(exp, tmp_path / "run")
    ckpts = run.checkpoints
    states = [json.loads((p / "state.json").read_text()) for p in sorted(ckpts.glob("gen-*"))]
    stored = {p.stem: p.stat().st_size for p in (ckpts / checkpoint.PACKS).glob(f"*{checkpoint.PACK_SUFFIX}")}
    assert set(stored) == set().union(*(s["packs"] for s in states)) and len(stored) <= len(states)
    # The population of 4 survives in part from one generation to the next: fewer bytes than references.
    held = [sum({key: length for key, _, _, length in s["individuals"].values()}.values()) for s in states]
    assert sum(stored.values()) < sum(held)
    # every stored individual is far smaller than its dense arrays (masks 1 byte, weights 4)
    loaded = run.load_checkpoint()
    dense = sum(v.nbytes for v in loaded.arrays_of(f"g{loaded.state['population'][0]}").values())
    assert max(length for s in states for _, _, _, length in s["individuals"].values()) < 0.6 * dense
