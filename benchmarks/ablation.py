"""Why the GA found worse networks than a hand-written GA: one factor at a time.

Every row is the work of benchmarks/reference_ga.py (benchmarks/experiments/ga_work.toml) run
by the framework with one thing changed from the current defaults, at 2% and 10% uniform
density, seeds 0-2; the score is the test accuracy of the individual with the best
validation accuracy (what a user would pick). The hand-written GA runs beside them.

Most factors are config keys. Three are diagnostic variants that exist only here, as small
patches of the driver's operators (they are not options, because they measured worse):
  no-repair        crossover children keep whatever counts they inherit (no density repair)
  regrow-pruned    SET may regrow a connection it has just pruned
  keep-biases      neuron crossover moves rows of weights but leaves each child its first
                   parent's biases

Results are stored per run in benchmarks/results/ablation/, keyed by every resolved config
value, the patch and the package version, and reused only when all of these match;
docs/ABLATION.md is written from them.

    python benchmarks/ablation.py                     # every row, 2 runs at a time (~35 min on 2 cores)
    python benchmarks/ablation.py --rows base old-defaults --densities 0.02
    python benchmarks/ablation.py --report-only       # rewrite docs/ABLATION.md from stored runs
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

WORK = ROOT / "benchmarks" / "experiments" / "ga_work.toml"
OUT = ROOT / "benchmarks" / "results" / "ablation"
DOC = ROOT / "docs" / "ABLATION.md"
SEEDS = [0, 1, 2]
DENSITIES = [0.02, 0.1]

# name: (what changes, --set overrides, diagnostic patch, the row it changes one thing of)
# Block 1 starts from the current defaults. Block 2, the other factors the numbers could point
# to, was measured on top of `new-zero` (the defaults while it ran); its deltas are against
# `new-zero`, which it shares every other setting with.
ROWS: dict[str, tuple[str, list[str], str | None, str | None]] = {
    "base": ("current defaults: training.init_fan = \"dense\", structure.new_weights = \"random\"",
             [], None, None),
    "old-defaults": ("defaults of 0.1: init_fan = \"sparse\" (newborns too are drawn at that scale)",
                     ['training.init_fan="sparse"'], None, "base"),
    "new-zero": ("newborn connections at weight 0 (structure.new_weights = \"zero\")",
                 ['structure.new_weights="zero"'], None, "base"),
    "sparse-zero": ("init_fan = \"sparse\" and newborns at 0 (the issue's one-line experiment)",
                    ['training.init_fan="sparse"', 'structure.new_weights="zero"'], None, "base"),
    "xavier": ("Xavier instead of Kaiming init (training.init = \"xavier_uniform\")",
               ['structure.new_weights="zero"', 'training.init="xavier_uniform"'], None, "new-zero"),
    "no-repair": ("no density repair after crossover (diagnostic patch)",
                  ['structure.new_weights="zero"'], "no-repair", "new-zero"),
    "regrow-pruned": ("SET may regrow just-pruned positions (diagnostic patch)",
                      ['structure.new_weights="zero"'], "regrow-pruned", "new-zero"),
    "keep-biases": ("neuron crossover leaves biases with the first parent (diagnostic patch)",
                    ['structure.new_weights="zero"'], "keep-biases", "new-zero"),
    "no-crossover": ("mutation only (evolution.crossover_prob = 0)",
                     ['structure.new_weights="zero"', "evolution.crossover_prob=0.0"], None, "new-zero"),
    "val-15pct": ("validation split 15% (9,000) instead of 10,000 (data.validation_fraction = 0.15)",
                  ['structure.new_weights="zero"', "data.validation_fraction=0.15"], None, "new-zero"),
}


# ------------------------------------------------------------------ one run, in its own process

def apply_patch(patch: str | None) -> None:
    from neuroevo_sparse.evolution import operators

    if patch == "no-repair":
        operators.Variation.repair = lambda self, child, targets, rng: child
    elif patch == "regrow-pruned":
        grow = operators.Variation.grow
        operators.Variation.grow = lambda self, name, mask, w, n, rng, exclude=None: grow(self, name, mask, w, n, rng)
    elif patch == "keep-biases":
        operators._bias_of = lambda name, weights: None
    elif patch is not None:
        raise ValueError(f"unknown patch {patch!r}")


def run_one(row: str, density: float, seed: int) -> dict:
    from neuroevo_sparse import launch

    apply_patch(ROWS[row][2])
    exp = experiment(row, density, seed)
    with tempfile.TemporaryDirectory() as tmp:
        run, _ = launch.start(exp, Path(tmp) / "run")
        h = run.read_history()
    e = h[h.evaluated]
    best = e.sort_values(["val_accuracy", "individual_id"], ascending=[False, True]).iloc[0]
    return {"val": float(best.val_accuracy), "test": float(best.test_accuracy),
            "evaluations": int(len(e)), "failed": int((e.status != "ok").sum())}


def experiment(row: str, density: float, seed: int):
    from neuroevo_sparse import config

    return config.load(WORK, ROWS[row][1] + [f"sparsity.density={density}", f"experiment.seed={seed}",
                                             'resources.backend="local"', 'output.progress="none"'])


def key_of(row: str, density: float, seed: int) -> str:
    """Every resolved config value, the patch and the package version: a changed default or a
    new release never reuses a stored run."""
    if row == "reference":
        code = (ROOT / "benchmarks" / "reference_ga.py").read_bytes()
        return hashlib.sha256(code + f"{density}/{seed}".encode()).hexdigest()[:16]
    import neuroevo_sparse
    blob = json.dumps({"config": experiment(row, density, seed).to_dict(), "patch": ROWS[row][2],
                       "version": neuroevo_sparse.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the table

def stored(row: str, density: float, seed: int, stale_ok: bool = False) -> dict | None:
    """The stored run, if its key is the current one (or, with `stale_ok`, whatever made it:
    the report shows stale runs, marked, rather than hide them)."""
    path = OUT / f"{row}-d{density:g}-s{seed}.json"
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):  # not run yet, or a damaged file: run it again
        return None
    if not isinstance(r, dict):
        return None
    return r if stale_ok or r.get("key") == key_of(row, density, seed) else None


def stale_runs() -> list[str]:
    """Stored runs that another version or config made: shown, and named on the page."""
    return sorted(f"{row}-d{d:g}-s{s}" for row in ["reference", *ROWS] for d in DENSITIES for s in SEEDS
                  if stored(row, d, s, stale_ok=True) is not None and stored(row, d, s) is None)


def run_and_store(row: str, density: float, seed: int) -> dict:
    if (r := stored(row, density, seed)) is not None:
        return r
    if row == "reference":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "reference_ga.py"), "--density", str(density),
               "--seed", str(seed)]
        env = dict(os.environ)
    else:
        cmd = [sys.executable, __file__, "--one", row, str(density), str(seed)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{row} d={density} seed {seed} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if row == "reference":
        r = {"val": r["best_val"], "test": r["test_of_best_val"], "evaluations": r["evaluations"], "failed": 0}
    r.update(key=key_of(row, density, seed), row=row, density=density, seed=seed)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{row}-d{density:g}-s{seed}.json"
    path.write_text(json.dumps(r, indent=1))
    print(f"  {row:>14} d={density:<5g} seed {seed}: val {r['val']:.4f} test {r['test']:.4f}", flush=True)
    return r


def report(rows: list[str], densities: list[float]) -> str:
    def cell(row, d):
        tests = [r["test"] for s in SEEDS if (r := stored(row, d, s, stale_ok=True)) is not None]
        if len(tests) < len(SEEDS):
            return None
        return statistics.mean(tests), statistics.stdev(tests)

    lines = ["# Ablation: the GA against a hand-written GA on the same work", "",
             "Written by `python benchmarks/ablation.py` (`--report-only` rewrites it from the stored runs",
             "in benchmarks/results/ablation/). The work: benchmarks/experiments/ga_work.toml, the same as",
             "benchmarks/reference_ga.py (population 16, 8 generations of 16 offspring, Fashion-MNIST MLP",
             "784-300-100-10 at a uniform density, neuron crossover p = 0.5, SET zeta = 0.3, comma survival",
             "with one elite, 94 SGD steps of 128 per evaluation, a 10k validation split). Each row changes one",
             "thing of the row named in *from*. Score: test accuracy of the best individual by validation",
             "accuracy, mean ± sd over seeds 0, 1, 2, and in brackets the difference to the *from* row",
             "(to `base` for the hand-written reference).", "",
             "| row | from | what changes | " + " | ".join(f"{d:.0%} density" for d in densities) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in densities) + " |"]
    for row in ["reference"] + rows:
        what = "hand-written DEAP + torch GA (benchmarks/reference_ga.py)" if row == "reference" else ROWS[row][0]
        frm = "base" if row == "reference" else ROWS[row][3]
        cells = []
        for d in densities:
            c, b = cell(row, d), cell(frm, d) if frm else None
            if c is None:
                cells.append("not run")
                continue
            cells.append(f"{c[0]:.4f} ± {c[1]:.4f}" + ("" if b is None else f" ({c[0] - b[0]:+.4f})"))
        lines.append(f"| `{row}` | {f'`{frm}`' if frm else ''} | {what} | " + " | ".join(cells) + " |")
    lines += ["", "Effects, largest first (against each row's *from*; a row's seed-to-seed sd is about 0.003 at",
              "10% and 0.008 at 2%, so differences below that are noise):", ""]
    for d in densities:
        effects = []
        for row in ["reference"] + rows:
            frm = "base" if row == "reference" else ROWS[row][3]
            c, b = cell(row, d), cell(frm, d) if frm else None
            if c is not None and b is not None:
                effects.append((c[0] - b[0], row))
        effects.sort(key=lambda e: -abs(e[0]))
        lines.append(f"- {d:.0%}: " + ", ".join(f"`{row}` {delta:+.4f}" for delta, row in effects))
    stale = stale_runs()
    if stale:
        lines += ["", f"**Stale results.** {len(stale)} of the stored runs were made by another version or config "
                  "than the current ones and are shown as stored; `python benchmarks/ablation.py` retrains them: "
                  + ", ".join(f"`{n}`" for n in stale[:12]) + (" ..." if len(stale) > 12 else "") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--densities", nargs="+", type=float, default=DENSITIES)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one core)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--one", nargs=3, metavar=("ROW", "DENSITY", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row, d, s = args.one
        print(json.dumps(run_one(row, float(d), int(s))))
        return
    if not args.report_only:
        tasks = [(row, d, s) for d in args.densities for s in SEEDS for row in ["reference"] + args.rows]
        # The reference uses every core: run it alone, the framework's single-core runs in pairs.
        for t in [t for t in tasks if t[0] == "reference"]:
            run_and_store(*t)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda t: run_and_store(*t), [t for t in tasks if t[0] != "reference"]))
    text = report(list(ROWS), DENSITIES)
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
