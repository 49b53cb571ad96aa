"""Metadata lives in setup.cfg; this file only adds the optional C kernels.

`optional=True`: on a machine without a C compiler the install still succeeds, and
neuroevo_sparse.train.kernels falls back to torch's CSR ops (the log and `neuroevo_sparse.train.kernels
.status()` say which is used)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "neuroevo_sparse.train._kernels", ["neuroevo_sparse/train/_kernels.c"], optional=True,
    # No fused multiply-add: the AVX2 and portable clones then give bit-identical results.
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-Wno-psabi"])])
