"""What a measurement ran on, beyond `platform.machine()`: the CPU's model and the widest
vector extension it has. Both decide timings (torch's dense matmul uses AVX-512 where it
exists, the C kernels have an AVX2 clone only) and bits (stored runs reproduce exactly only
on a CPU like the one that made them), so every stored benchmark names them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

VECTORS = {"avx512": "AVX-512", "avx2": "AVX2"}


def cpu() -> dict:
    """{"model": ..., "vectors": "avx512" | "avx2" | "", "cores": n}, from /proc/cpuinfo where
    there is one (Linux), else what `platform` knows."""
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
