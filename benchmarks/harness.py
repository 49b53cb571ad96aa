"""What every benchmark shares: the machine it ran on, timing, statistics, and the stamp that
says which code a stored result was made with.

A stored result is never trusted or refused silently. `stamp(entry)` records the package
version, the hash of the package code the benchmark's entry point imports (cache_key.py:
transitively, the C kernels' source included), the machine and the date; `staleness(result,
entry)` compares a stored stamp with the present code and says, in one line, what differs.
Report pages print that line beside the numbers instead of failing anything: a stored result
must never stand in the way of a change to the code, and refreshing one is a benchmark run,
made when the numbers matter.

    import harness
    result = {"rows": [...], **harness.stamp("neuroevo_sparse.launch")}
    harness.write(path, result)
    line = harness.staleness(harness.read(path), "neuroevo_sparse.launch")  # None: current
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import cache_key  # the same folder: benchmarks/ is on sys.path when a benchmark runs

VECTORS = {"avx512": "AVX-512", "avx2": "AVX2"}


# ----------------------------------------------------------------------------- machine

def cpu() -> dict:
    """{"model": ..., "vectors": "avx512" | "avx2" | "", "cores": n}, from /proc/cpuinfo where
    there is one (Linux), else what `platform` knows. Both the model and the widest vector
    extension decide timings and bits (torch's dense matmul uses AVX-512 where it exists), so
    every stored benchmark names them."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if model and flags:
                break
    except OSError:
        pass
    vectors = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    return {"model": model, "vectors": vectors, "cores": os.cpu_count()}


def label(cpu: dict) -> str:
    """'Intel(R) Xeon(R) Processor, AVX-512' for a `cpu()` record, stored or fresh."""
    return ", ".join(filter(None, [str(cpu.get("model", "")), VECTORS.get(cpu.get("vectors", ""))]))


def described() -> str:
    """One line for a table's header: 'x86_64, Intel(R) Xeon(R) Processor, AVX-512, 2 cores'."""
    c = cpu()
    return ", ".join(filter(None, [platform.machine(), label(c), f"{c['cores']} cores"]))


def machine() -> dict:
    import torch
    return {"machine": platform.machine(), "cpu": cpu(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ----------------------------------------------------------------------------- statistics

def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Welch's t-test (unequal variances), two-sided; NaN when either side has one value, or
    when both are constant and equal (no evidence either way)."""
    from scipy import stats
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if not math.isnan(p) else (1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0)


# ----------------------------------------------------------------------------- timing

def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each contender, `repeats` rounds, the order rotated every round so that
    a machine that drifts (other load, thermal state) favours none of them. Report medians."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            start = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- stored results

def stamp(entry: str) -> dict:
    """What a result was made with: the command, package version, code hash of `entry`'s
    closure, machine and date. Stored beside the numbers."""
    import neuroevo_sparse
    return {"made_with": {"command": "python " + " ".join([_relative(sys.argv[0]), *sys.argv[1:]]),
                          "version": neuroevo_sparse.__version__, "entry": entry,
                          "code": cache_key.code_hash(entry), "machine": machine(),
                          "date": time.strftime("%Y-%m-%d")}}


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return path


def staleness(result: dict, entry: str | None = None) -> str | None:
    """None if `result` was made by the present code; else one line saying what it was made
    with and the command that refreshes it."""
    made = result.get("made_with")
    if not isinstance(made, dict):
        return "made before results were stamped with the code that made them: its code is unknown"
    import neuroevo_sparse
    entry = entry or made.get("entry")
    why = []
    if made.get("version") != neuroevo_sparse.__version__:
        why.append(f"version {made.get('version')} (now {neuroevo_sparse.__version__})")
    if entry and made.get("code") != cache_key.code_hash(entry):
        why.append(f"code {made.get('code')} (now {cache_key.code_hash(entry)})")
    if not why:
        return None
    return f"stale: made {made.get('date')} with {', '.join(why)}; refresh with `{made.get('command')}`"


def write(path: Path, result: dict) -> None:
    """Atomically: a benchmark killed while writing leaves the previous result whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def read(path: Path) -> dict:
    return json.loads(path.read_text())
