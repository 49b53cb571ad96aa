"""The GA's accuracy-size front against single networks at equal compute.

Baselines: one network per (method, density, seed), on the network and data of
experiments/fashion_mnist_pareto.toml (Fashion-MNIST, MLP 784-300-100-10, ERK allocation),
each trained by `neuroevo train`'s loop for EPOCHS epochs (SGD with momentum, the GA's
learning rate, decayed by a cosine, which helps a single long run):
  magnitude  dense training, one-shot magnitude pruning to the density, 1 epoch of fine-tuning
  static     a random sparse mask that never changes
  set        SET: prune the smallest |w| (zeta 0.3) and regrow at random, every epoch
  rigl       RigL: drop by |w|, regrow by gradient, every 100 steps, cosine-decayed, until 75%
  threshold  the seed paper's first method (structure.py), every epoch
  strength   the seed paper's second method, every epoch
  gradual    gradual magnitude pruning (Zhu & Gupta 2017): from dense, pruned by |w| every 100
             steps to a cubic schedule's density between 10% and 70% of training, then fine-tuned
at densities 1, 2, 5, 10, 20 and 50%, seeds 0-4 (--seeds N: 0..N-1).

The GA: experiments/fashion_mnist_pareto.toml itself, and its ablations (--variants:
each mechanism of issue 35 switched off in turn, VARIANTS below). Its training budget, the
samples of every training of every individual it evaluated, is measured from its history and
must not exceed the budget of one baseline method over the grid (6 densities x EPOCHS epochs
of the training split); the table says both.

Per density the table gives each method's test accuracy (mean ± sd over seeds) and the GA
front's best at or below that density: of the front's networks with at most that density,
the one with the highest *validation* accuracy, and its test accuracy. Each curve's
hypervolume is that of its points (density of the masked weights, test accuracy) against
the reference point (density 1, accuracy 0), by moocore; and on a log-density axis, where
x = log(density / 0.01) / log(100) (0 at 1%, the grid's smallest density, 1 at 100%; points
below 1% count as at 1%, so a front reaching smaller sizes than the grid gains no area the
baselines could not have), so that the small networks count as much as the large (on the
linear axis the top accuracy dominates).

A second table answers whether evolved per-layer allocation beats ERK and uniform at a fixed
global density of 10%: the work of benchmarks/experiments/ga_work.toml at 10%, started from
uniform or ERK, with or without the "move" mutation (which shifts connections between layers
at a constant total), at the same compute, seeds 0-2.

Runs are stored one per file in benchmarks/results/front/, keyed by every resolved config value
and the package version; a stored run is reused only when its key matches.

    python benchmarks/front.py                  # everything missing for seeds 0-4, 2 processes
                                                # (a seed's 42 baseline runs: ~25 min on 2 idle cores)
    python benchmarks/front.py --report-only    # table, JSON, plot and docs/FRONT.md from stored runs
    python benchmarks/front.py --workload cnn --seeds 2   # the CNN workload: docs/FRONT_CNN.md
    python benchmarks/front.py --first-seed 5 --parts ga variants --variants wide min-0.4% polish-400 gen-5 \
        lineage-cosine                          # candidate settings on held-out seeds 5-9 (printed only)

Stored runs whose key no longer matches (made by an older release) are rerun, unless
--stale-ok lets the report use them; the report then names the methods that rest on them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)

PARETO = ROOT / "experiments" / "fashion_mnist_pareto.toml"
WORK = ROOT / "benchmarks" / "experiments" / "ga_work.toml"
OUT = ROOT / "benchmarks" / "results" / "front"
SUMMARY = ROOT / "benchmarks" / "results" / "front.json"
FIGURE = ROOT / "benchmarks" / "results" / "front.png"
DOC = ROOT / "docs" / "FRONT.md"
SEEDS = [0, 1, 2]
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
METHODS = ["magnitude", "static", "set", "rigl", "threshold", "strength", "gradual"]
LOG_FLOOR = 0.01  # the density at x = 0 of the log-density hypervolume: the grid's smallest
# The GA with each mechanism of issue 35 on or off in turn (overrides of fashion_mnist_pareto.toml;
# "ga" is the file as it is). The budget of each stays within one baseline method's: without the
# polish, its steps go to two more generations (the file before the polish).
VARIANTS = {
    # The settings before the front was narrowed to 0.5-50% (sizes searched down to 0.2%).
    "wide": ["sparsity.min_density=0.002"],
    # Candidates weighed on the held-out seeds 5-9 (--first-seed 5) before the file's settings were chosen.
    "min-0.4%": ["sparsity.min_density=0.004"],
    "polish-400": ["evolution.polish_steps=400"],
    "gen-5": ["evolution.generations=5"],
    "lineage-cosine": ["sparsity.min_density=0.002", 'training.lineage_schedule="cosine"',
                       "training.lineage_horizon=8000", "training.lineage_floor=0.2"],
    # (CNN) A ladder of 7 rungs instead of 6: its smallest rungs at 1.86% and 0.96% instead of 2.32%
    # and 1.08%, so the networks pruned and retrained the most sit just under the grid's 2% and 1%.
    # (On the file's rungs of 100 steps and evaluations of 80, as it was weighed.)
    "rungs-7": ["evolution.trunk_rungs=7", "evolution.trunk_rung_steps=100", "training.steps=80"],
    # (CNN) Rungs of 100 steps and evaluations of 80 (the file has 160 and 70: 6 x 60 = 36 x 10
    # steps, the same budget), weighed against the file on the held-out seeds.
    "rungs-100": ["evolution.trunk_rung_steps=100", "training.steps=80"],
    # (CNN) The ladder from 50% down to 0.39% instead of 0.5%: the same 6 rungs (a factor 2.24
    # apiece), each just under a grid density (22.3%, 9.9%, 4.4%, 1.97%, 0.88%, 0.39%) rather than
    # at or just over it (23.2%, 10.8%, 5.0%, 2.3%, 1.1%, 0.5%). The same budget.
    "ladder-0.39%": ["sparsity.min_density=0.0039"],
    # (CNN) 7 rungs of the file's 160 steps (one rung more: 160 steps of the budget's slack).
    "rungs-7-160": ["evolution.trunk_rungs=7"],
    # (CNN) Grow and prune by 15% of each layer's connections instead of 30%: a prune of a rung
    # lands at 0.85x its size (2.32% -> 1.97%) instead of 0.7x (1.62%), so sizes between two rungs
    # (a factor 2.15 apart) are filled more finely. The same budget.
    "resize-0.15": ["evolution.resize_fraction=0.15"],
    # Budget by rank, successive halving inside each generation: every offspring trains half of its
    # 240 steps, then the better half by the run's ranking (NSGA-II) trains the rest; the quarter of
    # the steps saved buys 3 more offspring per generation (11 x 120 + 6 x 120 = 2040 steps against
    # 8 x 240 = 1920): more candidates, each that stays on trained as long as before.
    "halving": ["evolution.halving_at=0.5", "evolution.halving_keep=0.5", "evolution.offspring=11"],
    # Optimiser state (momentum) inherited with the weights instead of a fresh optimiser per training.
    "inherit-optimizer": ["training.inherit_optimizer=true"],
    # The ablations down to trunk-no-grow were measured with sizes searched down to 0.2% ("wide"),
    # and keep it (the MLP's; not for comparison with the CNN's runs).
    # The trunk without its pruning ladder: every size one cut of the trunk (the file before the ladder).
    "no-ladder": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=6000",
                  "evolution.generations=5"],
    # A shorter ladder of longer rungs, one generation more (over the budget on seed 2: 3.28M).
    "ladder6": ["sparsity.min_density=0.002", "evolution.trunk_rungs=6", "evolution.trunk_rung_steps=300",
                "evolution.generations=5"],
    # The GA before evolution.trunk_steps (every lineage from a random sparse network).
    "no-trunk": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=0",
                 "evolution.generations=9"],
    "no-polish": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=0",
                  "evolution.polish_steps=0", "evolution.generations=11"],
    "schedule": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=0",
                 "evolution.generations=9", 'training.lineage_schedule="cosine"', "training.lineage_horizon=4800",
                 "training.lineage_floor=0.2"],
    "schedule-no-polish": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=0",
                           'training.lineage_schedule="cosine"', "training.lineage_horizon=4800",
                           "training.lineage_floor=0.2", "evolution.polish_steps=0", "evolution.generations=11"],
    "trunk-no-grow": ["sparsity.min_density=0.002", "evolution.trunk_rungs=0", "evolution.trunk_steps=5000",
                      "evolution.generations=6", 'evolution.mutations=["prune","move","set"]'],
    # The stretch goal: half the compute (1.40-1.47M samples), every part of the file's run shortened.
    "half": ["evolution.trunk_steps=2500", "evolution.trunk_rung_steps=125", "training.steps=120",
             "evolution.polish_steps=150"],
}
EPOCHS = 10
# The second workload (--workload cnn): the same comparison on a small CNN, so that the GA's
# settings are not tuned to one MLP. A convolution costs ~10x the MLP per sample, so its budget
# is 3 epochs per density and its baselines the two best of the MLP's (static and gradual).
WORKLOADS = {
    "mlp": dict(experiment=PARETO, epochs=10, out="front", methods=METHODS, doc="FRONT.md",
                title="Fashion-MNIST MLP"),
    "cnn": dict(experiment=ROOT / "experiments" / "fashion_mnist_cnn_pareto.toml", epochs=3, out="front_cnn",
                methods=["static", "gradual"], doc="FRONT_CNN.md", title="Fashion-MNIST CNN"),
}
WORKLOAD = "mlp"


def use(workload: str) -> None:
    """Point the module's paths and grid at one workload's experiment and stored runs."""
    global WORKLOAD, PARETO, EPOCHS, OUT, SUMMARY, FIGURE, DOC, METHODS
    w = WORKLOADS[workload]
    WORKLOAD, PARETO, EPOCHS, METHODS = workload, w["experiment"], w["epochs"], list(w["methods"])
    results = ROOT / "benchmarks" / "results"
    OUT, SUMMARY, FIGURE = results / w["out"], results / f"{w['out']}.json", results / f"{w['out']}.png"
    DOC = ROOT / "docs" / w["doc"]


ALLOCATIONS = {  # name: overrides of ga_work.toml (at 10% density)
    "uniform": ['sparsity.init="uniform"'],
    "erk": ['sparsity.init="erdos_renyi"'],
    "uniform+move": ['sparsity.init="uniform"', 'evolution.mutations=["set","move"]'],
    "erk+move": ['sparsity.init="erdos_renyi"', 'evolution.mutations=["set","move"]'],
}
COMMON = ['resources.backend="local"', 'output.progress="none"', "resources.torch_threads=1"]


# ------------------------------------------------------------------ experiments

def baseline_experiment(method: str, density: float, seed: int):
    """The data, model and optimiser of the Pareto experiment, without its evolution keys
    (so that tuning the GA does not invalidate the stored baselines)."""
    import tomllib

    from neuroevo_sparse import config

    raw = tomllib.loads(PARETO.read_text())
    raw = {"experiment": raw["experiment"], "data": raw["data"], "model": raw["model"],
           "sparsity": {"init": raw["sparsity"]["init"]},
           "training": {k: v for k, v in raw["training"].items() if k != "steps"}}
    sets = [f'structure.method="{method}"', f"sparsity.density={density}", f"training.epochs={EPOCHS}",
            'training.lr_schedule="cosine"', f"experiment.seed={seed}"]
    if method in ("rigl", "gradual"):
        sets.append("structure.update_every=100")
    return config.from_dict(config.apply_overrides(raw, sets + COMMON), source=str(PARETO))


def ga_experiment(seed: int, variant: str = "ga"):
    from neuroevo_sparse import config

    return config.load(PARETO, VARIANTS.get(variant, []) + [f"experiment.seed={seed}"] + COMMON)


def allocation_experiment(name: str, seed: int):
    from neuroevo_sparse import config

    return config.load(WORK, ALLOCATIONS[name] + ["sparsity.density=0.1", f"experiment.seed={seed}"] + COMMON)


def experiment(kind: str, *args):
    return {"baseline": baseline_experiment, "ga": ga_experiment, "alloc": allocation_experiment}[kind](*args)


def key_of(kind: str, *args) -> str:
    """Every resolved config value and the package version: a changed default or a new
    release never reuses a stored run."""
    import neuroevo_sparse

    cfg = experiment(kind, *args).to_dict()
    # A key added later at its default changes nothing in the run: left out, so that the runs
    # stored before it existed keep their keys.
    if cfg["evolution"].get("trunk_steps") == 0:
        del cfg["evolution"]["trunk_steps"]
    if cfg["evolution"].get("trunk_rungs") == 0:
        del cfg["evolution"]["trunk_rungs"], cfg["evolution"]["trunk_rung_steps"]
    if cfg["training"].get("inherit_optimizer") is False:
        del cfg["training"]["inherit_optimizer"]
    blob = json.dumps({"kind": kind, "config": cfg,
                       "version": neuroevo_sparse.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def path_of(kind: str, *args) -> Path:
    return OUT / ("-".join([kind, *(f"{a:g}" if isinstance(a, float) else str(a) for a in args)]) + ".json")


STALE_OK = False  # --stale-ok
STALE: set[str] = set()  # "kind method" of stored runs used although their key is an older one


def stored(kind: str, *args) -> dict | None:
    try:
        r = json.loads(path_of(kind, *args).read_text())
    except (OSError, ValueError):  # not run yet, or a damaged file: run it again
        return None
    if not isinstance(r, dict):
        return None
    if r.get("key") == key_of(kind, *args):
        return r
    if STALE_OK and kind != "ga":
        STALE.add(f"{kind} {args[0]}")
        return r
    return None


# ------------------------------------------------------------------ one run (in a child process)

def run_baseline(method: str, density: float, seed: int) -> dict:
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.train import single as dst

    exp = baseline_experiment(method, density, seed)
    splits = data.load(exp.data, seed)
    run = dst.train_network(exp, splits, seed)
    f = run.final
    return {"test_accuracy": f.test_accuracy, "val_accuracy": f.val_accuracy, "density": f.density,
            "active_params": f.active_params, "samples": EPOCHS * len(splits.train_y),
            "seconds": f.seconds}


def run_ga(seed: int, variant: str = "ga") -> dict:
    from neuroevo_sparse.report import tables as report
    from neuroevo_sparse import launch

    exp = ga_experiment(seed, variant)
    with tempfile.TemporaryDirectory() as tmp:
        run, _ = launch.start(exp, Path(tmp) / "run")
        h = report.load(run.path)
    ev = report.evaluations(h)
    front = report.pareto_front(h)
    return {"front": json.loads(front[["individual_id", "active_params", "density", "val_accuracy",
                                      "test_accuracy"]].to_json(orient="records")),
            "samples": int((h[h.evaluated].steps * exp.training.batch_size).sum()), "evaluations": int(len(ev)),
            "hypervolume_val": float(h.hypervolume.iloc[-1]),
            "spread": float(front.active_params.max() / front.active_params.min())}


def run_alloc(name: str, seed: int) -> dict:
    from neuroevo_sparse.report import tables as report
    from neuroevo_sparse import launch

    exp = allocation_experiment(name, seed)
    with tempfile.TemporaryDirectory() as tmp:
        run, _ = launch.start(exp, Path(tmp) / "run")
        h = report.load(run.path)
    best = report.by_validation(report.evaluations(h).assign(generation=0)).iloc[0]
    layers = {c.removeprefix("density."): float(best[c]) for c in h.columns if c.startswith("density.")}
    return {"test_accuracy": float(best.test_accuracy), "val_accuracy": float(best.val_accuracy),
            "layer_density": layers}


def run_and_store(kind: str, *args) -> dict:
    if (r := stored(kind, *args)) is not None:
        return r
    cmd = [sys.executable, __file__, "--workload", WORKLOAD, "--one", kind, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    r.update(key=key_of(kind, *args), kind=kind, args=list(args), commit=commit)
    OUT.mkdir(parents=True, exist_ok=True)
    path_of(kind, *args).write_text(json.dumps(r, indent=1))
    print(f"  {kind} {' '.join(map(str, args))}: "
          + (f"test {r['test_accuracy']:.4f}" if "test_accuracy" in r else f"front of {len(r['front'])}"), flush=True)
    return r


# ------------------------------------------------------------------ the report

def hypervolume(points: list[tuple[float, float]], log: bool = False) -> float:
    """(density, test accuracy) points, density minimised and accuracy maximised, against (1, 0);
    with `log`, density on the log axis of LOG_FLOOR..1 mapped to 0..1."""
    import math

    import moocore
    import numpy as np

    if log:
        points = [(max(0.0, math.log(d / LOG_FLOOR) / math.log(1 / LOG_FLOOR)), a) for d, a in points]
    return float(moocore.hypervolume(np.array(points), ref=np.array([1.0, 0.0]), maximise=[False, True]))


def welch(a: list[float], b: list[float]) -> float | None:
    """Welch's two-sided p-value of a difference of means (None with fewer than 2 each)."""
    return harness.welch_p(a, b) if len(a) > 1 and len(b) > 1 else None


