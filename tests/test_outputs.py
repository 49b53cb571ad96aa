"""`inspect`, `plot` and `export` on a real finished run."""

import json
import subprocess
from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import neuroevo_cmd
from neuroevo_sparse.problem import data
from neuroevo_sparse import launch
from neuroevo_sparse.train.core import DeviceData, evaluate


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from neuroevo_sparse import config
    from conftest import TINY
    root = tmp_path_factory.mktemp("out")
    (root / "t.toml").write_text(TINY)
    exp = config.load(root / "t.toml", ["evolution.generations=3"])
    run, _ = launch.start(exp, root / "run")
    return exp, run.path


def cli(*args):
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True, timeout=120)


def test_inspect_tables_and_json(finished):
    exp, run = finished
    p = cli("inspect", str(run), "--top", "3")
    assert p.returncode == 0, p.stderr
    for title in ("== Generations", "== Top 3 individuals", "== Pareto front"):
        assert title in p.stdout
    j = json.loads(cli("inspect", str(run), "--json").stdout)
    assert [r["generation"] for r in j["generations"]] == [0, 1, 2, 3]
    assert all(r["best_fitness"] >= r["mean_fitness"] >= r["worst_fitness"] for r in j["generations"])
    assert len(j["top"]) == 10 and j["top"][0]["fitness"][0] >= j["top"][-1]["fitness"][0]
    front = j["pareto_front"]
    assert all(a["active_params"] < b["active_params"] and a["val_accuracy"] < b["val_accuracy"]
               for a, b in zip(front, front[1:]))


def test_what_inspect_offers_can_be_exported(finished, tmp_path):
    """Every point of the front, and every top individual marked exportable, exports; a top
    individual that died out is marked so, and export says it is not kept."""
    _, run = finished
    j = json.loads(cli("inspect", str(run), "--json", "--top", "40").stdout)
    offered = {r["individual_id"] for r in j["pareto_front"]} | {r["individual_id"] for r in j["top"]
                                                               if r["exportable"]}
    assert offered and not any(r["exportable"] is None for r in j["top"])
    for i in sorted(offered):
        p = cli("export", str(run), "--id", str(i), "--out", str(tmp_path / f"{i}.pt"))
        assert p.returncode == 0, (i, p.stderr)
    gone = [r["individual_id"] for r in j["top"] if not r["exportable"]]
    assert gone  # --top 40 lists every evaluated individual: some have died out
    p = cli("export", str(run), "--id", str(gone[0]))
    assert p.returncode != 0 and "not in the newest checkpoint" in p.stderr


def test_plot_writes_readable_pngs(finished):
    _, run = finished
    p = cli("plot", str(run), "--out", str(run / "figs"))
    assert p.returncode == 0, p.stderr
    names = sorted(x.name for x in (run / "figs").iterdir())
    assert names == ["accuracy_vs_params.png", "fitness.png", "front.png", "layer_density.png", "lineage.png"]
    for name in names:
        head = (run / "figs" / name).read_bytes()
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 10_000


def test_export_round_trips_with_plain_torch(finished, tmp_path):
    exp, run = finished
    out = tmp_path / "best.pt"
    p = cli("export", str(run), "--out", str(out))
    assert p.returncode == 0, p.stderr
    saved = torch.load(out, weights_only=True)  # no code from the file runs
    # Rebuild the architecture with plain torch, as the README shows.
    m = saved["model"]
    layers, width = OrderedDict(flatten=nn.Flatten()), 1
    for d in m["input_shape"]:
        width *= d
    for i, h in enumerate(m["hidden"], start=1):
        layers[f"fc{i}"], layers[f"act{i}"], width = nn.Linear(width, h), nn.ReLU(), h
    layers["out"] = nn.Linear(width, m["num_classes"])
    model = nn.Sequential(layers)
    model.load_state_dict(saved["state_dict"])
    for name, mask in saved["masks"].items():
        assert torch.all(saved["state_dict"][name][~mask] == 0)
    splits = data.load(exp.data, exp.experiment.seed)
    _, acc = evaluate(model, *DeviceData(splits).test)
    assert acc == saved["metrics"]["test_accuracy"]
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert saved["individual_id"] == best["id"]


def test_export_unknown_id_lists_available(finished):
    _, run = finished
    p = cli("export", str(run), "--id", "99999")
    assert p.returncode == 2 and "available:" in p.stderr
