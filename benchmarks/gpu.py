"""The GPU path end to end, whole process: each experiment run by `neuroevo run` on this
machine's GPU (`resources.gpus_per_job = 1`) and on its CPU cores (the TOML's own resources,
every core), interleaved, each run a fresh process timed from its start to its exit.

Reports wall seconds, the samples trained, and what the run left: the best network's test
accuracy; for a front, its hypervolume (test accuracy over density, linear and log, as
benchmarks/front.py computes them) and the best network by validation at or below 1-20%
density. A GPU run and a CPU run of one TOML are not equal (cuBLAS and a CPU BLAS round
differently; tests/test_gpu.py holds a GPU run to repeating itself), only alike: the accuracy
columns say how alike.

Needs a CUDA device and the experiments' data (Fashion-MNIST). The result is stored with the
stamp of the code that made it (harness.py).

    python benchmarks/gpu.py                              # 3 experiments x (GPU, CPU), 1 round
    python benchmarks/gpu.py --experiments fashion_mnist_pareto --repeats 3
    python benchmarks/gpu.py --report-only                # the stored table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)

OUT = ROOT / "benchmarks" / "results" / "gpu.json"
EXPERIMENTS = ["fashion_mnist_pareto", "fashion_mnist_mlp", "fashion_mnist_cnn_pareto"]
DEVICES = {"gpu": ["--set", "resources.gpus_per_job=1"], "cpu": []}
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2]


def run_once(name: str, device: str, sets: list[str]) -> dict:
    """One `neuroevo run` in a fresh process, and what it left."""
    toml = ROOT / "experiments" / f"{name}.toml"
    args = [a for s in sets for a in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "neuroevo_sparse.cli", "run", str(toml), "--run-dir", str(run_dir),
               *DEVICES[device], *args]
        start = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if p.returncode != 0:
            return {"experiment": name, "device": device, "failed": p.stderr[-2000:]}
        return {"experiment": name, "device": device, "seconds": seconds, **summary(run_dir)}


def summary(run_dir: Path) -> dict:
    from front import best_at_or_below, hypervolume  # noqa: E402  (the same folder)

    from neuroevo_sparse.api import load_run
    from neuroevo_sparse.report import tables as report

    run = load_run(run_dir)
    h = run.history
    trained = h[h.evaluated]
    best = report.by_validation(report.evaluations(h).assign(generation=0)).iloc[0]
    out = {"samples": int((trained.steps * run.config.training.batch_size).sum()),
           "evaluations": int(len(trained)), "devices": sorted(trained.device.unique().tolist()),
           "train_seconds": float(trained.train_seconds.sum()),
           "best_test_accuracy": float(best.test_accuracy), "best_density": float(best.density)}
    if run.config.fitness.mode == "pareto":
        front = json.loads(run.front()[["active_params", "density", "val_accuracy",
                                        "test_accuracy"]].to_json(orient="records"))
        points = [(p["density"], p["test_accuracy"]) for p in front]
        out.update(front_size=len(front), hypervolume=hypervolume(points), hypervolume_log=hypervolume(points, log=True),
                   best_at_or_below={str(d): best_at_or_below(front, d) for d in DENSITIES})
    return out


def measure(experiments: list[str], devices: list[str], repeats: int, sets: list[str], max_seconds: float,
            path: Path) -> dict:
    """Every (experiment, device), `repeats` rounds, the device order rotated each round; the
    result written after every run, so a machine taken back early leaves what was measured."""
    deadline = time.monotonic() + max_seconds
    result = {"rows": [], "sets": sets, **harness.stamp("neuroevo_sparse.launch")}
    for r in range(repeats):
        for name in experiments:
            for device in devices[r % 2:] + devices[:r % 2]:
                if time.monotonic() > deadline:
                    result["cut_short"] = f"--max-seconds {max_seconds:g} reached"
                    harness.write(path, result)
                    return result
                row = run_once(name, device, sets)
                result["rows"].append(row)
                harness.write(path, result)
                print(line(row), flush=True)
    return result


def line(row: dict) -> str:
    if "failed" in row:
        return f"{row['experiment']} on {row['device']}: FAILED\n{row['failed']}"
    return (f"{row['experiment']} on {row['device']}: {row['seconds']:.1f} s, {row['samples'] / 1e6:.2f}M samples, "
            f"best test {row['best_test_accuracy']:.4f}"
            + (f", hypervolume {row['hypervolume']:.4f} / log {row['hypervolume_log']:.4f}" if "hypervolume" in row else ""))


def table(result: dict) -> str:
    """Medians over rounds per (experiment, device)."""
    m = result["made_with"]["machine"]
    lines = [f"GPU: {m.get('gpu')}; CPU: {harness.label(m['cpu'])}, {m['cpu']['cores']} cores; torch {m['torch']}",
             "", "| experiment | device | wall s | samples | best test acc | HV | HV log | "
             + " | ".join(f"{d:.0%}" for d in DENSITIES) + " |",
             "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in DENSITIES) + " |"]
    for name in dict.fromkeys(r["experiment"] for r in result["rows"]):
        for device in DEVICES:
            rows = [r for r in result["rows"] if r["experiment"] == name and r["device"] == device and "failed" not in r]
            if not rows:
                continue
            med = lambda k: harness.median([r[k] for r in rows])  # noqa: E731
            front = "hypervolume" in rows[0]
            cells = [name, device, f"{med('seconds'):.1f} ({len(rows)})", f"{med('samples') / 1e6:.2f}M",
                     f"{med('best_test_accuracy'):.4f}",
                     f"{med('hypervolume'):.4f}" if front else "", f"{med('hypervolume_log'):.4f}" if front else ""]
            for d in DENSITIES:
                vals = [r["best_at_or_below"][str(d)] for r in rows] if front else []
                cells.append(f"{harness.median(vals):.4f}" if vals and None not in vals else "")
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("note"):
        lines.append(f"\n{result['note']}")
    if result.get("cut_short"):
        lines.append(f"\nCut short: {result['cut_short']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", nargs="+", default=EXPERIMENTS, choices=EXPERIMENTS)
    ap.add_argument("--devices", nargs="+", default=list(DEVICES), choices=list(DEVICES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every run (both devices)")
    ap.add_argument("--max-seconds", type=float, default=float("inf"),
                    help="start no run after this long; what was measured is kept")
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    if a.report_only:
        try:
            result = harness.read(a.json)
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {a.json} ({e}); run `python benchmarks/gpu.py` on a machine with a GPU to make it")
        if (stale := harness.staleness(result)):
            print(stale)
    else:
        import torch
        if not torch.cuda.is_available():
            sys.exit("error: benchmarks/gpu.py needs a CUDA device; torch sees none")
        result = measure(a.experiments, a.devices, a.repeats, a.sets, a.max_seconds, a.json)
    print(table(result))


if __name__ == "__main__":
    main()
