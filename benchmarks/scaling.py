"""Ray evaluator scaling: evaluations per second with 1 and N workers, and the framework's overhead.

Runs the Fashion-MNIST MLP experiment (experiments/fashion_mnist_mlp.toml) on a local Ray with
1 and then N one-CPU workers, same seed, same work. Generation 0 and Ray's start-up are not
timed; generations 1..G are.

    overhead = (wall - sum(train_seconds) / workers) / wall

i.e. the share of generation wall time in which a worker was not inside `training.train`
(driver-side selection, variation, transfers, history and checkpoint writes, idle workers).

    python benchmarks/scaling.py                       # prints a table, writes JSON
    python benchmarks/scaling.py --generations 2 --workers 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroevo_sparse import config, data  # noqa: E402
from neuroevo_sparse.evaluators import make as make_evaluator  # noqa: E402
from neuroevo_sparse.evolution import Evolution  # noqa: E402
from neuroevo_sparse.jobs import TrainSpec  # noqa: E402
from neuroevo_sparse.store import RunDir  # noqa: E402


def measure(exp: config.Experiment, splits, workers: int, generations: int, root: Path) -> dict:
    exp = replace(exp, resources=replace(exp.resources, backend="ray", num_cpus=workers, cpus_per_job=1),
                  evolution=replace(exp.evolution, generations=generations),
                  output=replace(exp.output, progress="none"))
    run = RunDir.create(exp, root / f"workers-{workers}")
    evaluator = make_evaluator(exp, TrainSpec.of(exp, splits.input_shape, splits.num_classes), splits)
    try:
        evo = Evolution(exp, splits, evaluator, run)
        state = evo.run(generations=0)  # generation 0: warms the workers up, not timed
        start = time.perf_counter()
        evo.run(state)
        wall = time.perf_counter() - start
    finally:
        evaluator.close()
    h = run.read_history()
    timed = h[(h.generation >= 1) & h.evaluated]
    train = float(timed.train_seconds.sum())
    return {"workers": workers, "generations": generations, "evaluations": len(timed),
            "wall_s": wall, "train_s": train, "evals_per_s": len(timed) / wall,
            "overhead": (wall - train / workers) / wall,
            "mean_job_s": float(timed.train_seconds.mean()),
            "history_digest": int(h[h.evaluated].val_accuracy.mul(1e6).round().sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "fashion_mnist_mlp.toml")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = p.parse_args()

    exp = config.load(args.experiment)
    splits = data.load(exp.data, exp.experiment.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            rows.append(measure(exp, splits, w, args.generations, Path(tmp)))
            print(f"  {w} worker(s): {rows[-1]['evals_per_s']:.3f} evaluations/s", file=sys.stderr)
    base = rows[0]["evals_per_s"]
    print(f"\nRay evaluator scaling: {args.experiment.name}, {args.generations} timed generations, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'workers':>7} {'evals':>6} {'wall s':>8} {'train s':>8} {'evals/s':>8} {'speedup':>8} "
          f"{'overhead':>9} {'job s':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['evaluations']:>6} {r['wall_s']:>8.2f} {r['train_s']:>8.2f} "
              f"{r['evals_per_s']:>8.3f} {r['evals_per_s'] / base:>7.2f}x {r['overhead']:>8.1%} "
              f"{r['mean_job_s']:>6.2f}")
    same = len({r["history_digest"] for r in rows}) == 1
    print(f"same history for every worker count: {same}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "scaling", "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]),
        "experiment": str(args.experiment.relative_to(ROOT)) if args.experiment.is_relative_to(ROOT) else str(args.experiment),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "rows": rows, "speedup": {r["workers"]: r["evals_per_s"] / base for r in rows},
        "same_history": same}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
