"""A whole evolution, end to end: the framework against the hand-written GA on the same work.

The work is benchmarks/reference_ga.py's (population 16, 8 generations of 16 offspring,
Fashion-MNIST MLP 784-300-100-10, 94 SGD steps of 128 per evaluation, a 10k validation
split), at several uniform densities and seeds. Per (density, seed), interleaved (the order
of the two alternates from one pair to the next, so a drifting machine favours neither):

  reference   `python benchmarks/reference_ga.py`: one process, every core to torch
  framework   `neuroevo run benchmarks/experiments/ga_work.toml` with its defaults (backend
              "auto": in this process on one machine, all cores), the density and seed set with --set

Measured from outside each process: whole-process wall time (interpreter start, imports,
data, Ray, the GA, writing results), and the time at which its best validation accuracy first
reached the reference's final best (time to accuracy; read from the framework's per-generation
log lines and the reference's own curve). Accuracy: the test accuracy of the best individual
by validation. Useful GFLOP/s: multiply-adds on active weights only (training: 3 x forward;
validation: 1 x forward), over the whole-process time, next to the machine's dense matmul
peak. And one dense network of the same shape trained for as many samples as the GA
(`reference_ga.py --dense`): the distance to dense.

    python benchmarks/end_to_end.py                          # 4 densities x 3 seeds (~40 min on 2 cores)
    python benchmarks/end_to_end.py --densities 0.1 --seeds 0
    python benchmarks/end_to_end.py --report-only            # the table from the stored JSON
    python benchmarks/end_to_end.py --paths                  # also each fixed training path: is auto the fastest?
    python benchmarks/end_to_end.py --paths-only --repeats 3 # only that, with repeats, no reference
    python benchmarks/end_to_end.py --set 'resources.backend="ray"'     # a local Ray started for each run
    python benchmarks/end_to_end.py --tta-generations 12     # also time to accuracy with no stop at 8
    python benchmarks/end_to_end.py --halving 0.25 0.5       # also time to accuracy with successive halving

Time to accuracy within the same work stops the framework where the reference stops, so a
framework run that is level with the reference at generation 8 reaches its best about half
the time, however fast it is. `--tta-generations N` also runs the framework, per pair, for up
to N generations (the first 8 are the same run's, the same seed) and times it to the
reference's final best as it goes: what "time to accuracy" means when nothing stops the run.
`--halving AT KEEP` times such a run with successive halving (evolution.halving_at,
evolution.halving_keep), an option that changes results: its table is time to accuracy only,
apart from the same-work numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "experiments" / "ga_work.toml"
OUT = ROOT / "benchmarks" / "results" / "end_to_end.json"
SIZES = [784, 300, 100, 10]
GEN_LINE = re.compile(r"gen (\d+)/(\d+):.*val acc ([0-9.]+)")
MEASURED = re.compile(r"training path: .*measured in ([0-9.]+) s")
CHOSEN = re.compile(r"training path: (.+?) \(")  # auto's choice, measured or cached


def run_reference(density: float, seed: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reference_ga.py"), "--density",
                          str(density), "--seed", str(seed)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # The curve's times count from the script's first line; the interpreter's start-up before it
    # is added so that both systems are timed from the same moment.
    lag = wall - r["wall_seconds"]
    return {"wall_s": wall, "val": r["best_val"], "test": r["test_of_best_val"], "evaluations": r["evaluations"],
            "curve": [(t + lag, v) for t, v in r["curve"]]}


def run_framework(density: float, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "neuroevo_sparse.cli", "run", str(WORK), "--run-dir", f"{tmp}/run",
               "--set", f"sparsity.density={density}", "--set", f"experiment.seed={seed}",
               "--set", 'output.progress="log"'] + [a for s in extra for a in ("--set", s)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        curve, log = [], []
        for line in proc.stdout:
            log.append(line)
            if m := GEN_LINE.search(line):
                curve.append((time.perf_counter() - start, float(m.group(3))))
        if proc.wait() != 0:
            raise RuntimeError(f"framework d={density} seed {seed} failed:\n{''.join(log[-40:])}")
        wall = time.perf_counter() - start
        measured = next((float(m.group(1)) for line in log if (m := MEASURED.search(line))), None)
        chosen = next((m.group(1) for line in log if (m := CHOSEN.search(line))), None)
        import pandas as pd
        h = pd.read_parquet(f"{tmp}/run/history")
    e = h[h.evaluated]
    best = e.sort_values(["val_accuracy", "individual_id"], ascending=[False, True]).iloc[0]
    # With output.test_accuracy = "final" the test split is scored in the last generation only:
    # the best individual's test accuracy is on its rows there, not on the row of its training.
    test = h[h.individual_id == best.individual_id].test_accuracy.dropna()
    return {"wall_s": wall, "val": float(best.val_accuracy), "test": float(test.iloc[0]) if len(test) else float("nan"),
            "evaluations": int(len(e)), "train_s": float(e.train_seconds.sum()), "curve": curve,
            "measured_paths_s": measured, "path": chosen}


RULES = "auto by the rules"
AGAIN = "auto, cached"
# The fixed training paths `auto` chooses among (training.vectorise x training.sparse_kernels
# x training.cpu_kernels, and training.vectorise_group; the native kernels serve vectorised
# groups only), and auto's choice by the rules instead of by measurement. First, auto again: the
# pair's own run may have measured the paths first; this one finds its choice cached.
PATHS = {AGAIN: [],
         "one-by-one, sparse": ['training.vectorise="off"', 'training.sparse_kernels="on"'],
         "one-by-one, dense-masked": ['training.vectorise="off"', 'training.sparse_kernels="off"'],
         "vectorised, sparse, native": ['training.vectorise="on"', 'training.sparse_kernels="on"',
                                        'training.cpu_kernels="native"'],
         # a fixed group size, against "auto"'s one group per slot
         "vectorised, sparse, native, groups of 4": ['training.vectorise="on"', 'training.sparse_kernels="on"',
                                                     'training.cpu_kernels="native"', 'training.vectorise_group=4'],
         "vectorised, sparse, torch": ['training.vectorise="on"', 'training.sparse_kernels="on"',
                                       'training.cpu_kernels="torch"'],
         "vectorised, dense-masked": ['training.vectorise="on"', 'training.sparse_kernels="off"'],
         # what "auto" chooses by the thresholds alone, without measuring
         RULES: ['training.auto_by="rules"']}


def compare_paths(densities: list[float], seed: int, sets: list[str], repeats: int) -> list[dict]:
    """Auto against every fixed path, the same work (one seed) repeated: is its choice the
    fastest? The first round runs auto cold (it measures the paths; the cache is fresh per
    density) and every fixed path; later rounds run auto cached and the contenders only (the
    fixed paths within 1.25x of the first round's best: the others cannot be the best), in an
    order reversed from one round to the next, so a drifting machine favours none."""
    out = []
    for d in densities:
        os.environ["NEUROEVO_SPARSE_CACHE"] = tempfile.mkdtemp(prefix=f"end-to-end-plans-{d:g}-")
        walls: dict[str, list[float]] = {}
        chosen = []

        def timed(name: str, tag: str) -> None:
            run = run_framework(d, seed, sets + PATHS[name])
            walls.setdefault(name, []).append(run["wall_s"])
            if name == AGAIN:
                chosen.append(run["path"])
            print(f"d={d:g} {tag}{name}: {run['wall_s']:.1f} s", flush=True)

        cold = run_framework(d, seed, sets)
        print(f"d={d:g} auto, cold: {cold['wall_s']:.1f} s ({cold['path']})", flush=True)
        fixed = [n for n in PATHS if n not in (AGAIN, RULES)]
        for name in fixed:
            timed(name, "")
        best = min(walls[n][0] for n in fixed)
        contenders = [AGAIN] + [n for n in fixed if walls[n][0] <= 1.25 * best]
        for r in range(repeats):
            for name in (contenders if r % 2 == 0 else contenders[::-1]):
                timed(name, f"round {r + 1} ")
        out.append({"density": d, "seed": seed, "cold": {"wall_s": cold["wall_s"], "path": cold["path"],
                                                         "measured_paths_s": cold["measured_paths_s"]},
                    "cached_paths": chosen, "walls": walls})
    return out


def paths_table(rows: list[dict], sets: list[str]) -> str:
    lines = [f"Auto against the fixed training paths ({described(sets)}), whole-process wall s, medians of "
             f"repeats of the same work (seed {rows[0]['seed']})",
             f"{'density':>7} {'auto cold':>9} {'auto cached':>11} {'best fixed path':>42} {'cached / best':>13} "
             f"{'cold / best':>11}  auto's choice"]
    for r in rows:
        med = {n: statistics.median(w) for n, w in r["walls"].items()}
        fixed = {n: m for n, m in med.items() if n != AGAIN}
        best = min(fixed, key=fixed.__getitem__)
        label = f"{best} ({fixed[best]:.1f}, n={len(r['walls'][best])})"
        choice = sorted(set(filter(None, [r["cold"]["path"], *r["cached_paths"]])))
        lines.append(f"{r['density']:>7.0%} {r['cold']['wall_s']:>9.1f} {med[AGAIN]:>11.1f} {label:>42} "
                     f"{med[AGAIN] / fixed[best]:>12.2f}x {r['cold']['wall_s'] / fixed[best]:>10.2f}x  "
                     f"{' / '.join(choice)}")
    lines.append("auto cached: auto's runs after the first, which find its measured choice cached; auto cold: the "
                 "first, which measures the paths (one run); fixed paths above 1.25x of the first round's best "
                 "ran once")
    return "\n".join(lines)


def run_dense(seed: int) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reference_ga.py"), "--dense",
                          "--seed", str(seed)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reached(curve: list, target: float) -> int | None:
    """The first generation of `curve` whose best validation accuracy is `target` or more."""
    return next((i for i, (_, v) in enumerate(curve) if v >= target - 1e-12), None)


def time_to(curve: list, target: float) -> float | None:
    i = reached(curve, target)
    return None if i is None else curve[i][0]


def time_to_accuracy(density: float, seed: int, sets: list[str], generations: int, target: float,
                     reference_seconds: float) -> dict:
    """The framework run on past the work, up to `generations`: when it first reached `target`."""
    run = run_framework(density, seed, sets + [f"evolution.generations={generations}"])
    return {"generations": generations, "reference_seconds": reference_seconds,
            "seconds": time_to(run["curve"], target), "generation": reached(run["curve"], target),
            "wall_s": run["wall_s"], "curve": run["curve"]}


def useful_gflop(density: float, evaluations: int, steps: int = 94, batch: int = 128, val: int = 10_000) -> float:
    active = sum(round(density * a * b) for a, b in zip(SIZES, SIZES[1:]))
    return evaluations * 2 * active * (3 * steps * batch + val) / 1e9


def dense_peak_gflops() -> float:
    """The best of a few large float32 matmuls with every core: the machine's dense limit."""
    import torch
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy import stats
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 and len(b) > 1 else float("nan")


def described(sets: list[str]) -> str:
    return "defaults" + "".join(f", {s}" for s in sets) if sets else "defaults: backend auto, in this process"


def summarise(runs: list[dict], dense: list[dict], peak: float, sets: list[str]) -> str:
    how = described(sets)
    lines = [f"End to end: the framework ({how}) against the hand-written GA, same work; "
             f"medians over seeds ({harness.described()}, dense matmul peak {peak:.1f} GFLOP/s)",
             f"{'density':>7} {'ref wall s':>10} {'fw wall s':>9} {'fw/ref':>6} {'ref GF/s':>8} {'fw GF/s':>7} "
             f"{'time to ref acc':>15} {'ref test':>15} {'fw test':>15} {'fw - ref':>8} {'p':>5}"]
    for d in sorted({r["density"] for r in runs}):
        rs = [r for r in runs if r["density"] == d]
        ref_wall = statistics.median(r["reference"]["wall_s"] for r in rs)
        fw_wall = statistics.median(r["framework"]["wall_s"] for r in rs)
        gf = useful_gflop(d, rs[0]["reference"]["evaluations"])
        ttas = [r["tta_ratio"] for r in rs if r["tta_ratio"] is not None]
        tta = f"{statistics.median(ttas):.2f}x ({len(ttas)}/{len(rs)})" if ttas else "never"
        ref_t = [r["reference"]["test"] for r in rs]
        fw_t = [r["framework"]["test"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(f"{d:>7.0%} {ref_wall:>10.1f} {fw_wall:>9.1f} {fw_wall / ref_wall:>5.2f}x {gf / ref_wall:>8.2f} "
                     f"{gf / fw_wall:>7.2f} {tta:>15} {statistics.mean(ref_t):.4f}±{sd(ref_t):.4f} "
                     f"{statistics.mean(fw_t):.4f}±{sd(fw_t):.4f} {statistics.mean(fw_t) - statistics.mean(ref_t):>+8.4f} "
                     f"{welch_p(fw_t, ref_t):>5.2f}")
    cold = [r["framework"]["measured_paths_s"] for r in runs if r["framework"].get("measured_paths_s") is not None]
    if cold:
        lines.append(f"{len(cold)} of {len(runs)} framework runs above measured the training paths first "
                     f"(training.auto_by = \"measurement\"; the others found the choice cached): "
                     f"{', '.join(f'{t:.1f}' for t in cold)} s of their wall time")
    with_paths = [r for r in runs if r.get("paths")]
    if with_paths:
        names = [n for n in with_paths[0]["paths"] if all(n in r["paths"] for r in with_paths)]  # as stored
        lines += ["", "Training paths, framework whole-process wall s (medians over seeds); auto against the best "
                  "fixed path (auto: the pair's own run, which may have measured the paths first)",
                  f"{'density':>7} {'auto':>6} " + " ".join(f"{n:>26}" for n in names)
                  + f" {'auto / best':>11}" + (f" {'cached / best':>13}" if AGAIN in names else "")]
        for d in sorted({r["density"] for r in with_paths}):
            rs = [r for r in with_paths if r["density"] == d]
            auto = statistics.median(r["framework"]["wall_s"] for r in rs)
            wall = {n: statistics.median(r["paths"][n]["wall_s"] for r in rs) for n in names}
            best = min(w for n, w in wall.items() if n not in (RULES, AGAIN))  # of the fixed paths
            lines.append(f"{d:>7.0%} {auto:>6.1f} " + " ".join(f"{wall[n]:>26.1f}" for n in names)
                         + f" {auto / best:>10.2f}x" + (f" {wall[AGAIN] / best:>12.2f}x" if AGAIN in names else ""))
    if dense:
        t = [r["test"] for r in dense]
        lines.append(f"dense 784-300-100-10, same samples as one GA run ({dense[0]['samples']:,}): test "
                     f"{statistics.mean(t):.4f} ± {statistics.stdev(t) if len(t) > 1 else 0:.4f} "
                     f"(seeds {', '.join(str(r['seed']) for r in dense)})")
    lines += tta_table(runs, "tta_long", "")
    halving = next((r["halving"] for r in runs if "halving" in r), None)
    if halving:
        lines += tta_table(runs, "halving", f", with successive halving (evolution.halving_at = {halving['at']:g}, "
                           f"halving_keep = {halving['keep']:g}: an option that changes results, so not the same work)")
    lines.append("time to ref acc: framework's time to the reference's final best validation accuracy over the "
                 "reference's time to it (runs that reached it / runs); test: best-by-validation, mean ± sd; "
                 "p: Welch's t-test of the two means (two-sided)")
    return "\n".join(lines)


def tta_table(runs: list[dict], key: str, how: str) -> list[str]:
    """The time-to-accuracy table of the framework's runs stored under `key` (they run up to
    some generations, past the work, and are timed to the reference's final best as they go)."""
    long = [r for r in runs if key in r]
    if not long:
        return []
    gens = long[0][key]["generations"]
    lines = ["", f"Time to the reference's final best validation accuracy, the framework running up to {gens} "
             f"generations{how} (medians over the runs that reached it)",
             f"{'density':>7} {'ref s':>6} {'fw s':>6} {'fw/ref':>11} {'fw generation':>13} {'fw best val':>11}"]
    for d in sorted({r["density"] for r in long}):
        rs = [r for r in long if r["density"] == d]
        best = statistics.median(max(v for _, v in r[key]["curve"]) for r in rs)
        hit = [r for r in rs if r[key]["seconds"] is not None]
        if not hit:
            lines.append(f"{d:>7.0%} {'':>6} {'never':>6} {f'(0/{len(rs)})':>11} {'':>13} {best:>11.4f}")
            continue
        ratio = statistics.median(r[key]["seconds"] / r[key]["reference_seconds"] for r in hit)
        lines.append(f"{d:>7.0%} {statistics.median(r[key]['reference_seconds'] for r in hit):>6.1f} "
                     f"{statistics.median(r[key]['seconds'] for r in hit):>6.1f} "
                     f"{f'{ratio:.2f}x ({len(hit)}/{len(rs)})':>11} "
                     f"{statistics.median(r[key]['generation'] for r in hit):>13g} {best:>11.4f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", nargs="+", type=float, default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for the framework's runs (e.g. training.vectorise=\"off\")")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense network")
    ap.add_argument("--paths", action="store_true",
                    help="also run the framework on each fixed training path (is auto's choice the fastest?)")
    ap.add_argument("--paths-only", action="store_true",
                    help="only auto against each fixed path, with --repeats of the same work (the first --seeds)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of --paths-only (default 3)")
    ap.add_argument("--tta-generations", type=int, metavar="N",
                    help="also run the framework for up to N generations per pair, for time to accuracy")
    ap.add_argument("--halving", nargs=2, type=float, metavar=("AT", "KEEP"),
                    help="also time, per pair, a run of up to --tta-generations (default 12) generations with "
                         "evolution.halving_at = AT, halving_keep = KEEP, to the reference's final best")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    if args.report_only:
        try:
            stored = json.loads(args.out.read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {args.out} ({e}): run the benchmark without --report-only first")
        try:
            stored["table"] = (paths_table(stored["paths"], stored["sets"]) if "paths" in stored else
                               summarise(stored["runs"], stored["dense"], stored["peak_gflops"], stored.get("sets", [])))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
            sys.exit(f"error: {args.out} is not this benchmark's output ({type(e).__name__}: {e}); rerun the "
                     f"benchmark that wrote it, without --report-only")
        args.out.write_text(json.dumps(stored, indent=1))
        print(stored["table"])
        return
    if args.paths_only:
        rows = compare_paths(args.densities, args.seeds[0], args.sets, args.repeats)
        text = paths_table(rows, args.sets)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python benchmarks/end_to_end.py " + " ".join(sys.argv[1:]),
                                        "machine": platform.machine(), "cpu": harness.cpu(), "sets": args.sets,
                                        "paths": rows,
                                        "table": text}, indent=1))
        return
    # The framework's measured training paths are cached for this benchmark only: the first run
    # at each density measures them (and pays for it), later ones find them, as a user's would.
    os.environ.setdefault("NEUROEVO_SPARSE_CACHE", tempfile.mkdtemp(prefix="end-to-end-plans-"))
    peak = dense_peak_gflops()
    runs, dense, i = [], [], 0
    for seed in args.seeds:
        for d in args.densities:
            pair = {}
            for who in (("reference", "framework") if i % 2 == 0 else ("framework", "reference")):
                pair[who] = run_reference(d, seed) if who == "reference" else run_framework(d, seed, args.sets)
            i += 1
            target = pair["reference"]["val"]
            ref_t, fw_t = time_to(pair["reference"]["curve"], target), time_to(pair["framework"]["curve"], target)
            if args.paths:
                pair["paths"] = {name: run_framework(d, seed, args.sets + sets) for name, sets in PATHS.items()}
            runs.append({"density": d, "seed": seed, **pair, "tta_ratio": None if fw_t is None else fw_t / ref_t})
            if args.tta_generations:
                runs[-1]["tta_long"] = time_to_accuracy(d, seed, args.sets, args.tta_generations, target, ref_t)
            if args.halving:
                at, keep = args.halving
                halving = [f"evolution.halving_at={at}", f"evolution.halving_keep={keep}"]
                runs[-1]["halving"] = {"at": at, "keep": keep, **time_to_accuracy(
                    d, seed, args.sets + halving, args.tta_generations or 12, target, ref_t)}
            print(f"d={d:g} seed {seed}: reference {pair['reference']['wall_s']:.1f} s test "
                  f"{pair['reference']['test']:.4f} | framework {pair['framework']['wall_s']:.1f} s test "
                  f"{pair['framework']['test']:.4f}", flush=True)
        if not args.no_dense:
            dense.append(run_dense(seed))
    text = summarise(runs, dense, peak, args.sets)
    print(text)
    harness.write(args.out, {"command": "python benchmarks/end_to_end.py " + " ".join(sys.argv[1:]),
                             "machine": platform.machine(), "cpu": harness.cpu(), "peak_gflops": peak,
                             "sets": args.sets, "runs": runs, "dense": dense, "table": text,
                             **harness.stamp("neuroevo_sparse.launch")})


if __name__ == "__main__":
    main()
