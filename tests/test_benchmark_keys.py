"""The claims benchmark never reuses a stale stored run: its key holds every resolved config
value (a default changed in the code counts), the versions and the hash of the code that
trains; a stale run is re-keyed only when it provably reproduces. Stale runs are reported,
never enforced: these tests check the keying on small runs made here, not the stored ones."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cache_key  # noqa: E402
import paper_claims  # noqa: E402
from conftest import TINY  # noqa: E402

from neuroevo_sparse import config  # noqa: E402
from neuroevo_sparse.config import StructureConfig  # noqa: E402

DST_TOML = TINY.replace("[training]", "[structure]\nmethod = \"threshold\"\n\n[training]\nepochs = 2") \
    .replace("steps = 20\n", "")


def job(tmp_path: Path, seed: int = 0, toml: str = DST_TOML) -> paper_claims.Job:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "t.toml"
    path.write_text(toml)
    return paper_claims.Job(config.load(path), seed, tmp_path / "suite" / f"threshold-f1-s{seed}.json",
                            "threshold", paper_claims.DST)


def with_default(monkeypatch, cls, name: str, value) -> None:
    """What editing `name: ... = value` in config.py does to configs loaded afterwards."""
    names = [f.name for f in dataclasses.fields(cls)]
    defaults = list(cls.__init__.__defaults__)
    defaults[names.index(name)] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def test_a_changed_default_invalidates_the_runs_that_left_it_alone(tmp_path, monkeypatch):
    j = job(tmp_path)
    first = paper_claims.run_job(j)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN-safe)
    assert same(paper_claims.run_job(job(tmp_path)), first)  # same key: reused (its wall_s too), not trained again
    explicit = job(tmp_path / "explicit", toml=DST_TOML.replace('method = "threshold"',
                                                                'method = "threshold"\nthreshold_decay = 0.5'))
    explicit_key = explicit.key
    assert job(tmp_path).exp.structure.threshold_decay == 0.5 and explicit.exp == j.exp

    with_default(monkeypatch, StructureConfig, "threshold_decay", 0.9)
    changed = job(tmp_path)
    assert changed.exp.structure.threshold_decay == 0.9
    assert changed.key["config"] != first["key"]["config"]
    assert paper_claims.stored_run(changed) is None
    again = paper_claims.run_job(changed)  # trained again, with the new default, and stored
    assert again["key"] == changed.key and not same(again["records"], first["records"])
    assert json.loads(changed.path.read_text())["key"] == changed.key
    # A run that set the key itself is not affected by the default.
    assert job(tmp_path / "explicit", toml=DST_TOML.replace(
        'method = "threshold"', 'method = "threshold"\nthreshold_decay = 0.5')).key == explicit_key


def test_the_code_hash_follows_what_the_entry_point_imports(tmp_path, monkeypatch):
    dst_modules = cache_key.modules_of("neuroevo_sparse.train.single")
    assert {"neuroevo_sparse.topology.structure", "neuroevo_sparse.train.core", "neuroevo_sparse.train.sparse",
            "neuroevo_sparse.problem.models", "neuroevo_sparse.config", "neuroevo_sparse",
            "neuroevo_sparse.train._kernels"} <= set(dst_modules)  # the C kernels' source counts too
    assert not {"neuroevo_sparse.cli", "neuroevo_sparse.report.plots", "neuroevo_sparse.evolution.operators",
                "neuroevo_sparse.evolution.loop"} & set(dst_modules)
    assert {"neuroevo_sparse.evolution.operators", "neuroevo_sparse.evolution.loop", "neuroevo_sparse.evaluators.ray",
            "neuroevo_sparse.store.history", "neuroevo_sparse.train.calibration"
            } <= set(cache_key.modules_of("neuroevo_sparse.launch"))
    # The job types carry a path's decision but import nothing that makes it.
    assert not {"neuroevo_sparse.train.paths", "neuroevo_sparse.train.calibration"} & set(
        cache_key.modules_of("neuroevo_sparse.train.jobs"))
    assert "neuroevo_sparse.train.calibration" not in dst_modules

    copy = tmp_path / "neuroevo_sparse"
    shutil.copytree(cache_key.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_key, "PACKAGE", copy)
    before = {e: cache_key.code_hash(e) for e in ("neuroevo_sparse.train.single", "neuroevo_sparse.launch")}
    (copy / "cli.py").write_text((copy / "cli.py").read_text() + "\n# an edit outside training\n")
    assert {e: cache_key.code_hash(e) for e in before} == before
    (copy / "evolution" / "operators.py").write_text((copy / "evolution" / "operators.py").read_text() + "\n# a GA edit\n")
    assert cache_key.code_hash("neuroevo_sparse.train.single") == before["neuroevo_sparse.train.single"]
    assert cache_key.code_hash("neuroevo_sparse.launch") != before["neuroevo_sparse.launch"]
    (copy / "train" / "calibration.py").write_text((copy / "train" / "calibration.py").read_text() + "\n# a run's edit\n")
    assert cache_key.code_hash("neuroevo_sparse.train.single") == before["neuroevo_sparse.train.single"]
    (copy / "topology" / "structure.py").write_text((copy / "topology" / "structure.py").read_text() + "\n# a training edit\n")
    assert cache_key.code_hash("neuroevo_sparse.train.single") != before["neuroevo_sparse.train.single"]


def test_stale_runs_are_rekeyed_only_when_they_reproduce(tmp_path, capsys):
    jobs = [job(tmp_path, seed) for seed in (0, 1)]
    for j in jobs:
        paper_claims.run_job(j)
    for j in jobs:  # as if written by other code: a stale key
        r = json.loads(j.path.read_text())
        r["key"] = {**r["key"], "code": "0" * 16}
        j.path.write_text(json.dumps(r))
    assert all(paper_claims.stored_run(j) is None for j in jobs)
    paper_claims.rekey(jobs)
    assert all(paper_claims.stored_run(j) is not None for j in jobs)
    assert "reproduced exactly" in capsys.readouterr().out

    for j in jobs:  # stale, and the stored numbers are not what the code computes
        r = json.loads(j.path.read_text())
        r["key"] = {**r["key"], "code": "0" * 16}
        r["records"][-1]["test_accuracy"] += 0.01
        j.path.write_text(json.dumps(r))
    paper_claims.rekey(jobs)
    assert all(paper_claims.stored_run(j) is None for j in jobs)
    assert "does NOT reproduce" in capsys.readouterr().out


class _Then:
    """Stands in for paper_claims.Baseline (another commit's code in a worktree): here that code
    is the present one, and `numbers` changes what it computes."""

    rev = "then"

    def __init__(self, key_of=lambda job: job.key, numbers=lambda r: r):
        self.key_of, self.numbers = key_of, numbers

    def execute(self, suite, job):
        return self.numbers({**paper_claims.execute(job), "key": self.key_of(job)})


def _stale(jobs, *, shift=0.0):
    """Gives stored runs another commit's key (and with `shift`, other numbers than they had)."""
    for j in jobs:
        r = json.loads(j.path.read_text())
        r["key"] = {**r["key"], "code": "0" * 16}
        r["records"][-1]["test_accuracy"] += shift
        j.path.write_text(json.dumps(r))


def test_rekey_against_a_commit_proves_on_this_cpu_and_not_against_the_stored_numbers(tmp_path, capsys):
    jobs = [job(tmp_path, seed) for seed in (0, 1)]
    for j in jobs:
        paper_claims.run_job(j)
    stale_key = lambda j: {**j.key, "code": "0" * 16}  # the commit that keyed them

    # Another CPU's bits: the stored numbers differ from what either commit computes here,
    # and the two commits agree, so the runs are re-keyed.
    _stale(jobs, shift=0.01)
    paper_claims.rekey(jobs, _Then(key_of=stale_key), "suite")
    assert all(paper_claims.stored_run(j) is not None for j in jobs)
    assert "reproduced exactly" in capsys.readouterr().out

    # The commit computes otherwise than the present code: not re-keyed.
    _stale(jobs)
    shifted = lambda r: {**r, "records": [*r["records"][:-1], {**r["records"][-1], "test_accuracy": 0.5}]}
    paper_claims.rekey(jobs, _Then(key_of=stale_key, numbers=shifted), "suite")
    assert all(paper_claims.stored_run(j) is None for j in jobs)
    assert "does NOT reproduce then's result on this CPU" in capsys.readouterr().out

    # The stored runs are not that commit's (another key): nothing is trained or re-keyed.
    paper_claims.rekey(jobs, _Then(key_of=lambda j: {**j.key, "code": "1" * 16}), "suite")
    assert all(paper_claims.stored_run(j) is None for j in jobs)
    assert "were not keyed by then's code" in capsys.readouterr().out


def test_stale_stored_runs_are_named_by_the_report_and_block_nothing(tmp_path, monkeypatch):
    """A stored result made by other code is reported as stale, with the command that
    refreshes it; it fails no test and is still shown (a kernel edit changes every key)."""
    jobs = [job(tmp_path, seed) for seed in (0, 1)]
    for j in jobs:
        paper_claims.run_job(j)
    assert paper_claims.stale_groups(jobs) == {}
    _stale(jobs[1:])
    assert paper_claims.stale_groups(jobs) == {"suite/threshold-f1": [1]}
    monkeypatch.setattr(paper_claims, "jobs_of", lambda name, seeds: jobs if name == "small" else [])
    lines = "\n".join(paper_claims.staleness_lines([0, 1]))
    assert "`suite/threshold-f1` (seeds 1)" in lines  # part of a suite: named run by run
    assert "python benchmarks/paper_claims.py --suites small" in lines
    _stale(jobs[:1])
    assert paper_claims.stale_groups(jobs) == {"suite/threshold-f1": [0, 1]}
    assert "- small: every stored run (2 runs)" in "\n".join(paper_claims.staleness_lines([0, 1]))
    paper_claims.rekey(jobs)  # re-keyed by proof: nothing stale any more
    assert "Every stored run carries the key" in "\n".join(paper_claims.staleness_lines([0, 1]))


def test_the_machine_line_names_the_cpu_where_recorded_and_reads_older_records(tmp_path, monkeypatch):
    record = {"cpus": 2, "machine": "x86_64", "gpu": False, "python": "3.11.7", "torch": "2.13.0+cpu",
              "date": "2026-12-01"}
    monkeypatch.setattr(paper_claims, "MACHINE", tmp_path / "machine.json")
    paper_claims.MACHINE.write_text(json.dumps(record))
    assert paper_claims.machine_line() == ("Machine: 2 CPU cores (x86_64), no GPU, Python 3.11.7, torch "
                                           "2.13.0+cpu; runs last made 2026-12-01.")
    record["cpu"] = {"model": "AMD EPYC 7B13", "vectors": "avx2", "cores": 2}
    paper_claims.MACHINE.write_text(json.dumps(record))
    assert paper_claims.machine_line().startswith("Machine: 2 CPU cores (x86_64, AMD EPYC 7B13, AVX2), no GPU")
    paper_claims.record_machine()
    assert paper_claims.machine_line().startswith(f"Machine: 2 CPU cores (x86_64, {paper_claims.harness.cpu()['model']}")


def test_a_stored_result_names_its_code_and_an_edit_makes_it_stale_not_failing(tmp_path, monkeypatch):
    """harness.stamp records what made a result; after an edit to the C kernels or to the
    structure rules the result is reported stale, with its refresh command, and still reads."""
    import harness
    monkeypatch.setattr(sys, "argv", ["benchmarks/kernels.py", "--repeats", "1"])
    result = {"rows": [1, 2], **harness.stamp("neuroevo_sparse.train.single")}
    harness.write(tmp_path / "r.json", result)
    stored = harness.read(tmp_path / "r.json")
    assert stored["rows"] == [1, 2] and harness.staleness(stored) is None
    assert stored["made_with"]["machine"]["cpu"]["cores"] >= 1

    copy = tmp_path / "neuroevo_sparse"
    shutil.copytree(cache_key.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    monkeypatch.setattr(cache_key, "PACKAGE", copy)
    for edited in (copy / "train" / "_kernels.c", copy / "topology" / "structure.py"):
        edited.write_text(edited.read_text() + "\n/* an edit */\n" if edited.suffix == ".c" else
                          edited.read_text() + "\n# an edit\n")
        line = harness.staleness(stored)
        assert line is not None and line.startswith("stale: made") and \
            "refresh with `python benchmarks/kernels.py --repeats 1`" in line
    assert "before results were stamped" in harness.staleness({"rows": []})


def test_keys_do_not_depend_on_settings_that_cannot_change_results(tmp_path):
    base = job(tmp_path).exp
    key = lambda exp: cache_key.run_key(exp, 0, paper_claims.DST)["config"]  # noqa: E731
    same = [dataclasses.replace(base, resources=dataclasses.replace(base.resources, backend=b, num_cpus=n))
            for b, n in (("local", 1), ("ray", 2), ("auto", None))]
    assert {key(e) for e in same} == {key(base)}
    assert key(dataclasses.replace(base, output=dataclasses.replace(base.output, keep_checkpoints=9))) == key(base)
    assert key(dataclasses.replace(base, training=dataclasses.replace(base.training, lr=0.5))) != key(base)
    assert key(dataclasses.replace(base, evolution=dataclasses.replace(base.evolution, generations=9))) != key(base)