def best_at_or_below(front: list[dict], density: float) -> float | None:
    fits = [p for p in front if p["density"] <= density * (1 + 1e-9)]
    return max(fits, key=lambda p: (p["val_accuracy"], -p["active_params"]))["test_accuracy"] if fits else None


mean_sd = harness.mean_sd


def ga_summary(variant: str) -> dict | None:
    """The GA runs of a variant over SEEDS (those stored), or None if none is."""
    ga = [r for s in SEEDS if (r := stored("ga", s, *([] if variant == "ga" else [variant]))) is not None]
    if not ga:
        return None
    return {
        "seeds": [r["args"][0] for r in ga],
        "runs": len(ga), "samples": [r["samples"] for r in ga], "evaluations": [r["evaluations"] for r in ga],
        "front_sizes": [len(r["front"]) for r in ga], "spreads": [r["spread"] for r in ga],
        "min_density": [min(p["density"] for p in r["front"]) for r in ga],
        "max_density": [max(p["density"] for p in r["front"]) for r in ga],
        "best_at_or_below": {str(d): [best_at_or_below(r["front"], d) for r in ga] for d in DENSITIES},
        "hypervolume": [hypervolume([(p["density"], p["test_accuracy"]) for p in r["front"]]) for r in ga],
        "hypervolume_log": [hypervolume([(p["density"], p["test_accuracy"]) for p in r["front"]], log=True)
                            for r in ga],
        "fronts": [r["front"] for r in ga],
    }


