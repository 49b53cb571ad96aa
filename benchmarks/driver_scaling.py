"""The driver's cost curve: seconds per individual, peak memory, checkpoint bytes per generation.

What grows with a population is the driver's work (selection, variation, write-back, history,
checkpoints), not the training, which workers share. So the training is replaced here by an
instant evaluator (each job's active weights come back scaled by 1.001, as new arrays, as
training returns them; its validation accuracy is drawn from the job's seed), and the rest
is the real loop: `Evolution` with a real run directory, history parts and checkpoints.

Per network and population, in a fresh process: G generations of `population` offspring
(survival "plus", checkpoint every generation, every checkpoint kept so each one's new files
can be counted):

  driver s/ind    wall time of generations 1..G, less the evaluator's, over the offspring made
  peak MB         the process's peak RSS less its RSS before the first generation
  B/(ind x act)   that memory over (population + offspring) x active weights per individual
  ckpt MB/gen     bytes a checkpoint writes (its directory and its pack: the individuals new to it
                  and any it copies from a mostly dead pack), mean
                  of generations 1..G
  dense MB/gen    the same checkpoints with every individual's arrays dense (checkpoint format 1)
  load            the machine's 1-minute load average before and after the case (a shared machine
                  slows the driver: compare runs at similar loads)
  ref s           seconds of a fixed pure-Python loop (10M additions) just before the case: a VM's
                  speed varies from day to day by more than the load shows; a rough guide only (it
                  varies by itself), so compare versions by interleaved runs on one machine

    python benchmarks/driver_scaling.py                      # both networks, populations 64 256 1024
    python benchmarks/driver_scaling.py --networks quickstart --populations 64 --generations 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "driver_scaling.json"
# quickstart: experiments/quickstart.toml's MLP on digits (17k weights); large: an MLP of 1.05M
# weights (64-1024-960-4) on synthetic data, at 10% density.
NETWORKS = {
    "quickstart": {"experiment": "experiments/quickstart.toml", "sets": []},
    "large": {"experiment": "experiments/quickstart.toml",
              "sets": ['data.dataset="synthetic"', "data.synthetic_samples=2000", "model.hidden=[1024, 960]",
                       "sparsity.density=0.1"]},
}


class Instant:
    """An evaluator that trains nothing: new weights (scaled active values) and seeded metrics."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def evaluate(self, jobs, on_result=None):
        import numpy as np

        from neuroevo_sparse.train.jobs import TrainResult

        start = time.perf_counter()
        out = []
        for job in jobs:
            rng = np.random.default_rng(job.seed)
            weights = {k: (v * np.float32(1.001) if k in job.masks else v) for k, v in job.weights.items()}
            acc = float(rng.uniform(0.5, 0.95))
            out.append(TrainResult(job.individual_id, weights, val_accuracy=acc, val_loss=1 - acc, train_loss=1 - acc,
                                   test_accuracy=acc if job.test_only else None, steps=1))
            if on_result:
                on_result(out[-1])
        self.seconds += time.perf_counter() - start
        return out

    def close(self) -> None:
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(network: str, population: int, generations: int, root: Path) -> dict:
    """One (network, population) in this process."""
    import numpy as np

    from neuroevo_sparse import config
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.evolution.loop import Evolution
    from neuroevo_sparse.problem.models import Architecture
    from neuroevo_sparse.store import RunDir

    spec = NETWORKS[network]
    exp = config.load(ROOT / spec["experiment"], spec["sets"] + [
        f"evolution.population={population}", f"evolution.generations={generations}",
        f"output.keep_checkpoints={generations + 2}", 'output.progress="none"', 'output.test_accuracy="final"'])
    splits = data.load(exp.data, exp.experiment.seed)
    arch = Architecture.of(exp, splits.input_shape, splits.num_classes)
    run = RunDir.create(exp, root / f"{network}-{population}")
    evaluator = Instant()
    try:
        evo = Evolution(exp, arch, evaluator, run)
        state = evo.run(generations=0)
        evo._finish_checkpoint()
        base = rss_mb()
        evaluator.seconds = 0.0
        start = time.perf_counter()
        state = evo.run(state)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        run.release()
    ckpts = sorted(run.checkpoints.glob("gen-*"))
    sizes = {p.stem: p.stat().st_size for p in (run.checkpoints / "packs").glob("*.pack")}
    seen: set[str] = set()
    written, dense = [], []
    for c in ckpts:  # a checkpoint writes its own files and the packs no earlier one refers to
        manifest = json.loads((c / "MANIFEST.json").read_text())
        packs = set(manifest["packs"])
        own = sum(f.stat().st_size for f in c.iterdir())
        written.append(own + sum(sizes[p] for p in packs - seen))
        seen |= packs
        st = json.loads((c / "state.json").read_text())
        dense.append(own + len(st["individuals"]) * per_individual_dense(arch))
    active = int(np.mean([g.active_params() for g in state.population]))
    offspring = exp.n_offspring * generations
    return {"network": network, "parameters": arch.parameters, "population": population,
            "generations": generations, "active_weights": active,
            "driver_s_per_individual": (wall - evaluator.seconds) / offspring,
            "peak_mb": peak - base, "bytes_per_ind_x_active": (peak - base) * 2**20 / ((population + exp.n_offspring)
                                                                                       * active),
            "ckpt_mb_per_gen": sum(written[1:]) / max(1, len(written) - 1) / 1e6,
            "dense_mb_per_gen": sum(dense[1:]) / max(1, len(dense) - 1) / 1e6}


