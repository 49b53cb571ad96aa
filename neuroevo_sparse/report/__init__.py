"""report: what a user reads out of a run, during it or after.

Owns: the tables of `neuroevo inspect` (tables.py), the figures of `neuroevo plot`
(plots.py), networks out of a run (export.py: `neuroevo export`, `Run.module`) and
per-generation tracking to TensorBoard and MLflow (tracking.py).

May import: evolution (for the callback's GenerationInfo), store, problem, config. Reading a run
never trains anything.
"""
