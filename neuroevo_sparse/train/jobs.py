"""What crosses the boundary between the driver and a worker: plain data only.

No DEAP object, no Genome, no torch module: numpy arrays, numbers, strings and frozen config
dataclasses, which pickle the same way in every process (DEAP's creator classes do not). The
one callable is a user's model factory in the spec, which Ray pickles by reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config.schema import TrainingConfig

if TYPE_CHECKING:
    from ..problem.models import Builder


@dataclass(frozen=True)
class TrainSpec:
    """Identical for every job of a run: how to build the model and train it."""

    builder: Builder                   # the network: config and resolved factory (models.Builder)
    training: TrainingConfig
    torch_threads: int = 1
    time_limit_s: float | None = None  # a job training longer is stopped and recorded as failed
    # Train groups of `training.vectorise_group` jobs in one vmapped pass. Resolved once on
    # the driver (never per worker) so that every worker does the same arithmetic.
    vectorise: bool = False
    # Training jobs also score the test split (output.test_accuracy = "all"); otherwise the
    # driver asks for it with test-only jobs, for the individuals it reports.
    score_test: bool = True
    # Sparse layers of vectorised groups on a CPU run on the C kernels (training.cpu_kernels),
    # resolved on the driver like `vectorise`.
    native_kernels: bool = False
    # Jobs per group (training.vectorise_group); None: one group per slot of the evaluator.
    group: int | None = None
    # The masked Linear layers a measured plan (calibration.py) runs truly sparse, wherever
    # they are below training.sparse_below; None: the rules decide (sparse.layers_to_sparsify).
    sparse_layers: tuple[str, ...] | None = None
    # Each masked tensor's density at the run's reference size (sparsity.density): what decides
    # which layers a vectorised group runs truly sparse, for every member whatever its own
    # density, so that who shares a group never changes a member's arithmetic. None (a spec
    # made by hand): a layer is sparse where it qualifies for every member of the group.
    reference_density: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Resume:
    """Where a training stopped part-way (evolution.halving_at), so that another job can go
    on from there exactly as if it had never stopped: the steps done, the running sum of their
    losses, the optimiser's state per parameter under its dense name (the genome's), and the
    state of the generator a network's own randomness draws from."""

    step: int
    loss_sum: float
    optimiser: dict[str, dict[str, np.ndarray | int]]
    rng: np.ndarray | None = None      # torch's generator (dropout draws), per-individual path


@dataclass(frozen=True, eq=False)
class Base:
    """The arrays a job's masks and weights were made from: a parent's, as variation found
    them (or the individual's own, for a survivor trained again). Training never reads it;
    the Ray evaluator ships each base once per generation and a job as what differs from its
    bases (evaluators/wire.py)."""

    id: int
    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainJob:
    individual_id: int
    generation: int
    seed: int                          # derived from (run seed, generation, individual id)
    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    # Only score these weights on the test split: no training, and the result carries no weights.
    test_only: bool = False
    # Train up to this fraction of the steps only (at least one step); the result then holds
    # a `resume` for a job that goes on from there.
    until: float = 1.0
    # Go on from a training that stopped part-way (`weights` are then the ones it stopped with).
    resume: Resume | None = None
    # Steps its lineage trained before this job (Genome.lineage_steps): where its learning rate
    # starts under training.lineage_schedule.
    lineage_step: int = 0
    # Steps of this job instead of the config's (evolution.polish_steps).
    steps: int | None = None
    # A polish: the rate decays by a cosine from the lineage's rate to zero over the job's steps.
    polish: bool = False
    # training.inherit_optimizer: the optimiser state (per parameter under its dense name, as a
    # Resume holds it) this training starts from, inherited with `weights`; None: a fresh one.
    # A `resume` replaces it.
    optimiser: dict[str, dict[str, np.ndarray | int]] | None = None
    # What `masks` and `weights` were made from (a mutant's parent, a crossover child's two
    # parents): only for shipping, never sent as it is.
    bases: tuple[Base, ...] = field(default=(), compare=False, repr=False)

    def span(self, total: int) -> tuple[int, int]:
        """The steps [first, last) of the individual's `total` that this job trains."""
        first = 0 if self.resume is None else self.resume.step
        last = total if self.until >= 1 else min(total, max(first + 1, round(self.until * total)))
        return first, last


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
    # Set where the job stopped before the individual's last step (TrainJob.until).
    resume: Resume | None = None
    # training.inherit_optimizer: the optimiser state its `weights` were reached with (status "ok").
    optimiser: dict[str, dict[str, np.ndarray | int]] | None = None

    def metrics(self) -> dict:
        """Everything but the weights (and optimiser states), for the genome's record and the history."""
        return {k: v for k, v in self.__dict__.items() if k not in ("weights", "individual_id", "resume", "optimiser")}
