"""Training throughput: the hand-written reference against the framework's training paths.

One generation of individuals of one architecture, each with its own mask, trained by:

  reference       a plain DEAP + torch loop written the way one writes it by hand: a
                  toolbox whose `evaluate` trains one individual at a time, dense weights
                  multiplied by the mask in the forward pass, Adam, then validation and test
                  accuracy. It is here so that anyone can rerun it.
  per-individual  the framework's `training.train`, dense masked, one individual at a time
  vectorised      `vectorised.train_many`: the individuals in vmapped groups (dense masked)
  sparse          `training.train` with every masked Linear layer truly sparse (CSR)
  auto            what a run gets with the default config (`worker.train_group`): for these
                  MLPs below 30% density, vectorised groups whose sparse layers run as one
                  block-diagonal sparse matmul

Workloads: the Fashion-MNIST MLP 784-300-100-10 (ERK masks at the given overall density,
real Fashion-MNIST), one wide 4096x4096 Linear layer (random inputs and labels, masks at
exactly the given density), and a user's own module: the residual CNN with BatchNorm of
experiments/custom/resnet.py on Fashion-MNIST (uniform masks on its convs; the per-individual,
vectorised (vmap over functional_call, buffers stacked) and auto paths only: the hand-written
reference and the CSR path are for MLPs). Every path gets the same masks, initial weights, seeds, batch
size, optimiser and thread count (torch's default: every core).

Measured per (workload, path, density), each in a fresh process so peak memory is its own:
  sample-epochs/s  individuals x samples trained / training-set size / wall seconds of the
                   generation (training plus the validation and test passes the GA needs)
  step ms          time of one training step of one individual, from two generations of
                   different lengths: (T(long) - T(short)) / (individuals x extra steps)
  peak MB          peak resident memory of the process while it trains the generations
                   (data and warm-up included, the dataset loader's own peak not: Linux VmHWM
                   is reset after loading)

    python benchmarks/throughput.py                  # full table, writes JSON (~12 minutes on 2 cores)
    python benchmarks/throughput.py --workloads wide --densities 0.02 0.1
    python benchmarks/throughput.py --workloads resnet --densities 0.3 --repeats 3 --json benchmarks/results/throughput_resnet.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)

PATHS = ["reference", "per-individual", "vectorised", "sparse", "auto"]
WORKLOADS = {
    # individuals, steps of the short and the long generation, vmap group size
    "mlp": {"individuals": 16, "steps": (50, 300), "group": 8},
    "wide": {"individuals": 2, "steps": (5, 25), "group": 2},
    "resnet": {"individuals": 4, "steps": (5, 25), "group": 4},
}
# Paths that apply to a workload (the reference and the CSR path are written for MLPs).
APPLIES = {"resnet": {"per-individual", "vectorised", "auto"}}
BATCH = 64


# ---------------------------------------------------------------- the hand-written reference

def reference_generation(masks: list[dict], weights: list[dict], seeds: list[int], data, steps: int) -> list[float]:
    """What a user writes without the framework: DEAP's toolbox.map over a torch training function."""
    import torch
    import torch.nn.functional as F
    from deap import base

    (x, y), (xv, yv), (xt, yt) = data

    def evaluate(individual):
        mask, init, seed = individual
        names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in init))  # layers in forward order
        ws = [torch.tensor(init[f"{n}.weight"], requires_grad=True) for n in names]
        bs = [torch.tensor(init[f"{n}.bias"], requires_grad=True) for n in names]
        ms = [torch.tensor(mask[f"{n}.weight"], dtype=torch.float32) for n in names]

        def forward(h):
            h = h.flatten(1)
            for i, (w, b, m) in enumerate(zip(ws, bs, ms)):
                h = F.linear(h, w * m, b)
                if i < len(ws) - 1:
                    h = F.relu(h)
            return h

        opt = torch.optim.Adam(ws + bs, lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        order, pos = torch.randperm(len(y), generator=gen), 0
        for _ in range(steps):
            if pos + BATCH > len(y):
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos: pos + BATCH]
            pos += BATCH
            loss = F.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = (forward(xv).argmax(1) == yv).float().mean().item()
            _ = (forward(xt).argmax(1) == yt).float().mean().item()
        return (val,)

    toolbox = base.Toolbox()
    toolbox.register("evaluate", evaluate)
    return [f[0] for f in toolbox.map(toolbox.evaluate, list(zip(masks, weights, seeds)))]


