"""train: the training engine, everything a worker runs.

Owns: the plain data that crosses to a worker (jobs.py: TrainSpec, TrainJob, TrainResult,
Resume), which path trains a run (paths.py: vectorised or not, sparse layers, kernels, group
size; the measured `Plan`), the training core (core.py: seeded batches, the masked step loop,
divergence, evaluation), vectorised groups (vectorised.py), truly sparse layers (sparse.py)
and their C kernels (kernels.py, _kernels.c), SGD and Adam (optim.py), the measurement of
paths at a run's start (calibration.py), what a worker does with a group of jobs
(worker.py), and one network trained with one structure rule (single.py, `neuroevo train`).

May import: topology, problem, config, seeds. jobs.py imports nothing of the package but
config (and models for types), so a worker unpickling a job imports no more than it needs.
"""
