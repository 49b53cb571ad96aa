"""Size is searched (sparsity.fixed = false): grow / prune / move, crossover without repair,
bounds, the initial spread of sizes, the Pareto archive's hypervolume, picking a point of the
front; and fixed size keeps the stored histories in tests/data/fixed_density."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, comparable_history, neuroevo_cmd
from neuroevo_sparse import config, launch
from neuroevo_sparse.problem import models
from neuroevo_sparse.evolution import operators
from neuroevo_sparse.report import tables as report
from neuroevo_sparse.config import ConfigError, ModelConfig, SparsityConfig, StructureConfig
from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
from neuroevo_sparse.evolution.operators import Variation

SHAPE = (1, 8, 8)
DATA = Path(__file__).parent / "data" / "fixed_density"
PARETO = ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]', "fitness.weights=[1.0,-1.0]",
          "sparsity.fixed=false", "sparsity.min_density=0.03", "sparsity.max_density=0.9",
          'evolution.mutations=["grow","prune","move","set"]', "evolution.population=8"]


def model_parts(kind: str):
    cfg = ModelConfig(kind=kind, hidden=[24, 12], channels=[4, 6])
    model = models.build(cfg, SHAPE, 10)
    info = models.layer_info(model, SHAPE)
    names = models.maskable(model, SparsityConfig())
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return info, names, template


def trained(g, rng):
    """Pretend-trained weights: distinct, non-zero, on the mask only."""
    for name, m in g.masks.items():
        g.weights[name] = np.where(m, rng.normal(size=m.shape), 0).astype(np.float32)
    return g


def consistent(g, var: Variation) -> None:
    lo, hi = var.bounds
    total = sum(int(m.sum()) for m in g.masks.values())
    assert g.counts() == {name: int(m.sum()) for name, m in g.masks.items()}  # no count taken before a change
    assert lo <= total <= hi, f"{total} active connections outside [{lo}, {hi}]"
    for name, m in g.masks.items():
        assert m.dtype == bool and m.shape == g.weights[name].shape
        assert 1 <= int(m.sum()) <= m.size, f"{name}: {int(m.sum())} active"
        assert np.all(g.weights[name][~m] == 0), f"{name}: a weight outside the mask"
        assert np.all(np.isfinite(g.weights[name]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**32 - 1),
       lo=st.floats(0.02, 0.3), span=st.floats(1.5, 20.0), rule=st.sampled_from(["random", "strength"]),
       fraction=st.floats(0.01, 0.95), steps=st.integers(5, 25))
def test_variable_size_operators_keep_masks_weights_and_bounds(kind, seed, lo, span, rule, fraction, steps):
    """Any chain of grow / prune / move / crossover keeps weights on their masks, every layer
    connected and every genome within [min_density, max_density]."""
    info, names, template = model_parts(kind)
    hi = min(0.95, lo * span)
    total = sum(info[n].size for n in names)
    var = Variation(info, Init(), "random", (int(np.ceil(lo * total)), int(np.floor(hi * total))), rule)
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(4):
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        pool.append(trained(random_genome(i, template, info, var.fit(target_counts(info, names, d, "erdos_renyi")),
                                          Init(), rng), rng))
    for g in pool:
        consistent(g, var)
    for step in range(steps):
        a, b = (pool[i] for i in rng.choice(len(pool), 2, replace=False))
        op = rng.integers(7)
        if op == 6:
            children = (operators.mut_structure(var, a, 100 + step, step, rng, method="threshold",
                                                params=StructureConfig(regrow_ratio=0.2, threshold=2.0)),)
        elif op < 3:
            children = operators.CROSSOVERS[["neuron", "connection", "layer"][op]](var, a, b, (100 + 2 * step, 101 + 2 * step), 1, rng)
        else:
            mutate = [operators.mut_grow, operators.mut_prune, operators.mut_move][op - 3]
            children = (mutate(var, a, 100 + step, 1, rng, fraction=fraction),)
        for c in children:
            consistent(c, var)
            for name in c.masks:  # parents untouched (operators are pure)
                assert np.all(a.weights[name][~a.masks[name]] == 0)
        pool[rng.integers(len(pool))] = trained(children[0], rng)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_grow_and_prune_change_every_layer_by_the_fraction(kind):
    info, names, template = model_parts(kind)
    total = sum(info[n].size for n in names)
    var = Variation(info, Init(), "random", (1, total))
    rng = np.random.default_rng(3)
    g = trained(random_genome(0, template, info, target_counts(info, names, 0.3, "uniform"), Init(), rng), rng)
    grown = operators.mut_grow(var, g, 1, 1, rng, fraction=0.25)
    pruned = operators.mut_prune(var, g, 2, 1, rng, fraction=0.25)
    for n in names:
        a = g.active(n)
        assert grown.active(n) == min(info[n].size, a + max(1, round(0.25 * a)))
        assert pruned.active(n) == max(1, a - max(1, round(0.25 * a)))
        kept = pruned.masks[n]  # prune removes the smallest |w|: every survivor outweighs every removed one
        removed = g.masks[n] & ~kept
        if removed.any():
            assert np.abs(g.weights[n][kept]).min() >= np.abs(g.weights[n][removed]).max()
        np.testing.assert_array_equal(grown.weights[n][g.masks[n]], g.weights[n][g.masks[n]])  # inherited exactly


def test_move_keeps_the_total_and_shifts_one_layer_to_another():
    info, names, template = model_parts("mlp")
    var = Variation(info, Init(), "random")
    rng = np.random.default_rng(5)
    g = trained(random_genome(0, template, info, target_counts(info, names, 0.2, "uniform"), Init(), rng), rng)
    moved = 0
    for gid in range(1, 40):
        c = operators.mut_move(var, g, gid, 1, rng, fraction=0.1)
        diff = {n: c.active(n) - g.active(n) for n in names}
        assert sum(diff.values()) == 0
        assert sorted(v for v in diff.values() if v) in ([], [-max(diff.values()), max(diff.values())])
        moved += any(diff.values())
    assert moved >= 35


@pytest.mark.parametrize("cx", ["neuron", "connection", "layer"])
def test_fixed_size_crossover_keeps_the_total_after_moves(cx):
    """Parents with the same total but different allocations (after "move") give children of
    exactly that total; parents with the same allocation give children of that allocation."""
    info, names, template = model_parts("mlp")
    var = Variation(info, Init(), "random")
    rng = np.random.default_rng(9)
    counts = target_counts(info, names, 0.2, "erdos_renyi")
    pool = [trained(random_genome(i, template, info, counts, Init(), rng), rng) for i in range(4)]
    total = sum(counts.values())
    for step in range(40):
        a, b = (pool[i] for i in rng.choice(4, 2, replace=False))
        same = all(a.active(n) == b.active(n) for n in names)
        for c in operators.CROSSOVERS[cx](var, a, b, (200 + 2 * step, 201 + 2 * step), 1, rng):
            assert sum(c.active(n) for n in names) == total
            if same:
                assert {n: c.active(n) for n in names} == {n: a.active(n) for n in names}
        pool[rng.integers(4)] = trained(operators.mut_move(var, a, 300 + step, 1, rng, fraction=0.2), rng)


@pytest.mark.parametrize("case", sorted(p.stem for p in DATA.glob("*.parquet")))
def test_fixed_size_runs_give_the_stored_histories(case, tmp_path):
    """tests/data/fixed_density/*.parquet are histories of these configs: pareto_connection as
    written by neuroevo_sparse 0.2.0 (before size search existed), weighted_neuron and
    layer_comma by 0.3.0 (whose GA "set" mutation is structure.update's rule, which gives
    newborn weights in position order); a fixed-size run must still give them exactly."""
    sets = {
        "weighted_neuron": [],
        "pareto_connection": ['fitness.mode="pareto"', 'fitness.objectives=["val_accuracy","active_params"]',
                              "fitness.weights=[1.0,-1.0]", 'evolution.crossover="connection"',
                              'evolution.mutations=["threshold","strength"]', "evolution.generations=3"],
        "layer_comma": ['evolution.crossover="layer"', 'evolution.survival="comma"', "evolution.offspring=6",
                        "evolution.crossover_prob=0.9", "evolution.mutation_prob=0.5"],
    }[case]
    (tmp_path / "t.toml").write_text(TINY)
    run, _ = launch.start(config.load(tmp_path / "t.toml", sets + ['output.test_accuracy="all"']), tmp_path / "run")
    want = pd.read_parquet(DATA / f"{case}.parquet")
    got = comparable_history(run.path)
    assert set(got.columns) - set(want.columns) <= {"hypervolume"}
    pd.testing.assert_frame_equal(got[want.columns], want)


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    (root / "t.toml").write_text(TINY)
    exp = config.load(root / "t.toml", PARETO + ["evolution.generations=5"])
    run, _ = launch.start(exp, root / "run")
    return exp, run.path


def test_pareto_run_spans_sizes_and_its_hypervolume_never_falls(pareto_run):
    exp, run = pareto_run
    h = report.load(run)
    first = h[h.generation == 0]
    assert first.density.min() >= 0.03 - 1e-9 and first.density.max() <= 0.9 + 1e-9
    assert first.density.max() / first.density.min() > 3  # log-uniform over a 30x range
    assert h.density.min() >= 0.03 - 1e-9 and h.density.max() <= 0.9 + 1e-9
    assert h.active_params.nunique() > 10
    hv = h.groupby("generation").hypervolume.agg(["min", "max"])
    assert (hv["min"] == hv["max"]).all()  # one value per generation
    assert 0 < hv["max"].iloc[0] <= 1 and hv["max"].is_monotonic_increasing
    ops = set(h[h.evaluated].operator.str.split("+").explode())
    assert {"mut_grow", "mut_prune", "mut_move"} <= ops


def test_hypervolume_is_moocores_of_the_archive(pareto_run):
    """The last generation's value is the hypervolume of every non-dominated individual ever
    evaluated (accuracy, and active masked weights as a fraction of the dense count),
    recomputed here from the history alone."""
    import moocore

    from neuroevo_sparse.problem import data

    exp, run = pareto_run
    h = report.load(run)
    ev = report.evaluations(h).drop_duplicates("individual_id", keep="last")
    splits = data.load(exp.data, exp.experiment.seed)
    model = models.build(exp.model, splits.input_shape, splits.num_classes)
    maskable = sum(model.state_dict()[n].numel() for n in models.maskable(model, exp.sparsity))
    unmasked = sum(p.numel() for p in model.parameters()) - maskable
    points = np.column_stack([1 - ev.val_accuracy, (ev.active_params - unmasked) / maskable])
    assert h.hypervolume.iloc[-1] == pytest.approx(moocore.hypervolume(points, ref=[1.0, 1.0]), abs=1e-12)


def test_generations_report_the_test_accuracy_of_the_individual_chosen_by_validation(pareto_run):
    _, run = pareto_run
    h = report.load(run)
    table = report.generations(h)
    for g, row in table.iterrows():
        pop = h[(h.generation == g) & h.selected]
        chosen = pop.sort_values(["val_accuracy", "active_params"], ascending=[False, True]).iloc[0]
        assert row.best_val_acc == chosen.val_accuracy and row.its_test_acc == chosen.test_accuracy


def cli(*args):
    return subprocess.run(neuroevo_cmd() + list(args), capture_output=True, text=True, timeout=180)


def test_export_max_params_picks_the_best_small_enough_network(pareto_run, tmp_path):
    _, run = pareto_run
    front = report.pareto_front(report.load(run))
    limit = int(front.active_params.iloc[len(front) // 2])
    out = tmp_path / "small.pt"
    p = cli("export", str(run), "--max-params", str(limit), "--out", str(out))
    assert p.returncode == 0, p.stderr
    payload = torch.load(out, weights_only=True)
    want = front[front.active_params <= limit].sort_values("val_accuracy", ascending=False).iloc[0]
    assert payload["individual_id"] == want.individual_id
    active = sum(int(m.sum()) for m in payload["masks"].values()) + sum(
        v.numel() for k, v in payload["state_dict"].items() if k not in payload["masks"])
    assert active == want.active_params <= limit
    p = cli("export", str(run), "--max-params", "5")
    assert p.returncode == 2 and "no individual has at most 5 active parameters" in p.stderr


def test_inspect_and_plot_show_the_front_and_its_hypervolume(pareto_run, tmp_path):
    _, run = pareto_run
    j = json.loads(cli("inspect", str(run), "--json").stdout)
    assert all(0 < r["hypervolume"] <= 1 for r in j["generations"])
    assert "its_test_acc" in j["generations"][0] and "best_test_acc" not in j["generations"][0]
    curves = tmp_path / "curves.json"
    curves.write_text(json.dumps({"curves": {"static": [{"active_params": 300, "test_accuracy": 0.5,
                                                         "test_accuracy_sd": 0.01},
                                                        {"active_params": 900, "test_accuracy": 0.7,
                                                         "test_accuracy_sd": 0.02}]}}))
    p = cli("plot", str(run), "--out", str(tmp_path / "figs"), "--baselines", str(curves))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "figs" / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text('{"runs": []}')
    p = cli("plot", str(run), "--out", str(tmp_path / "figs2"), "--baselines", str(tmp_path / "bad.json"))
    assert p.returncode == 2 and "not a baselines file" in p.stderr
    (tmp_path / "cut.json").write_text('{"curves": {"static": [')
    p = cli("plot", str(run), "--out", str(tmp_path / "figs3"), "--baselines", str(tmp_path / "cut.json"))
    assert p.returncode == 2 and "cut.json is not a baselines file" in p.stderr and "not JSON" in p.stderr


def test_size_keys_are_checked(tmp_path):
    (tmp_path / "t.toml").write_text(TINY)
    with pytest.raises(ConfigError, match="sparsity.fixed = false"):
        config.load(tmp_path / "t.toml", ['evolution.mutations=["grow"]'])
    with pytest.raises(ConfigError, match="min_density: must be < sparsity.max_density"):
        config.load(tmp_path / "t.toml", ["sparsity.fixed=false", "sparsity.min_density=0.5",
                                          "sparsity.max_density=0.2"])
    with pytest.raises(ConfigError, match="resize_fraction"):
        config.load(tmp_path / "t.toml", ["evolution.resize_fraction=1.0"])
    exp = config.load(tmp_path / "t.toml", PARETO + ["sparsity.min_density=0.0001", 'sparsity.init="uniform"'])
    with pytest.raises(ConfigError, match="sparsity.min_density: 0.0001 leaves"):
        launch.start(exp, tmp_path / "run")


def test_every_member_of_the_front_carries_its_test_accuracy(pareto_run):
    """The archive's members are scored on the test split (output.test_accuracy = "chosen"),
    and the history rows say so: the front read from the history shows each one's."""
    _, run = pareto_run
    h = report.load(run)
    fronts = [report.pareto_front(h, up_to=g) for g in sorted(h.generation.unique())]
    assert max(len(f) for f in fronts) > 1
    for g, front in enumerate(fronts):
        assert front.test_accuracy.notna().all(), f"generation {g}:\n{front}"
