"""Bytes a generation moves through Ray's object store, on a cluster of two `ray start` nodes.

A head and one worker node on this machine (ray_nodes.py: token authentication, each node its
own raylet and object store), and per case a short evolution whose driver joins them with
`resources.address`, three times (RayEvaluator.shipping):

  parents   what runs now: each parent put once per generation (active values and packed
            masks), each child as what it changed of its parents, results as active values
            (neuroevo_sparse/evaluators/wire.py)
  alone     each job's arrays packed on their own (active values and packed masks), no
            parent: what the compact form alone saves
  whole     the shipping before issue #37: every job's masks and weights inline in its task,
            ~5 bytes per weight, results dense

All three give the same history (checked). Bytes are Ray's serialised sizes (pickle protocol 5,
arrays out of band) of what the driver puts (parents and task arguments) and gets back;
between nodes, a parent crosses once to each node whose tasks use it. The data, put once per
run, is listed apart. Generation 0 (a random population, no parents) is not in the means.

    python benchmarks/ray_bytes.py                   # quickstart, quickstart x4 offspring, fashion
    python benchmarks/ray_bytes.py --cases quickstart --generations 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ray_bytes.json"
CASES = {
    "quickstart": {"experiment": "experiments/quickstart.toml", "sets": []},
    # Four children per member of the population: what putting each parent once is for.
    "quickstart-x4": {"experiment": "experiments/quickstart.toml", "sets": ["evolution.offspring=32"]},
    "fashion": {"experiment": "experiments/fashion_mnist_mlp.toml", "sets": []},
}
MODES = ("parents", "alone", "whole")


def one(case: str, mode: str, generations: int, address: str, run_dir: Path) -> dict:
    """One evolution in this process, a driver of the cluster at `address`."""
    import logging

    import neuroevo_sparse.launch as launch
    from neuroevo_sparse import config
    from neuroevo_sparse.evaluators.ray import RayEvaluator
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.problem.models import Architecture

    logging.basicConfig(level=logging.WARNING)
    spec = CASES[case]
    exp = config.load(ROOT / spec["experiment"], spec["sets"] + [
        f"evolution.generations={generations}", 'output.progress="none"', 'resources.backend="ray"',
        f'resources.address="{address}"'])
    RayEvaluator.shipping = mode
    made = []
    real = launch.make_evaluator

    def capture(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    launch.make_evaluator = capture
    run, _ = launch.start(exp, run_dir)
    evaluator = made[0]
    splits = data.load(exp.data, exp.experiment.seed)
    weights = Architecture.of(exp, splits.input_shape, splits.num_classes).parameters
    return {"case": case, "mode": mode, "generations": generations, "nodes": len(evaluator.ray.nodes()),
            "population": exp.evolution.population, "offspring": exp.n_offspring,
            "density": exp.sparsity.density, "weights": weights, "data_bytes": evaluator.data_bytes,
            "calls": evaluator.bytes_moved, "run": str(run.path)}


def per_generation(calls: list[dict]) -> list[dict]:
    """Per generation, its first call (the training of its offspring) and the rest (the test
    split's scoring, the second part of successive halving) added up."""
    out: dict[int, dict] = {}
    for c in calls:
        g = out.setdefault(c["generation"], {"generation": c["generation"]})
        part = g.setdefault("train" if "train" not in g else "other", {})
        for k, v in c.items():
            if k != "generation":
                part[k] = part.get(k, 0) + v
    for g in out.values():
        g.setdefault("other", {k: 0 for k in g["train"]})
    return [out[g] for g in sorted(out)]


def same_history(a: str, b: str) -> bool:
    import pandas as pd

    from neuroevo_sparse.store.history import NONDETERMINISTIC

    def load(path):
        df = pd.read_parquet(Path(path) / "history").drop(columns=["run_id", *NONDETERMINISTIC])
        return df.sort_values(["generation", "individual_id"]).reset_index(drop=True)

    try:
        pd.testing.assert_frame_equal(load(a), load(b), check_exact=True)
        return True
    except AssertionError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # case mode address run-dir: one run here
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        case, mode, address, run_dir = args.one
        print(json.dumps(one(case, mode, args.generations, address, Path(run_dir))))
        return
    from ray_nodes import RayNodes  # benchmarks/, the script's own folder, is on sys.path

    rows = []
    with tempfile.TemporaryDirectory() as tmp, RayNodes(nodes=2, cpus=1) as cluster:
        for case in args.cases:
            runs = {}
            for mode in MODES:
                p = subprocess.run([sys.executable, __file__, "--generations", str(args.generations),
                                    "--one", case, mode, cluster.address, str(Path(tmp) / f"{case}-{mode}")],
                                   capture_output=True, text=True, cwd=ROOT, env=cluster.driver_env())
                if p.returncode != 0:
                    raise SystemExit(f"{case} ({mode}) failed:\n{p.stderr[-3000:]}")
                runs[mode] = json.loads(p.stdout.strip().splitlines()[-1])
                print(f"{case} ({mode}): done", file=sys.stderr)
            rows.append(summarise(runs))
    text = table(rows)
    print(text)
    import harness

    harness.write(args.json, {"rows": rows, "table": text, **harness.stamp("neuroevo_sparse.launch")})


KEYS = ("jobs", "parents", "on_parents", "put_bytes", "parent_bytes", "task_bytes", "returned_bytes")


def summarise(runs: dict[str, dict]) -> dict:
    """Per generation, what each shipping moved (measured in its own run)."""
    first = runs[MODES[0]]
    per = {mode: per_generation(run["calls"]) for mode, run in runs.items()}
    generations = []
    for i, g in enumerate(per[MODES[0]]):
        row: dict = {"generation": g["generation"],
                     # What the shipping now counts that the old would have moved: "whole" measures it.
                     "counted_whole_put_bytes": g["train"]["whole_put_bytes"] + g["other"]["whole_put_bytes"],
                     "counted_whole_returned_bytes": g["train"]["whole_returned_bytes"]
                     + g["other"]["whole_returned_bytes"]}
        for mode in MODES:
            row[mode] = {part: {k: per[mode][i][part][k] for k in KEYS} for part in ("train", "other")}
        generations.append(row)
    later = [g for g in generations if g["generation"] >= 1]
    mean = {mode: {part: {k: sum(g[mode][part][k] for g in later) / max(1, len(later)) for k in KEYS}
                   for part in ("train", "other")} for mode in MODES}
    same = {mode: same_history(first["run"], runs[mode]["run"]) for mode in MODES[1:]}
    described = ("case", "generations", "nodes", "population", "offspring", "density", "weights", "data_bytes")
    return {k: first[k] for k in described} | {"same_history": all(same.values()), "mean": mean,
                                               "per_generation": generations}


def table(rows: list[dict]) -> str:
    import harness

    mb = lambda n: f"{n / 1e6:.3f}"  # noqa: E731
    lines = [f"MB per generation through Ray's object store (mean of generations 1..G), 2 `ray start` "
             f"nodes on one machine ({harness.described()})",
             f"{'':>14} {'':>8} {'':>7} {'':>8} {'':>7} | {'training: put':^26} | {'test scoring':^13} | "
             f"{'returned':^13} | {'total':^21} |",
             f"{'case':>14} {'weights':>8} {'density':>7} {'children':>8} {'parents':>7} | "
             f"{'whole':>8} {'alone':>8} {'parents':>8} | {'whole':>6} {'now':>6} | "
             f"{'whole':>6} {'now':>6} | {'whole':>6} {'now':>6} {'fewer':>7} | {'same':>4}"]
    for r in rows:
        m = r["mean"]
        new, alone, old = m["parents"], m["alone"], m["whole"]
        total_old = sum(old[p]["put_bytes"] + old[p]["returned_bytes"] for p in ("train", "other"))
        total_new = sum(new[p]["put_bytes"] + new[p]["returned_bytes"] for p in ("train", "other"))
        returned = lambda x: x["train"]["returned_bytes"] + x["other"]["returned_bytes"]  # noqa: E731
        lines.append(f"{r['case']:>14} {r['weights']:>8,} {r['density']:>7g} {new['train']['jobs']:>8.0f} "
                     f"{new['train']['parents']:>7.1f} | {mb(old['train']['put_bytes']):>8} "
                     f"{mb(alone['train']['put_bytes']):>8} {mb(new['train']['put_bytes']):>8} | "
                     f"{mb(old['other']['put_bytes']):>6} {mb(new['other']['put_bytes']):>6} | "
                     f"{mb(returned(old)):>6} {mb(returned(new)):>6} | {mb(total_old):>6} {mb(total_new):>6} "
                     f"{total_old / max(1, total_new):>6.1f}x | {'yes' if r['same_history'] else 'NO':>4}")
    data = ", ".join(f"{r['case']} {r['data_bytes'] / 1e6:.1f} MB" for r in rows)
    lines += ["whole: every job's arrays inline, results dense (before #37); alone: each job packed on its "
              "own; parents / now: each parent put once, children as what differs;",
              f"the data is put once per run: {data}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
