"""The sparse products of one vectorised group, on the C kernels against torch's CSR ops.

A group of K individuals of the Fashion-MNIST MLP's layers (784x300, 300x100, 100x10), their
masks on the diagonal of one block matrix, activations feature-major (features x batch), one
thread (what a Ray worker gets by default). Per layer, density and path, the median time of:

  forward       W h                      (K*out, B)
  input grad    W^T dy                   (K*in, B)
  weight grad   (dy h^T) at the active positions only
  dense         the same three products as batched dense matmuls of the masked weights

next to the useful GFLOP/s (2 x active weights x batch per product).

    python benchmarks/kernels.py                         # writes benchmarks/results/kernels.json
    python benchmarks/kernels.py --densities 0.02 0.1 --group 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)
from neuroevo_sparse.train import kernels  # noqa: E402
from neuroevo_sparse.train.sparse import Pattern, _sampled  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
LAYERS = [(300, 784), (100, 300), (10, 100)]


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` calls, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(out_f: int, in_f: int, density: float, k: int, batch: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(k, out_f, in_f, generator=g) < density
    p = Pattern.block_diagonal(masks)
    values = torch.randn(len(p.rows), generator=g)
    vt = values[p.t_perm].contiguous()
    h, dy = torch.randn(k * in_f, batch, generator=g), torch.randn(k * out_f, batch, generator=g)
    w = torch.randn(k, out_f, in_f, generator=g) * masks
    hk, dyk = h.view(k, in_f, batch), dy.view(k, out_f, batch)
    flop = 2 * len(values) * batch
    row: dict = {"layer": f"{out_f}x{in_f}", "density": density, "group": k, "batch": batch,
                 "active": len(values)}
    paths = {"torch": {"forward": lambda: p.csr(values) @ h, "input grad": lambda: p.csr_t(values) @ dy,
                       "weight grad": lambda: _sampled(dy, h.t(), p)},
             "dense": {"forward": lambda: torch.bmm(w, hk), "input grad": lambda: torch.bmm(w.transpose(1, 2), dyk),
                       "weight grad": lambda: torch.bmm(dyk, hk.transpose(1, 2)) * masks}}
    if kernels.available():
        paths["native"] = {"forward": lambda: kernels.spmm(p.crow, p.cols, values, h, k * out_f),
                           "input grad": lambda: kernels.spmm(p.t_crow, p.t_col, vt, dy, k * in_f),
                           "weight grad": lambda: kernels.sampled(p.crow, p.cols, dy, h)}
    for path, ops in paths.items():
        for op, fn in ops.items():
            s = timed(fn, repeats)
            row[f"{path} {op} us"] = s * 1e6
            row[f"{path} {op} GF/s"] = flop / s / 1e9
    return row


def table(rows: list[dict]) -> str:
    paths = [p for p in ("native", "torch", "dense") if f"{p} forward us" in rows[0]]
    ops = ("forward", "input grad", "weight grad")
    head = f"{'layer':>8} {'dens':>5} {'active':>7} " + " ".join(
        f"{p[:6] + ' ' + o.split()[0][:5]:>14}" for p in paths for o in ops)
    lines = [head]
    for r in rows:
        lines.append(f"{r['layer']:>8} {r['density']:>5.0%} {r['active']:>7} " + " ".join(
            f"{r[f'{p} {o} us']:>8.0f} {r[f'{p} {o} GF/s']:>5.1f}" for p in paths for o in ops))
    lines.append("each cell: median microseconds, useful GFLOP/s (2 x active weights x batch); one thread")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", nargs="+", type=float, default=[0.02, 0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--group", type=int, default=4, help="individuals per vectorised group (training.vectorise_group)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(o, i, d, args.group, args.batch, args.repeats) for o, i in LAYERS for d in args.densities]
    text = table(rows)
    print(f"kernels: {kernels.status()}; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(text)
    harness.write(args.out, {"kernels": kernels.status(), "rows": rows, "table": text,
                             **harness.stamp("neuroevo_sparse.train.kernels")})


if __name__ == "__main__":
    main()