def summarise() -> dict:
    curves, hv, hv_log, per_seed_hv = {}, {}, {}, {}
    for m in METHODS:
        points = []
        for d in DENSITIES:
            runs = [stored("baseline", m, d, s) for s in SEEDS]
            if any(r is None for r in runs):
                continue
            acc = mean_sd([r["test_accuracy"] for r in runs])
            points.append({"density": d, "active_params": statistics.mean(r["active_params"] for r in runs),
                           "test_accuracy": acc[0], "test_accuracy_sd": acc[1],
                           "samples": runs[0]["samples"]})
        if len(points) == len(DENSITIES):
            curves[m] = points
            points_of = lambda s: [(d, stored("baseline", m, d, s)["test_accuracy"]) for d in DENSITIES]  # noqa: E731
            per_seed_hv[m] = {"linear": [hypervolume(points_of(s)) for s in SEEDS],
                              "log": [hypervolume(points_of(s), log=True) for s in SEEDS]}
            hv[m] = mean_sd(per_seed_hv[m]["linear"])
            hv_log[m] = mean_sd(per_seed_hv[m]["log"])
    out = {"epochs": EPOCHS, "densities": DENSITIES, "seeds": SEEDS, "curves": curves,
           "hypervolume": {m: {"mean": v[0], "sd": v[1]} for m, v in hv.items()},
           "hypervolume_log": {m: {"mean": v[0], "sd": v[1]} for m, v in hv_log.items()},
           "baseline_hypervolume_per_seed": per_seed_hv}
    variants = {v: g for v in ["ga", *VARIANTS] if (g := ga_summary(v)) is not None}
    if "ga" in variants:
        out["ga"] = ga = variants["ga"]
        out["hypervolume"]["GA front"] = dict(zip(("mean", "sd"), mean_sd(ga["hypervolume"])))
        out["hypervolume_log"]["GA front"] = dict(zip(("mean", "sd"), mean_sd(ga["hypervolume_log"])))
    out["variants"] = variants
    out["stale"] = sorted(STALE)
    alloc = {}
    for name in ALLOCATIONS:
        # The allocation question was settled on seeds 0-2; it is reported on the seeds stored.
        runs = [r for s in SEEDS if (r := stored("alloc", name, s)) is not None]
        if runs:
            acc = mean_sd([r["test_accuracy"] for r in runs])
            alloc[name] = {"test_accuracy": acc[0], "test_accuracy_sd": acc[1], "seeds": len(runs),
                           "layer_density": [r["layer_density"] for r in runs]}
    out["allocation"] = alloc
    return out


