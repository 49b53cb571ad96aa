"""Kill a run anywhere, resume it, and get the run that never stopped."""

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import neuroevo_cmd
from neuroevo_sparse.store import checkpoint
from neuroevo_sparse.store.history import NONDETERMINISTIC

ARGS = ["--set", "evolution.generations=4", "--set", "training.steps=60"]


def cli(*args, env=None, timeout=300):
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def history(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "history").drop(columns=["run_id", *NONDETERMINISTIC])
    return df.sort_values(["generation", "individual_id"]).reset_index(drop=True)


def final_state(run: Path):
    loaded = checkpoint.load_latest(run / "checkpoints")
    state = {k: v for k, v in loaded.state.items() if k not in ("versions",)}
    for g in state["genomes"]:
        g["metrics"] = {k: v for k, v in g["metrics"].items() if k not in NONDETERMINISTIC}
    return loaded.path.name, state, loaded.arrays


def assert_same_run(a: Path, b: Path):
    pd.testing.assert_frame_equal(history(a), history(b), check_exact=True)
    name_a, state_a, arrays_a = final_state(a)
    name_b, state_b, arrays_b = final_state(b)
    assert name_a == name_b
    pop_a = [g for g in state_a["genomes"] if g["id"] in state_a["population"]]
    pop_b = [g for g in state_b["genomes"] if g["id"] in state_b["population"]]
    assert state_a["population"] == state_b["population"] and pop_a == pop_b
    for gid in state_a["population"]:
        keys = [k for k in arrays_a if k.startswith(f"g{gid}/")]
        assert keys and all(arrays_a[k].tobytes() == arrays_b[k].tobytes() for k in keys)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("ref")
    toml = root / "tiny.toml"
    from conftest import TINY
    toml.write_text(TINY)
    run = root / "run"
    p = cli("run", str(toml), "--run-dir", str(run), *ARGS)
    assert p.returncode == 0, p.stderr
    return toml, run


@pytest.mark.parametrize("fault", ["mid-generation@2", "history-written@2", "checkpoint-files@3",
                                   "checkpoint-renamed@1", "mid-generation@0"])
def test_sigkill_and_resume_gives_the_same_run(reference, tmp_path, fault):
    toml, ref = reference
    run = tmp_path / "run"
    p = cli("run", str(toml), "--run-dir", str(run), *ARGS, env={"NEUROEVO_FAULT": fault})
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = cli("resume", str(run))  # before the first checkpoint (@0), resuming starts it in place
    assert r.returncode == 0, r.stderr
    assert_same_run(ref, run)


def test_kill_at_a_random_moment_then_resume_twice(reference, tmp_path):
    toml, ref = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(neuroevo_cmd() + ["run", str(toml), "--run-dir", str(run), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run / "checkpoints" / "gen-000001").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    p = cli("resume", str(run), env={"NEUROEVO_FAULT": "mid-generation@3"})
    assert p.returncode == -signal.SIGKILL
    assert cli("resume", str(run)).returncode == 0
    assert_same_run(ref, run)


def test_truncated_newest_checkpoint_falls_back(reference, tmp_path):
    """(A damaged individual's file: test_run_dir.py.)"""
    toml, ref = reference
    run = tmp_path / "run"
    assert cli("run", str(toml), "--run-dir", str(run), *ARGS[:2], "--set", "evolution.generations=2",
               *ARGS[2:]).returncode == 0
    newest = run / "checkpoints" / "gen-000002" / "state.json"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    r = cli("resume", str(run), "--generations", "4")
    assert r.returncode == 0, r.stderr
    assert "gen-000002: state.json does not match its checksum" in r.stderr
    assert "resuming" in r.stderr and "from gen-000001" in r.stderr
    assert_same_run(ref, run)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["raw-pickle", "object-array-in-npz"])
