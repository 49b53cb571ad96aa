"""The `neuroevo` command as a user runs it: a real subprocess, real files."""

import json
import subprocess

import pandas as pd

from conftest import ROOT, neuroevo_cmd


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_run_creates_run_directory(tiny_toml, tmp_path):
    out = tmp_path / "r"
    p = run_cli("run", str(tiny_toml), "--run-dir", str(out), "--set", "evolution.generations=1")
    assert p.returncode == 0, p.stderr
    assert "done: 1 generation(s)" in p.stderr
    assert len(pd.read_parquet(out / "history")) == 4 + 1 * (4 + 4)
    assert "generations = 1" in (out / "config.toml").read_text()


def test_default_run_dir_under_output_root(tiny_toml, tmp_path):
    p = run_cli("run", str(tiny_toml), "--set", f'output.root="{tmp_path}"', "--set", "evolution.generations=0")
    assert p.returncode == 0, p.stderr
    (run,) = (tmp_path / "tiny").iterdir()
    assert run.name.endswith("-seed7") and (run / "history" / "gen-000000.parquet").is_file()


def test_config_error_exit_code_and_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[evolution]\npopulation = 1\nmutation = ['set']\n")
    p = run_cli("run", str(bad), "--run-dir", str(tmp_path / "never"))
    assert p.returncode == 2
    assert "evolution.population: must be >= 2; got 1" in p.stderr
    assert "evolution.mutation: unknown key (did you mean 'mutations'?)" in p.stderr
    assert not (tmp_path / "never").exists()  # nothing starts before the file is valid


def test_the_supervising_parent_imports_nothing_heavy():
    # Every `neuroevo run` is two processes; the parent only parses and waits, so whatever it
    # imports is start-up time of every run (numpy and the config were 0.3 s of it).
    code = ("import sys; from neuroevo_sparse import cli; cli._parser().parse_args(['run', 'x.toml']); "
            "print(sorted(m for m in ('numpy', 'torch', 'pandas', 'neuroevo_sparse.config') if m in sys.modules))")
    p = subprocess.run([*neuroevo_cmd()[:1], "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_missing_dataset_leaves_nothing(tiny_toml, tmp_path):
    p = run_cli("run", str(tiny_toml), "--run-dir", str(tmp_path / "never"),
                "--set", 'data.dataset="mnist"', "--set", f'data.path="{tmp_path}"')
    assert p.returncode == 2 and "looked in" in p.stderr and "did not find" in p.stderr
    assert not (tmp_path / "never").exists()


def test_refuses_existing_run_dir(tiny_toml, tmp_path):
    out = tmp_path / "r"
    assert run_cli("run", str(tiny_toml), "--run-dir", str(out), "--set", "evolution.generations=0").returncode == 0
    before = sorted(p.name for p in (out / "history").iterdir())
    p = run_cli("run", str(tiny_toml), "--run-dir", str(out))
    assert p.returncode == 2 and "already holds a run" in p.stderr and "neuroevo resume" in p.stderr
    assert sorted(p.name for p in (out / "history").iterdir()) == before


def test_quickstart_meets_its_targets(tmp_path):
    """The README's main job (local backend here; the Ray backend is tested separately)."""
    out = tmp_path / "quick"
    p = run_cli("run", str(ROOT / "experiments" / "quickstart.toml"), "--run-dir", str(out),
                "--set", 'resources.backend="local"')
    assert p.returncode == 0, p.stderr[-2000:]
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["val_accuracy"] >= 0.90 and best["density"] <= 0.2
    df = pd.read_parquet(out / "history")
    assert len(df) == 8 + 6 * (8 + 8)