# ---------------------------------------------------------------- one cell, in its own process

def _workload(name: str, density: float, seed: int = 0):
    """(experiment, splits, jobs) for a workload: the same for every path."""
    import numpy as np

    from neuroevo_sparse import config
    from neuroevo_sparse.problem import data, models
    from neuroevo_sparse.topology.genome import Init, random_genome, target_counts
    from neuroevo_sparse.train.jobs import TrainJob

    w = WORKLOADS[name]
    if name == "resnet":
        exp = config.load(ROOT / "experiments" / "custom" / "resnet.toml")
        splits = data.load(exp.data, exp.experiment.seed)
        rule = "uniform"
    elif name == "mlp":
        exp = config.load(ROOT / "experiments" / "fashion_mnist_mlp.toml")
        splits = data.load(exp.data, exp.experiment.seed)
        rule = "erdos_renyi"
    else:
        exp = config.from_dict({"model": {"hidden": []}, "data": {"dataset": "synthetic"}})
        rng = np.random.default_rng(seed)
        n, width = 4096, 4096
        xs = rng.standard_normal((n + 512, width), dtype=np.float32)
        ys = rng.integers(0, width, n + 512)
        splits = data.Splits(xs[:n], ys[:n], xs[n:n + 256], ys[n:n + 256], xs[n + 256:], ys[n + 256:], width)
        rule = "uniform"
    # init_fan "sparse": the init the stored table (benchmarks/results/throughput.json) was made with.
    exp = replace(exp, training=replace(exp.training, batch_size=BATCH, optimizer="adam", lr=1e-3,
                                        weight_decay=0.0, vectorise_group=w["group"], init_fan="sparse"),
                  sparsity=replace(exp.sparsity, density=density, init=rule))  # what "auto" decides from
    arch = models.Architecture.of(exp, splits.input_shape, splits.num_classes)
    info, names, template = arch.info, arch.maskable, arch.template
    counts = target_counts(info, names, density, rule)
    rng = np.random.default_rng(seed)
    jobs = [TrainJob(i, 0, 1000 + i, g.masks, g.weights) for i, g in enumerate(
        random_genome(i, template, info, counts, Init.of(exp.training), rng) for i in range(w["individuals"]))]
    return exp, splits, jobs


def _generation(path: str, exp, splits, jobs, steps: int, device_data) -> list[float]:
    import torch

    from neuroevo_sparse.train.paths import spec_for
    from neuroevo_sparse.train.core import train
    from neuroevo_sparse.train.vectorised import train_many
    from neuroevo_sparse.train.worker import groups, train_group

    threads = torch.get_num_threads()
    if path == "reference":
        data = [tuple(torch.as_tensor(a) for a in pair) for pair in
                ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y))]
        return reference_generation([j.masks for j in jobs], [j.weights for j in jobs],
                                    [j.seed for j in jobs], data, steps)
    training = dict(steps=steps)
    if path != "auto":
        training.update(vectorise="off", sparse_kernels="on" if path == "sparse" else "off")
    exp = replace(exp, training=replace(exp.training, **training),
                  resources=replace(exp.resources, torch_threads=threads))
    from neuroevo_sparse.problem.models import Architecture

    spec = spec_for(exp, Architecture.of(exp, splits.input_shape, splits.num_classes))
    if path == "vectorised":
        results = [r for g in groups(jobs, replace(spec, vectorise=True)) for r in train_many(g, spec, device_data)]
    elif path == "auto":
        results = [r for g in groups(jobs, spec) for r in train_group(g, spec, device_data)]
    else:
        results = [train(j, spec, device_data) for j in jobs]
    bad = [r.error for r in results if r.status != "ok"]
    if bad:
        raise RuntimeError(f"{path}: {bad[0]}")
    return [r.val_accuracy for r in results]