def table(s: dict) -> str:
    ga = s.get("ga")
    budget = EPOCHS * len(DENSITIES)
    methods = [m for m in METHODS if m in s["curves"]]
    samples = s["curves"][methods[0]][0]["samples"] * len(DENSITIES) if methods else None
    lines = [f"Test accuracy, mean ± sd over seeds {', '.join(map(str, SEEDS))}. Each single network: {EPOCHS} "
             f"epochs; one method over the grid: {budget} epochs"
             + (f" ({samples / 1e6:.2f}M samples)" if samples else "") + "."]
    if ga:
        lines.append(f"The GA: {statistics.mean(ga['evaluations']):.0f} evaluations, "
                     f"{statistics.mean(ga['samples']) / 1e6:.2f}M samples in all (polish included); final fronts of "
                     f"{', '.join(map(str, ga['front_sizes']))} networks spanning "
                     f"{', '.join(f'{x:.0f}x' for x in ga['spreads'])} in active parameters, from "
                     f"{', '.join(f'{x:.2%}' for x in ga['min_density'])} to "
                     f"{', '.join(f'{x:.1%}' for x in ga['max_density'])} density.")
    if s.get("stale"):
        lines.append(f"Stored with an older release's key (reused by --stale-ok, not rerun): {', '.join(s['stale'])}.")
    lines += ["", "| density | " + " | ".join(methods) + " | best baseline | GA front, best at or below | GA - best |",
              "| --- | " + " | ".join("---" for _ in methods) + " | --- | --- | --- |"]
    for i, d in enumerate(DENSITIES):
        cells = [f"{s['curves'][m][i]['test_accuracy']:.4f} ± {s['curves'][m][i]['test_accuracy_sd']:.4f}"
                 for m in methods]
        best = max((s["curves"][m][i]["test_accuracy"], m) for m in methods) if methods else None
        g, diff = "not run", ""
        if ga:
            vals = ga["best_at_or_below"][str(d)]
            if any(v is None for v in vals):
                g = "none that small"
            else:
                g = "{:.4f} ± {:.4f}".format(*mean_sd(vals))
                diff = f"{statistics.mean(vals) - best[0]:+.4f}" if best else ""
        lines.append(f"| {d:.0%} | " + " | ".join(cells) + f" | {best[1] if best else ''} | {g} | {diff} |")
    for key, title in (("hypervolume", "linear density"), ("hypervolume_log", "log density")):
        lines += ["", f"Hypervolume of each curve ({title} vs test accuracy, reference (1, 0)):", ""]
        lines += [f"- {name}: {v['mean']:.4f} ± {v['sd']:.4f}"
                  for name, v in sorted(s[key].items(), key=lambda kv: -kv[1]["mean"])]
    variants = s.get("variants", {})
    if len(variants) > 1 and "ga" in variants:
        best_lin = max(s["curves"], key=lambda m: s["hypervolume"][m]["mean"]) if s["curves"] else None
        lines += ["", "Ablation: each mechanism on or off (VARIANTS; hypervolume over seeds, mean ± sd; Welch's p "
                  f"against the GA of {PARETO.name}):", "",
                  "| GA | seeds | samples | hypervolume | p | log hypervolume | p | best at or below "
                  + " / ".join(f"{d:.0%}" for d in DENSITIES) + " |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        full = variants["ga"]
        rows = [(f"ga ({PARETO.name})", full)] + [(v, g) for v, g in variants.items() if v != "ga"]
        for name, g in rows:
            p_lin = welch(g["hypervolume"], full["hypervolume"]) if g is not full else None
            p_log = welch(g["hypervolume_log"], full["hypervolume_log"]) if g is not full else None
            lines.append(f"| {name} | {len(g['hypervolume'])} | {statistics.mean(g['samples']) / 1e6:.2f}M | "
                         "{:.4f} ± {:.4f}".format(*mean_sd(g["hypervolume"])) + f" | {'' if p_lin is None else f'{p_lin:.3f}'} | "
                         + "{:.4f} ± {:.4f}".format(*mean_sd(g["hypervolume_log"]))
                         + f" | {'' if p_log is None else f'{p_log:.3f}'} | " + per_density(g) + " |")
        if best_lin:
            per = s["baseline_hypervolume_per_seed"][best_lin]
            p_lin = welch(full["hypervolume"], per["linear"])
            p_log = welch(full["hypervolume_log"], per["log"])
            lines.append(f"| {best_lin} (best baseline) | {len(per['linear'])} | {samples / 1e6:.2f}M | "
                         + "{:.4f} ± {:.4f}".format(*mean_sd(per["linear"])) + f" | {'' if p_lin is None else f'{p_lin:.3f}'} | "
                         + "{:.4f} ± {:.4f}".format(*mean_sd(per["log"])) + f" | {'' if p_log is None else f'{p_log:.3f}'} | "
                         + " / ".join(f"{p['test_accuracy']:.4f}" for p in s["curves"][best_lin]) + " |")
    if s["allocation"]:
        lines += ["", "Per-layer allocation at a fixed global density of 10% (the work of ga_work.toml, same compute):",
                  "", "| start | test accuracy | layer densities of the best (seed 0) |", "| --- | --- | --- |"]
        for name, a in s["allocation"].items():
            layers = ", ".join(f"{v:.3f}" for v in a["layer_density"][0].values())
            lines.append(f"| {name} ({a.get('seeds', len(a['layer_density']))} seeds) | "
                         f"{a['test_accuracy']:.4f} ± {a['test_accuracy_sd']:.4f} | {layers} |")
    return "\n".join(lines) + "\n"


def per_density(g: dict) -> str:
    """A variant's front, best at or below each density of the grid (mean over its seeds)."""
    means = [statistics.mean(v) if v and all(x is not None for x in v) else None
             for v in (g["best_at_or_below"][str(d)] for d in DENSITIES)]
    return " / ".join("-" if m is None else f"{m:.4f}" for m in means)


def figure(s: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for m, points in s["curves"].items():
        ax.errorbar([p["density"] for p in points], [p["test_accuracy"] for p in points],
                    yerr=[p["test_accuracy_sd"] for p in points], fmt="o--", ms=4, capsize=2, label=m)
    for i, front in enumerate((s.get("ga") or {}).get("fronts", [])):
        front = sorted(front, key=lambda p: p["density"])
        ax.plot([p["density"] for p in front], [p["test_accuracy"] for p in front], "k.-", lw=1.6,
                alpha=0.8, label="GA front" if i == 0 else None)
    ax.set(xscale="log", xlabel="density of the masked weights", ylabel="test accuracy",
           title=f"{WORKLOADS[WORKLOAD]['title']}: GA front vs single networks at equal compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


def write_report() -> str:
    s = summarise()
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    harness.write(SUMMARY, {**s, **harness.stamp("neuroevo_sparse.launch")})
    figure(s)
    text = table(s)
    head = DOC.read_text().split(MARK)[0] if DOC.exists() and MARK in DOC.read_text() else \
        "# The GA's front against single networks at equal compute\n\n"
    rel = lambda path: path.relative_to(ROOT).as_posix()  # noqa: E731
    flag = "" if WORKLOAD == "mlp" else f" --workload {WORKLOAD}"
    DOC.write_text(head + MARK + f"\n\nWritten by `python benchmarks/front.py{flag}` (`--report-only` rewrites it "
                   f"from the stored runs in {rel(OUT)}/). Figure: {rel(FIGURE)}; data: {rel(SUMMARY)}.\n\n" + text)
    return text


# docs/FRONT.md: the text above this line is written by hand (the findings), the tables below by this script.
MARK = "<!-- tables written by benchmarks/front.py -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--parts", nargs="+", choices=["baseline", "ga", "variants", "alloc"],
                   default=["ga", "alloc", "baseline"])
    p.add_argument("--workload", choices=list(WORKLOADS), default="mlp",
                   help="the MLP of fashion_mnist_pareto.toml, or the CNN of fashion_mnist_cnn_pareto.toml")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="baselines to run (default: the workload's)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="GA ablations to run (--parts variants)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (first-seed..first-seed+N-1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="held-out seeds, on which settings are weighed before the reported seeds (0-4) are run; "
                        "their report is printed, not written")
    p.add_argument("--stale-ok", action="store_true",
                   help="report stored baseline and allocation runs made by an older release instead of rerunning them")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    use(args.workload)
    args.methods = args.methods or METHODS
    global STALE_OK
    STALE_OK = args.stale_ok
    SEEDS[:] = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.one:
        kind, *rest = args.one
        conv = {"baseline": (str, float, int), "ga": (int, str), "alloc": (str, int)}[kind]
        values = [f(v) for f, v in zip(conv, rest)]
        print(json.dumps({"baseline": run_baseline, "ga": run_ga, "alloc": run_alloc}[kind](*values)))
        return
    if not args.report_only:
        todo = []
        for part in args.parts:
            if part == "ga":
                todo += [("ga", s) for s in SEEDS]
            elif part == "variants":
                todo += [("ga", s, v) for v in args.variants for s in SEEDS]
            elif part == "alloc":
                todo += [("alloc", n, s) for n in ALLOCATIONS for s in SEEDS]
            else:
                todo += [("baseline", m, d, s) for s in SEEDS for m in args.methods for d in DENSITIES]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda t: run_and_store(*t), todo))
    print(write_report() if args.first_seed == 0 else table(summarise()))


if __name__ == "__main__":
    main()
