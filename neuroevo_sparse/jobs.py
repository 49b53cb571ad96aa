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

    @classmethod
    def of(cls, exp: Experiment, input_shape: tuple[int, ...], num_classes: int) -> "TrainSpec":
        return cls(exp.model, exp.training, tuple(input_shape), num_classes,
                   exp.resources.torch_threads, exp.resources.job_timeout_s)


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
