"""What crosses the boundary between the driver and a worker: plain data only.

No DEAP object, no Genome, no torch module: numpy arrays, numbers, strings and frozen config
dataclasses, which pickle the same way in every process (DEAP's creator classes do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import Experiment, ModelConfig, TrainingConfig


@dataclass(frozen=True)
class TrainSpec:
    """Identical for every job of a run: how to build the model and train it."""

    model: ModelConfig
    training: TrainingConfig
    input_shape: tuple[int, ...]
    num_classes: int
    torch_threads: int = 1
    time_limit_s: float | None = None  # a job training longer is stopped and recorded as failed
    # Train groups of `training.vectorise_group` jobs in one vmapped pass. Resolved once on
    # the driver (never per worker) so that every worker does the same arithmetic.
    vectorise: bool = False

    @classmethod
    def of(cls, exp: Experiment, input_shape: tuple[int, ...], num_classes: int) -> "TrainSpec":
        return cls(exp.model, exp.training, tuple(input_shape), num_classes,
                   exp.resources.torch_threads, exp.resources.job_timeout_s,
                   _vectorise(exp, tuple(input_shape), num_classes))


# Below this many parameters a CPU step is dominated by per-call overhead, which batching
# removes (5x on the quickstart MLP); above it a dense step is bound by the matmuls and
# batching them gains little on a CPU. Measured by benchmarks/throughput.py.
VECTORISE_CPU_MAX_PARAMS = 100_000


def _vectorise(exp: Experiment, input_shape: tuple[int, ...], num_classes: int) -> bool:
    """"auto": MLPs on a GPU; on a CPU, small MLPs and MLPs with a layer that starts truly
    sparse (its block-diagonal sparse matmul over the group beats one sparse matmul per
    individual, 1.3x at 784-300-100-10 / 10%); never CNNs (grouped convolutions are slower)."""
    mode = exp.training.vectorise
    if mode != "auto":
        return mode == "on"
    if exp.model.kind != "mlp":
        return False
    from . import genome, models  # torch only when a spec is made, never when jobs are unpickled
    model = models.build(exp.model, input_shape, num_classes)
    params = sum(p.numel() for p in model.parameters())
    info = models.layer_info(model, input_shape)
    names = models.maskable(model, exp.sparsity, exp.model.mask_biases)
    density = genome.layer_densities(info, names, exp.sparsity.density, exp.sparsity.init)
    cfg = exp.training
    sparse = cfg.sparse_kernels == "on" or (cfg.sparse_kernels == "auto" and any(
        len(info[n].shape) == 2 and info[n].size >= cfg.sparse_min_size and density[n] < cfg.sparse_below
        for n in names))
    return exp.resources.gpus_per_job > 0 or params <= VECTORISE_CPU_MAX_PARAMS or sparse


@dataclass(frozen=True)
class TrainJob:
    individual_id: int
    generation: int
    seed: int                          # derived from (run seed, generation, individual id)
    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]


@dataclass
class TrainResult:
    individual_id: int
    weights: dict[str, np.ndarray]     # trained weights, or the untouched input if training failed
    status: str = "ok"                 # "ok" | "diverged" | "failed"
    error: str | None = None
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    val_accuracy: float = 0.0
    test_accuracy: float | None = None
    steps: int = 0
    train_seconds: float = 0.0
    worker: str = ""                   # host:pid of the process that trained it
    device: str = ""                   # "cpu" or "cuda"
    attempts: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict:
        """Everything but the weights, for the genome's record and the history."""
        return {k: v for k, v in self.__dict__.items() if k not in ("weights", "individual_id")}