def per_individual_dense(arch) -> int:
    """Bytes of one individual in a format-1 checkpoint: float32 weights, one byte per mask entry."""
    return sum(t.size * (4 if t.dtype.kind == "f" else t.itemsize) for t in arch.template.values()) + \
        sum(arch.template[n].size for n in arch.maskable)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--populations", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=6.0,
                    help="skip a case whose genomes alone (dense in memory) would need more than this")
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # network population: run one case here
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(args.one[0], int(args.one[1]), args.generations, Path(tmp))))
        return
    rows = []
    for network in args.networks:
        for pop in args.populations:
            need = _genome_gb(network, pop)
            if need > args.max_gb:
                rows.append({"network": network, "population": pop, "skipped":
                             f"genomes need ~{need:.0f} GB in memory (dense), over --max-gb {args.max_gb:g}"})
                print(f"{network} {pop}: skipped ({rows[-1]['skipped']})", file=sys.stderr)
                continue
            load, ref = os.getloadavg()[0], reference_seconds()
            out = subprocess.run([sys.executable, __file__, "--one", network, str(pop),
                                  "--generations", str(args.generations)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(f"{network} {pop} failed:\n{out.stderr[-3000:]}")
            # The machine's 1-minute load average before and after the case: on a shared machine
            # the driver's wall time is only comparable between runs at similar loads.
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]),
                         "load_average": [round(load, 2), round(os.getloadavg()[0], 2)], "reference_s": round(ref, 3)})
            print(f"{network} {pop}: {rows[-1]}", file=sys.stderr)
    text = table(rows, args.generations)
    print(text)
    import harness  # benchmarks/, the script's own folder, is on sys.path
    harness.write(args.json, {"rows": rows, "table": text, **harness.stamp("neuroevo_sparse.launch")})


def reference_seconds() -> float:
    """The machine's speed at Python, now: seconds for 10M additions in a loop."""
    start, total = time.perf_counter(), 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def _genome_gb(network: str, population: int) -> float:
    weights = {"quickstart": 17_024, "large": 1_052_416}[network]
    return 2 * population * weights * 5 / 1e9  # population + offspring, float32 weight + bool mask


def table(rows: list[dict], generations: int) -> str:
    lines = [f"Driver cost per generation (instant evaluator, {generations} generations, survival plus, "
             f"offspring = population)",
             f"{'network':>10} {'weights':>9} {'active':>8} {'population':>10} {'driver ms/ind':>13} {'peak MB':>8} "
             f"{'B/(ind x act)':>13} {'ckpt MB/gen':>11} {'dense MB/gen':>12} {'fewer':>6} {'load':>11} {'ref s':>6}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['network']:>10} {'':>9} {'':>8} {r['population']:>10}  skipped: {r['skipped']}")
            continue
        lines.append(f"{r['network']:>10} {r['parameters']:>9,} {r['active_weights']:>8,} {r['population']:>10} "
                     f"{1e3 * r['driver_s_per_individual']:>13.3f} {r['peak_mb']:>8.0f} "
                     f"{r['bytes_per_ind_x_active']:>13.1f} {r['ckpt_mb_per_gen']:>11.2f} "
                     f"{r['dense_mb_per_gen']:>12.2f} {r['dense_mb_per_gen'] / max(r['ckpt_mb_per_gen'], 1e-9):>5.1f}x"
                     + (" {:>11}".format("{:.2f}-{:.2f}".format(*r["load_average"])) if "load_average" in r else "")
                     + (f" {r['reference_s']:>6.2f}" if "reference_s" in r else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
