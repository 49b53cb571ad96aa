"""Ray evaluator scaling: evaluations per second with 1 and N workers, and the framework's overhead.

Runs the Fashion-MNIST MLP experiment (experiments/fashion_mnist_mlp.toml) on a local Ray with
1 and then N one-CPU workers, same seed, same work. Generation 0 and Ray's start-up are not
timed; generations 1..G are.

    overhead  = (wall - sum(train_seconds) / workers) / wall
    framework = (wall - sum over generations of the training's critical path) / wall
    imbalance = overhead - framework

`overhead` is the share of wall time in which a worker was not inside `training.train`;
`framework` the share in which none was: the time the framework adds to the training itself
(`driver`: outside `Evaluator.evaluate` -- selection, variation, write-back, history and
checkpoint writes; the rest: Ray scheduling and moving jobs and results). `imbalance` is the
time a worker waits for another's task to end: a generation is a barrier, and two equal
tasks of 4 individuals on two workers do not take equal times on a noisy machine. A
generation's critical path is max(longest task, sum of its tasks / workers); a task's
training time is its individuals' train_seconds added up (a vectorised group shares one).

    python benchmarks/scaling.py                       # prints a table, writes JSON
    python benchmarks/scaling.py --generations 2 --workers 1 2 --repeats 1 --json out.json

Two CPU-bound workers on two cores also slow each other down (shared caches and memory, and
the cores' clock), and a shared virtual machine drifts in speed from minute to minute; no
framework removes either. `job s` (mean seconds in training per individual) shows them, and
`speedup at same job s` is the speedup had every job taken as long as in the same round's
1-worker run: the framework's own scaling.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroevo_sparse.problem.models import Architecture
from neuroevo_sparse import config
from neuroevo_sparse.problem import data  # noqa: E402
from neuroevo_sparse.evaluators import make as make_evaluator  # noqa: E402
from neuroevo_sparse.evolution.loop import Evolution  # noqa: E402
from neuroevo_sparse.train.paths import spec_for  # noqa: E402
from neuroevo_sparse.store import RunDir  # noqa: E402


class _Timed:
    """The evaluator, with the wall time of each `evaluate` call added up."""

    def __init__(self, evaluator):
        self.evaluator, self.seconds = evaluator, 0.0

    def evaluate(self, jobs, on_result=None):
        start = time.perf_counter()
        try:
            return self.evaluator.evaluate(jobs, on_result)
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self.evaluator.close()


def measure(exp: config.Experiment, splits, workers: int, generations: int, root: Path) -> dict:
    exp = replace(exp, resources=replace(exp.resources, backend="ray", num_cpus=workers, cpus_per_job=1),
                  evolution=replace(exp.evolution, generations=generations),
                  output=replace(exp.output, progress="none"))
    run = RunDir.create(exp, root / f"workers-{workers}")
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    evaluator = _Timed(make_evaluator(exp, spec_for(exp, arch), splits))
    try:
        evo = Evolution(exp, arch, evaluator, run)
        state = evo.run(generations=0)  # generation 0: warms the workers up, not timed
        evaluator.seconds = 0.0
        start = time.perf_counter()
        evo.run(state)
        wall = time.perf_counter() - start
    finally:
        evaluator.close()
        run.release()
    h = run.read_history()
    timed = h[(h.generation >= 1) & h.evaluated]
    train = float(timed.train_seconds.sum())
    # One Ray task = the rows a worker trained together in a generation (one shared train_seconds).
    tasks = timed.groupby(["generation", "worker", "train_seconds"]).train_seconds.sum()
    critical = sum(max(t.max(), t.sum() / workers) for _, t in tasks.groupby(level="generation"))
    return {"workers": workers, "generations": generations, "evaluations": len(timed),
            "wall_s": wall, "train_s": train, "evals_per_s": len(timed) / wall,
            "overhead": (wall - train / workers) / wall,
            "framework": (wall - critical) / wall,
            "imbalance": (critical - train / workers) / wall,
            "driver": (wall - evaluator.seconds) / wall,
            "mean_job_s": float(timed.train_seconds.mean()),
            "history_digest": int(h[h.evaluated].val_accuracy.mul(1e6).round().sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "fashion_mnist_mlp.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as `neuroevo run --set`")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of (1 worker, N workers), interleaved so that drift in the machine's "
                        "speed hits every worker count alike; the medians are reported")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = p.parse_args()

    exp = config.load(args.experiment, args.overrides)
    splits = data.load(exp.data, exp.experiment.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for w in args.workers:
                rows.append({"round": rep, **measure(exp, splits, w, args.generations, Path(tmp) / f"r{rep}")})
                print(f"  round {rep}, {w} worker(s): {rows[-1]['evals_per_s']:.3f} evaluations/s", file=sys.stderr)
    summary = summarise(rows, args.workers)
    print(f"\nRay evaluator scaling: {args.experiment.name}, {args.generations} timed generations x "
          f"{args.repeats} rounds, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'round':>5} {'workers':>7} {'evals':>6} {'wall s':>8} {'train s':>8} {'evals/s':>8} "
          f"{'overhead':>9} {'framework':>10} {'driver':>7} {'imbalance':>10} {'job s':>6}")
    for r in rows:
        print(f"{r['round']:>5} {r['workers']:>7} {r['evaluations']:>6} {r['wall_s']:>8.2f} {r['train_s']:>8.2f} "
              f"{r['evals_per_s']:>8.3f} {r['overhead']:>8.1%} {r['framework']:>10.1%} {r['driver']:>7.1%} "
              f"{r['imbalance']:>10.1%} "
              f"{r['mean_job_s']:>6.2f}")
    print(f"\n{'workers':>7} {'evals/s':>8} {'speedup':>8} {'overhead':>9} {'framework':>10} {'imbalance':>10} "
          f"{'job s':>6} {'speedup at same job s':>22}   (medians over rounds)")
    for w, m in summary.items():
        print(f"{w:>7} {m['evals_per_s']:>8.3f} {m['speedup']:>7.2f}x {m['overhead']:>8.1%} {m['framework']:>10.1%} "
              f"{m['imbalance']:>10.1%} {m['mean_job_s']:>6.2f} {m['speedup_same_job_time']:>21.2f}x")
    same = len({r["history_digest"] for r in rows}) == 1
    print(f"same history for every worker count and round: {same}")
    import harness  # benchmarks/, the script's own folder, is on sys.path
    harness.write(args.json, {
        "benchmark": "scaling",
        "experiment": str(args.experiment.relative_to(ROOT)) if args.experiment.is_relative_to(ROOT) else str(args.experiment),
        "rows": rows, "median": summary, "same_history": same, **harness.stamp("neuroevo_sparse.launch")})
    print(f"wrote {args.json}")


def summarise(rows: list[dict], workers: list[int]) -> dict[int, dict]:
    """Medians over rounds per worker count. The speedup is taken round by round (each round's
    N-worker run against the same round's 1-worker run) and then the median, so a machine
    that speeds up or slows down between rounds does not show up as scaling."""
    out = {}
    for w in workers:
        mine = [r for r in rows if r["workers"] == w]
        base = {r["round"]: r["evals_per_s"] for r in rows if r["workers"] == workers[0]}
        out[w] = {key: statistics.median(r[key] for r in mine)
                  for key in ("evals_per_s", "overhead", "framework", "driver", "imbalance", "mean_job_s")}
        out[w]["speedup"] = statistics.median(r["evals_per_s"] / base[r["round"]] for r in mine)
        # The same, had each job taken as long as in the round's 1-worker run: what is left is
        # the framework's own scaling (its overhead), without the machine's contention or drift.
        job1 = {r["round"]: r["mean_job_s"] for r in rows if r["workers"] == workers[0]}
        out[w]["speedup_same_job_time"] = statistics.median(
            r["evals_per_s"] / base[r["round"]] * r["mean_job_s"] / job1[r["round"]] for r in mine)
    return out


if __name__ == "__main__":
    main()