def run_cell(workload: str, path: str, density: float) -> dict:
    from neuroevo_sparse.train.core import DeviceData

    exp, splits, jobs = _workload(workload, density)
    device_data = DeviceData(splits)
    short, long = WORKLOADS[workload]["steps"]
    _generation(path, exp, splits, jobs[:1], 2, device_data)  # warm-up: allocator, MKL, vmap tracing
    _reset_peak_memory()  # what loading the dataset needed is not what training needs
    times = {}
    for steps in (short, long):
        start = time.perf_counter()
        acc = _generation(path, exp, splits, jobs, steps, device_data)
        times[steps] = time.perf_counter() - start
    k = len(jobs)
    sample_epochs = k * long * BATCH / len(splits.train_y)
    return {"workload": workload, "path": path, "density": density, "individuals": k,
            "steps": long, "wall_s": times[long], "sample_epochs_per_s": sample_epochs / times[long],
            "step_ms": 1e3 * (times[long] - times[short]) / (k * (long - short)),
            "peak_mb": _peak_memory_mb(),
            "mean_val_accuracy": sum(acc) / len(acc)}


def _reset_peak_memory() -> None:
    """Linux: reset the process's peak resident set size (VmHWM) to its current size."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak includes loading the data


def _peak_memory_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the table

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS)
    p.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.5])
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every path (interleaved); the table shows the medians")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = p.parse_args()
    if args.cell:
        print(json.dumps(run_cell(**json.loads(args.cell))))
        return

    import torch
    rows = []
    for workload in args.workloads:
        for density in args.densities:
            paths = [p for p in args.paths if p in APPLIES.get(workload, PATHS)]
            runs: dict[str, list[dict]] = {p: [] for p in paths}
            for _ in range(args.repeats):  # interleaved: every path once per round
                for path in paths:
                    cell = json.dumps({"workload": workload, "path": path, "density": density})
                    out = subprocess.run([sys.executable, __file__, "--cell", cell], capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"{workload} {path} {density}: failed\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    runs[path].append(r)
                    print(f"  {workload:5} {density:>5.0%} {path:15} {r['sample_epochs_per_s']:8.3f} sample-epochs/s "
                          f"{r['step_ms']:9.2f} ms/step {r['peak_mb']:7.0f} MB", file=sys.stderr, flush=True)
            rows += [_median_row(runs[p]) for p in paths]

    machine = (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\nTraining throughput, {machine}; batch {BATCH}, Adam; medians of {args.repeats} interleaved repeat(s); ratios against the reference (resnet: against per-individual)")
    print(f"{'workload':8} {'density':>7} {'path':15} {'sample-ep/s':>11} {'x ref':>6} {'step ms':>8} "
          f"{'x ref':>6} {'peak MB':>8} {'val acc':>7}")
    for r in rows:
        # Against the hand-written reference where there is one, else against one-by-one training.
        ref = next((x for base in ("reference", "per-individual") for x in rows if x["workload"] == r["workload"]
                    and x["density"] == r["density"] and x["path"] == base), r)
        r["speedup_vs_reference"] = r["sample_epochs_per_s"] / ref["sample_epochs_per_s"]
        r["step_vs_reference"] = r["step_ms"] / ref["step_ms"]
        print(f"{r['workload']:8} {r['density']:>7.0%} {r['path']:15} {r['sample_epochs_per_s']:>11.3f} "
              f"{r['speedup_vs_reference']:>5.2f}x {r['step_ms']:>8.2f} {r['step_vs_reference']:>5.2f}x "
              f"{r['peak_mb']:>8.0f} {r['mean_val_accuracy']:>7.3f}")
    for workload in [w for w in args.workloads if "sparse" in APPLIES.get(w, PATHS)]:
        below = [d for d in args.densities if _step(rows, workload, "sparse", d) < _step(rows, workload, "per-individual", d)]
        print(f"{workload}: the sparse step is faster than the dense masked step at densities {below or 'none'}")
    harness.write(args.json, {"benchmark": "throughput", "workloads": WORKLOADS, "batch": BATCH, "rows": rows,
                              **harness.stamp("neuroevo_sparse.train.worker")})
    print(f"wrote {args.json}")


def _median_row(runs: list[dict]) -> dict:
    """One cell's repeats as one row: the median of each measure, and every repeat's values."""
    row = dict(runs[0])
    for key in ("wall_s", "sample_epochs_per_s", "step_ms", "peak_mb"):
        row[key] = statistics.median(r[key] for r in runs)
        row[f"{key}_repeats"] = [r[key] for r in runs]
    row["repeats"] = len(runs)
    return row


def _step(rows: list[dict], workload: str, path: str, density: float) -> float:
    return next((r["step_ms"] for r in rows if (r["workload"], r["path"], r["density"]) == (workload, path, density)),
                math.inf)


if __name__ == "__main__":
    main()