def test_malicious_checkpoint_runs_no_code(reference, tmp_path, how):
    toml, _ = reference
    run = tmp_path / "run"
    assert cli("run", str(toml), "--run-dir", str(run), *ARGS[:2], "--set", "evolution.generations=2",
               *ARGS[2:]).returncode == 0
    marker = tmp_path / "PWNED"
    ckpt = run / "checkpoints" / "gen-000002"
    tmp = tmp_path / "evil"
    if how == "raw-pickle":
        tmp.write_bytes(pickle.dumps(Exploit(marker)))
    else:
        with open(tmp, "wb") as f:
            np.savez(f, evil=np.array([Exploit(marker)], dtype=object))
    evil = checkpoint.digest(tmp.read_bytes())  # named by its hash, as the loader checks
    size = tmp.stat().st_size
    tmp.rename(run / "checkpoints" / checkpoint.PACKS / f"{evil}{checkpoint.PACK_SUFFIX}")
    # The attacker also points the checkpoint at it and fixes the checksums, so only the
    # loader's refusal to unpickle stands.
    state = json.loads((ckpt / "state.json").read_text())
    state["individuals"] = {entry: [evil, 0, 0, size] for entry in state["individuals"]}
    state["packs"] = [evil]
    (ckpt / "state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["files"]["state.json"] = checkpoint._sha256(ckpt / "state.json")
    manifest["packs"] = [evil]
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    r = cli("resume", str(run), "--generations", "3")
    assert not marker.exists(), "code from the checkpoint ran"
    assert r.returncode == 0, r.stderr
    assert "gen-000002" in r.stderr and "skipped" in r.stderr


def test_resume_refuses_changed_config_but_allows_safe_keys(reference, tmp_path):
    toml, _ = reference
    run = tmp_path / "run"
    assert cli("run", str(toml), "--run-dir", str(run), *ARGS[:2], "--set", "evolution.generations=1",
               *ARGS[2:]).returncode == 0
    r = cli("resume", str(run), "--set", "training.lr=0.5", "--set", "sparsity.density=0.5")
    assert r.returncode == 2
    assert "training.lr: 0.01 -> 0.5" in r.stderr and "sparsity.density: 0.3 -> 0.5" in r.stderr
    assert "evolution.generations" in r.stderr  # the keys that may change are listed
    r = cli("resume", str(run), "--generations", "2", "--set", 'output.progress="log"')
    assert r.returncode == 0, r.stderr
    assert len(history(run)) == 4 + 2 * 8


def test_sigint_stops_after_the_generation_with_a_checkpoint(reference, tmp_path):
    toml, ref = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(neuroevo_cmd() + ["run", str(toml), "--run-dir", str(run), *ARGS,
                                              "--set", "training.steps=400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "history" / "gen-000000.parquet").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received: stopping after the generation in flight" in err
    assert f"neuroevo resume {run}" in err
    stopped_at = int(checkpoint.load_latest(run / "checkpoints").path.name.split("-")[1])
    assert stopped_at < 4
    assert sorted(int(p.stem.split("-")[1]) for p in (run / "history").glob("*.parquet")) == \
        list(range(stopped_at + 1))


def test_two_writers_at_once_one_runs_the_other_exits_2_naming_the_holder(reference, tmp_path):
    toml, ref = reference
    run = tmp_path / "run"
    assert cli("run", str(toml), "--run-dir", str(run), *ARGS[:2], "--set", "evolution.generations=2",
               *ARGS[2:]).returncode == 0
    release = tmp_path / "go-on"
    first = subprocess.Popen(neuroevo_cmd() + ["resume", str(run), "--generations", "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NEUROEVO_FAULT": "wait:mid-generation@3",
                                  "NEUROEVO_FAULT_RELEASE": str(release)})
    try:
        deadline = time.monotonic() + 120
        waiting = tmp_path / "go-on.waiting"
        while not waiting.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = json.loads((run / "writer.json").read_text())
        files = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}  # noqa: E731
        before = files()  # the first writer waits in generation 3: nothing else changes them
        second = cli("resume", str(run), "--generations", "4")  # while the first holds the run directory
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and "is being written by another process" in line
        assert f"pid {holder['pid']}" in line and holder["host"] in line and holder["since"] in line
        assert len(second.stderr.strip().splitlines()) == 1
        assert files() == before  # the refused writer changed nothing
    finally:
        release.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not (run / "writer.json").exists()  # released
    assert_same_run(ref, run)


def test_a_killed_writers_lock_is_taken_over(reference, tmp_path):
    toml, ref = reference
    run = tmp_path / "run"
    p = cli("run", str(toml), "--run-dir", str(run), *ARGS, env={"NEUROEVO_FAULT": "mid-generation@2"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    dead = json.loads((run / "writer.json").read_text())
    r = cli("resume", str(run))
    assert r.returncode == 0, r.stderr
    assert f"took over the writer lock of {run} from host {dead['host']}, pid {dead['pid']}" in r.stderr
    assert_same_run(ref, run)


def test_a_holder_that_is_ending_is_told_from_a_live_one():
    """A writer waits for a holder that is ending (`neuroevo` killed: its supervised child gets
    SIGKILL from the kernel and frees the lock a moment later) instead of refusing."""
    import socket

    from neuroevo_sparse.store.lock import ending

    host = socket.gethostname()
    live = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ending({"host": host, "pid": zombie.pid})
        assert not ending({"host": host, "pid": live.pid})
        assert not ending({"host": host + "-elsewhere", "pid": zombie.pid})
        assert not ending(None) and not ending({"host": host, "pid": "x"})
    finally:
        live.kill(), zombie.wait(), live.wait()
