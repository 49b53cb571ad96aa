"""Metadata lives in setup.cfg; this file only adds the optional C extensions.

`optional=True`: on a machine without a C compiler the install still succeeds;
neuroevo_sparse.train.kernels then falls back to torch's CSR ops (the log and `neuroevo_sparse.train.kernels
.status()` say which is used), and neuroevo_sparse.draws to numpy's `choice` (the same draws)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("neuroevo_sparse.train._kernels", ["neuroevo_sparse/train/_kernels.c"], optional=True,
              # No fused multiply-add: the AVX2 and portable clones then give bit-identical results.
              extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-Wno-psabi"]),
    # numpy's draws without replacement at C speed; without it, numpy's own (the same draws).
    Extension("neuroevo_sparse._draws", ["neuroevo_sparse/_draws.c"], optional=True,
              extra_compile_args=["-O2", "-std=c11"]),
])
