"""Experiment configuration: a TOML file mapped one-to-one onto frozen dataclasses.

Every section of the TOML file is a dataclass below and every key a field, so the file
format is documented by this module alone. Validation is complete before anything runs:
all problems in a file are collected and reported together, each naming its key path and
what is allowed, so a user fixes a file in one pass instead of one error per launch.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A config file or override is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field whose numeric value must lie in a range (checked by `validate`)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)}, **kw)


INT64_MAX = 2 ** 63 - 1  # TOML integers are 64-bit; numpy seeds take any of them


@dataclass(frozen=True)
class ExperimentConfig:
    # Names the directory populations/<name>/: letters, digits, ".", "_", "-" only.
    name: str = "experiment"
    # The one seed of the run: every random draw (data split, masks, weights, batches, variation) derives from it.
    seed: int = _range(0, INT64_MAX, default=0)


@dataclass(frozen=True)
class DataConfig:
    # Built-in dataset: scikit-learn's digits (ships with it, nothing to download), Fashion-MNIST and
    # MNIST from IDX files, CIFAR-10 from its python batches, or random synthetic data (tests).
    dataset: Literal["digits", "fashion_mnist", "mnist", "cifar10", "synthetic"] = "digits"
    # Directory holding the dataset files; each dataset has a default (see data.py).
    path: str | None = None
    # Fraction of the training split held out for validation (fitness uses validation).
    validation_fraction: float = _range(0.0, 1.0, lo_open=True, hi_open=True, default=0.15)
    # Fraction of the remaining training samples actually used (sample-efficiency studies).
    train_fraction: float = _range(0.0, 1.0, lo_open=True, default=1.0)
    # Size of the synthetic dataset (tests); ignored by the real datasets.
    synthetic_samples: int = _range(10, default=600)
    # Your own data instead of `dataset`: "package.module:load" or "file.py:load" (relative to
    # the experiment file). It returns {"train": (x, y), "test": (x, y)} and optionally
    # "validation" (else drawn from train with validation_fraction), or a tuple in that order;
    # each split a pair of arrays/tensors or a torch Dataset of (x, y). Taken as given (no
    # normalisation); labels are class indices 0..C-1. Called once, on the driver.
    factory: str | None = None
    # Keyword arguments of the data factory (it also gets `seed` if it has such a parameter).
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    # Built-in network: a multilayer perceptron, or a small CNN (conv layers, then a linear classifier).
    kind: Literal["mlp", "cnn"] = "mlp"
    # Widths of the MLP's hidden layers.
    hidden: list[int] = _range(1, default_factory=lambda: [128, 64])
    # Output channels of the CNN's 3x3 conv layers (each followed by the activation, and by a 2x2
    # max-pool while the feature map is at least 4 wide).
    channels: list[int] = _range(1, default_factory=lambda: [16, 32])
    # Activation between the built-in networks' layers.
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    # Biases and norms stay dense unless asked; masking biases is rarely useful.
    mask_biases: bool = False
    # Your own network instead of `kind`: "package.module:build" or "file.py:build" (relative to
    # the experiment file), a callable returning an nn.Module (a function or an nn.Module class).
    # kind, hidden, channels and activation are then unused. Workers on other nodes get the code
    # with the run (resources.ship_code).
    factory: str | None = None
    # Keyword arguments of the model factory (it also gets `input_shape` and `num_classes` if it
    # has parameters of those names).
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SparsityConfig:
    # Target fraction of active weights over all maskable tensors.
    density: float = _range(0.0, 1.0, lo_open=True, default=0.2)
    # "uniform": every layer at `density`; "erdos_renyi": SET/RigL's ERK rule, wide layers sparser.
    init: Literal["uniform", "erdos_renyi"] = "erdos_renyi"
    # Tensors (by parameter name, e.g. "layers.2.weight") that are never masked.
    dense_layers: list[str] = field(default_factory=list)
    # Which parameters carry a mask, as name patterns (fnmatch: "*", "?", "[..]"). Empty: every
    # Linear and Conv weight. `include` lists what is masked (any parameter may be named, e.g.
    # "blocks.*.weight"); `exclude` keeps the matching ones dense (e.g. ["conv1.weight",
    # "fc.weight"]: the first conv and the classifier). A pattern that matches nothing is an error.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    # true: every layer keeps its number of active connections (crossover repairs each layer
    # to its parents' mean count), so every individual has `density`. false: size is searched:
    # the initial densities are drawn log-uniformly in [min_density, max_density], the
    # "grow"/"prune" mutations change them, crossover children keep the counts they inherit,
    # and every individual stays within the bounds. Use it with fitness.mode = "pareto".
    fixed: bool = True
    # With fixed = false: the smallest and largest density an individual may have.
    min_density: float = _range(0.0, 1.0, lo_open=True, default=0.005)
    max_density: float = _range(0.0, 1.0, lo_open=True, default=0.5)


@dataclass(frozen=True)
class EvolutionConfig:
    # Individuals kept from one generation to the next.
    population: int = _range(2, default=8)
    # Offspring per generation; defaults to the population size.
    offspring: int | None = _range(1, default=None)
    # Generations after the initial population (0: train and score the initial population only).
    generations: int = _range(0, default=5)
    # How two parents' masks and weights combine: per neuron (a hidden unit's incoming connections
    # come from one parent), per connection, per layer, or not at all.
    crossover: Literal["neuron", "connection", "layer", "none"] = "neuron"
    # Probability that a pair of children is made by crossover.
    crossover_prob: float = _range(0.0, 1.0, default=0.5)
    # "set", "rewire", and the seed paper's two methods "threshold" and "strength" (their
    # parameters are in [structure]; the update index is the generation). "move" shifts
    # connections between layers at a constant total (the per-layer allocation evolves).
    # "grow" and "prune" change the size and need sparsity.fixed = false.
    mutations: list[Literal["set", "rewire", "threshold", "strength", "grow", "prune", "move"]] = field(
        default_factory=lambda: ["set"])
    # Probability that a child is mutated (by one of `mutations`, drawn uniformly); a child that drew
    # neither crossover nor mutation is mutated, so no training is spent on a copy.
    mutation_prob: float = _range(0.0, 1.0, default=1.0)
    # SET's zeta as a GA mutation: the fraction of each layer's active connections pruned and
    # regrown once per mutation (structure.fraction is zeta per update inside `neuroevo train`;
    # the rule, structure.update("set"), and its structure.set_prune option are shared).
    prune_fraction: float = _range(0.0, 1.0, hi_open=True, default=0.2)
    # Fraction of each layer's active connections moved to random positions by "rewire".
    rewire_fraction: float = _range(0.0, 1.0, hi_open=True, default=0.05)
    # "grow" adds, "prune" removes this fraction of every layer's active connections: a
    # multiplicative step, the same relative change at every size (within the density bounds).
    resize_fraction: float = _range(0.0, 1.0, lo_open=True, hi_open=True, default=0.25)
    # Where "grow" and "move" put new connections: "random" positions, or "strength": drawn
    # in proportion to the summed |w| of the two neurons they join (the structure rule of the
    # same name). Gradient-based growth (RigL) needs the gradient, which only a worker has.
    grow_rule: Literal["random", "strength"] = "random"
    # "move": fraction of one layer's active connections moved to another layer.
    move_fraction: float = _range(0.0, 1.0, lo_open=True, hi_open=True, default=0.1)
    # "plus": survivors are the best of parents + offspring; "comma": of the offspring,
    # with the `elitism` best parents kept.
    survival: Literal["plus", "comma"] = "plus"
    # With survival = "comma": parents kept into the next generation.
    elitism: int = _range(0, default=1)
    # Individuals per selection tournament (weighted mode; NSGA-II ranks by front and crowding).
    tournament_size: int = _range(1, default=3)
    # Train surviving parents again each generation (their fitness is then re-measured).
    retrain_survivors: bool = False
    # "lamarckian": trained weights are written back into the genome and inherited;
    # "baldwinian": fitness comes from training, but offspring inherit the untrained weights.
    inheritance: Literal["lamarckian", "baldwinian"] = "lamarckian"
    # Successive halving inside each generation, an option that changes results (off: None).
    # Every training of the generation first runs this fraction of its steps; then only the
    # best `halving_keep` of them by fitness (at least one) train the remaining steps, on
    # exactly the batches and with exactly the optimiser state they would have had, so a kept
    # individual ends as it would have without halving; the others stop there, with the
    # weights, metrics and fitness of that point (their `steps` in the history says so).
    # Saves a share (1 - halving_at) * (1 - halving_keep) of the training steps, for one more
    # validation pass per kept individual; measured by benchmarks/end_to_end.py --halving.
    halving_at: float | None = _range(0.0, 1.0, lo_open=True, hi_open=True, default=None)
    # With halving_at: the fraction of the generation's trainings that go on to the last step.
    halving_keep: float = _range(0.0, 1.0, lo_open=True, hi_open=True, default=0.5)
    # A final polish of the front inside the run's budget (0: none). In the last configured
    # generation, after selection, every member of the archive (the Pareto front, or the hall of
    # fame) is trained this many more steps as a new individual (operator "polish"), its
    # learning rate decayed by a cosine from its lineage's rate (training.lineage_schedule;
    # training.lr without one) to zero, so the networks the run leaves end annealed as a single
    # network's training ends. Those steps are in the history's `steps` like any other.
    polish_steps: int = _range(0, default=0)
    # A front seeded from one trained network (0: off). Before generation 0 trains, one network
    # at sparsity.max_density (sparsity.density with sizes fixed), initialised as the population
    # is, trains this many steps with its rate decayed by a cosine to zero (operator "trunk", a
    # row of generation 0 with its steps); every initial individual is then the trunk pruned by
    # |w| per layer to its drawn size, inheriting its weights and lineage steps, so each size
    # starts from shared training instead of a random sparse network.
    trunk_steps: int = _range(0, default=0)
    # With trunk_steps and sizes searched: after the trunk, this many rungs of a pruning ladder
    # (0: none). Rung k is the rung above it pruned by |w| to density max_density x
    # (min_density / max_density)^(k / trunk_rungs), then trained trunk_rung_steps with its rate
    # decayed by a cosine to zero (operator "trunk"); each initial individual is pruned from the
    # smallest rung at least its size. Small networks so start from many rounds of pruning and
    # retraining, as gradual pruning's do, not from one cut of the trunk.
    trunk_rungs: int = _range(0, default=0)
    # Optimiser steps of each rung of the pruning ladder (trunk_rungs).
    trunk_rung_steps: int = _range(1, default=300)


@dataclass(frozen=True)
class TrainingConfig:
    # Training of one individual per evaluation, in passes over the training split (fractions allowed).
    epochs: float = _range(0.0, lo_open=True, default=1.0)
    # If set, train this many optimiser steps instead of `epochs`.
    steps: int | None = _range(1, default=None)
    # Samples per optimiser step.
    batch_size: int = _range(1, default=64)
    # Optimiser of every training; a fresh one per evaluation (unless `inherit_optimizer`).
    optimizer: Literal["sgd", "adam"] = "adam"
    # Lamarckian runs: keep an individual's optimiser state (SGD's momentum, Adam's moments and
    # step) with its trained weights in the genome and its checkpoints, and start its
    # children's training from it instead of a fresh optimiser. The state follows the weights:
    # a child's state at a connection is the parent's whose weight it holds there, zero where
    # its weight is new (genome.inherited_optimiser). Trains one individual at a time (a
    # vectorised group shares one Adam step count), so `vectorise` must not be "on".
    inherit_optimizer: bool = False
    # Learning rate (the peak of lr_schedule).
    lr: float = _range(0.0, lo_open=True, default=1e-3)
    # SGD momentum (optimizer = "sgd").
    momentum: float = _range(0.0, 1.0, hi_open=True, default=0.9)
    # L2 weight decay of the optimiser, on the active weights.
    weight_decay: float = _range(0.0, default=0.0)
    # Initialisation of connections an individual did not inherit (the initial population,
    # and new connections when structure.new_weights = "random").
    init: Literal["kaiming_uniform", "xavier_uniform"] = "kaiming_uniform"
    # What the init counts as a neuron's fan-in: "dense", every position of the layer (as
    # torch initialises a dense layer); "sparse", only its active connections (bound wider by
    # 1/sqrt(density)). At low density "sparse" trains worse under brief SGD (docs/ABLATION.md).
    init_fan: Literal["dense", "sparse"] = "dense"
    # Train individuals of one generation together, `vectorise_group` at a time, in one
    # batched pass (torch.func.vmap). "auto": for MLPs on GPU, and on CPU for MLPs small
    # enough that vmap is faster there (paths.VECTORISE_CPU_MAX_PARAMS, measured by
    # benchmarks/throughput.py); never for CNNs. A group is also the unit a Ray task carries.
    vectorise: Literal["auto", "on", "off"] = "auto"
    # Individuals per group: a number, or "auto": on CPUs one group per slot (the cores over
    # resources.cpus_per_job; 2 to worker.MAX_GROUP jobs each), because on a CPU a member's
    # arithmetic does not depend on its group (tested bit for bit, tests/test_worker.py), so
    # results do not depend on the cluster either; on GPUs, whose batched matmuls may round
    # by batch size, and for networks other than the built-in MLP (vmapped whole), a fixed 8
    # (there the group size is part of the results: a resume may not change it).
    vectorise_group: int | Literal["auto"] = _range(1, default="auto")
    # Truly sparse Linear layers (CSR forward/backward, cost ~ active connections).
    # "auto": for masked Linear layers below `sparse_below` density with at least
    # `sparse_min_size` weights (thresholds measured by benchmarks/throughput.py; the size
    # floor is for torch's CSR ops, whose per-call cost small layers do not repay: vectorised
    # groups on the native kernels below have none), none when resources.gpus_per_job > 0
    # (torch's CSR ops on CUDA do not repeat bit for bit: measured on an H200); "on": every
    # masked Linear layer; "off": always dense weight * mask.
    sparse_kernels: Literal["auto", "on", "off"] = "auto"
    # sparse_kernels = "auto": a masked Linear layer runs truly sparse below this density and from
    # this many weights up.
    sparse_below: float = _range(0.0, 1.0, default=0.3)
    sparse_min_size: int = _range(0, default=100_000)
    # Kernels of those truly sparse layers on a CPU in vectorised groups (where activations are
    # feature-major): "native", the C kernels built at install time (neuroevo_sparse/train/_kernels.c,
    # faster than torch's CSR ops on small layers: benchmarks/kernels.py); "torch", torch's CSR
    # ops; "auto": native where they were built. Resolved once on the driver, so that every
    # worker does the same arithmetic; GPUs always use torch's.
    cpu_kernels: Literal["auto", "native", "torch"] = "auto"
    # How the "auto" values of `vectorise` and `sparse_kernels` are settled on a CPU:
    # "measurement", by training each candidate path a few steps on the run's own network,
    # density, batch size and data when the run starts (calibration.py; about a second, once per
    # machine and experiment: the choice is cached, never replaced, and stored in the run
    # directory for resume); the rules'
    # choice below is kept unless another path is more than 10% faster. "rules", by the fixed
    # thresholds alone (VECTORISE_CPU_MAX_PARAMS, `sparse_below`, `sparse_min_size`), the same
    # on every machine. GPUs always use the rules.
    auto_by: Literal["measurement", "rules"] = "measurement"
    # Learning rate over one training run: "constant", or "cosine" decay to 0 over its steps.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # The GA's learning rate over a lineage's history: "none", each training at `lr` (with
    # `lr_schedule`); "cosine", the rate of an individual's step is read from a cosine over the
    # steps its lineage has trained before it (the genome's lineage_steps, inherited by
    # mutation, the parents' mean under crossover), from `lr` at step 0 down to
    # `lr * lineage_floor` at `lineage_horizon` steps and flat after it, so lineages anneal as
    # one network trained that long would, instead of restarting at the full rate after every
    # inheritance (the failure population-based training avoids by inheriting its schedule).
    lineage_schedule: Literal["none", "cosine"] = "none"
    # Steps of a lineage over which "cosine" decays; needed with it.
    lineage_horizon: int | None = _range(1, default=None)
    # The rate past the horizon, a fraction of `lr`: lineages that go on keep learning slowly.
    lineage_floor: float = _range(0.0, 1.0, default=0.05)


@dataclass(frozen=True)
class StructureConfig:
    """How one network's sparse structure changes while it trains (`neuroevo train`,
    benchmarks/paper_claims.py), and the parameters of the "threshold"/"strength" mutations."""
    # "dense": no mask; "static": the initial mask never changes; "set", "rigl", "threshold",
    # "strength": see structure.py; "magnitude": train dense, prune each layer to its target
    # count by |w| once, then fine-tune `finetune_epochs` with the mask; "gradual": gradual
    # magnitude pruning (Zhu & Gupta 2017): from dense, every `update_every` steps (0: every
    # epoch) between gradual_start and gradual_end of training, each layer is pruned by |w| to
    # the density of a cubic schedule that reaches its target count at gradual_end; then the
    # masked network fine-tunes to the end.
    method: Literal["dense", "static", "set", "rigl", "threshold", "strength", "magnitude", "gradual"] = "static"
    # Optimiser steps between structure updates; 0: at the end of every epoch.
    update_every: int = _range(0, default=0)
    # SET's zeta (fraction removed per update); RigL's alpha (initial drop fraction).
    fraction: float = _range(0.0, 1.0, hi_open=True, default=0.3)
    # RigL: no structure update after this fraction of training.
    rigl_end: float = _range(0.0, 1.0, lo_open=True, default=0.75)
    # SET, in `neuroevo train` and as the GA's "set" mutation (whose zeta is
    # evolution.prune_fraction): "magnitude" prunes the smallest |w|; "signed" prunes positive
    # and negative weights apart,
    # as SET's reference code does (SET as published: with new_weights = "glorot").
    set_prune: Literal["magnitude", "signed"] = "magnitude"
    # "constant": zeta at every update (SET as published: it never converges); "cosine": zeta
    # decays as RigL's alpha does, alpha/2 (1 + cos(pi t / T)), to 0 at rigl_end, so the
    # counterpart's structure converges too (a fair test of "converges faster than SET").
    set_schedule: Literal["constant", "cosine"] = "constant"
    # threshold/strength: a connection dies when |w| < threshold * decay**t * mean active |w|.
    threshold: float = _range(0.0, default=0.5)
    # The threshold's decay per structure update (t counts updates).
    threshold_decay: float = _range(0.0, 1.0, default=0.5)
    # threshold/strength: at most this fraction of a layer's active connections die per update.
    max_fraction: float = _range(0.0, 1.0, default=0.3)
    # threshold/strength: connections born per connection that died; < 1 shrinks the network.
    regrow_ratio: float = _range(0.0, 1.0, default=1.0)
    # Weight of every connection that is born: by the GA's mutations ("set", "rewire",
    # "threshold", "strength"), by the density repair after crossover, and by the structure
    # rules inside `neuroevo train`. "zero": it starts silent and the gradient grows it (RigL);
    # "random": a fresh draw from the layer's init (training.init / init_fan), as SET's
    # reference code does, and the default, better for the GA at 2% and 10% density
    # (docs/ABLATION.md); "glorot": Glorot/Xavier-uniform on the layer's dense fans whatever
    # training.init says, the scale SET's reference code draws newborns at. One key for every
    # context, so a GA and a single network compared side by side grow connections the same way.
    new_weights: Literal["zero", "random", "glorot"] = "random"
    # magnitude: epochs of masked fine-tuning after the one-shot prune (within training.epochs).
    finetune_epochs: int = _range(0, default=1)
    # gradual: the span of training (fractions of its steps) over which pruning happens.
    gradual_start: float = _range(0.0, 1.0, hi_open=True, default=0.1)
    gradual_end: float = _range(0.0, 1.0, lo_open=True, default=0.7)
    # A structure has converged at the first epoch from which fewer than this fraction of the
    # active connections change per epoch.
    converged_below: float = _range(0.0, 1.0, lo_open=True, default=0.01)


@dataclass(frozen=True)
class FitnessConfig:
    # "weighted": one fitness value, sum(weights * objectives); "pareto": NSGA-II on the
    # objectives themselves, the sign of each weight giving its direction.
    mode: Literal["weighted", "pareto"] = "weighted"
    # What fitness is made of: validation accuracy, density, active parameters, forward FLOPs.
    objectives: list[Literal["val_accuracy", "density", "active_params", "flops"]] = field(
        default_factory=lambda: ["val_accuracy", "density"])
    # One weight per objective: the weighted sum's coefficients, or in pareto mode the direction of
    # each objective (positive: maximise).
    weights: list[float] = field(default_factory=lambda: [1.0, -0.1])


@dataclass(frozen=True)
class ResourcesConfig:
    # Where individuals train. "auto": in this process on one machine, on Ray when a cluster is
    # named (resources.address, --address or RAY_ADDRESS); "local": always in this process;
    # "ray": always on Ray (a local Ray is started when no cluster is named). Results are the
    # same on every backend.
    backend: Literal["auto", "ray", "local"] = "auto"
    # Ray cluster to join ("auto", "127.0.0.1:6379", ...); None starts a local Ray.
    address: str | None = None
    # CPUs of a locally started Ray, or of the local backend (one training thread per
    # cpus_per_job of them); None: every core.
    num_cpus: int | None = _range(1, default=None)
    # CPUs one training job (a group of individuals) takes.
    cpus_per_job: float = _range(0.0, lo_open=True, default=1.0)
    # GPUs one training job takes (fractions share a GPU); 0 trains on CPUs.
    gpus_per_job: float = _range(0.0, default=0.0)
    # Intra-op threads of one training job. Fixed so results do not depend on the worker.
    torch_threads: int = _range(1, default=1)
    # Retries of a job whose worker process or node died.
    max_retries: int = _range(0, default=3)
    # A job running longer than this is cancelled and recorded as failed.
    job_timeout_s: float | None = _range(0.0, lo_open=True, default=None)
    # Ship the modules of model.factory / data.factory that are not installed (your own code)
    # to the Ray workers (Ray runtime environment `py_modules`), so nodes that lack the files
    # import them all the same.
    ship_code: bool = True
    # More code for the workers, as Ray's runtime environment takes it: `py_modules` (package
    # directories or .py files) and `working_dir` (a directory that becomes the workers' current
    # directory and is importable). Relative paths are taken from the experiment file.
    py_modules: list[str] = field(default_factory=list)
    working_dir: str | None = None


@dataclass(frozen=True)
class OutputConfig:
    # Directory under which run directories are made: <root>/<experiment.name>/<run id>.
    root: str = "populations"
    # Write a checkpoint every this many generations (and after the last).
    checkpoint_every: int = _range(1, default=1)
    # Also checkpoint when this many seconds passed since the last checkpoint.
    checkpoint_seconds: float | None = _range(0.0, lo_open=True, default=None)
    # Newest checkpoints kept; older ones are removed.
    keep_checkpoints: int = _range(1, default=3)
    # How a run shows progress: a tqdm bar, one log line per generation, or nothing; "auto": a bar
    # on a terminal, else log lines.
    progress: Literal["auto", "bar", "log", "none"] = "auto"
    # Per-generation scalars (best/mean fitness and validation accuracy, density, active
    # parameters, hypervolume, failures, jobs/s) as TensorBoard event files in
    # <run dir>/tensorboard (needs the `tensorboard` package: pip install neuroevo_sparse[tracking]).
    tensorboard: bool = False
    # The same scalars, and the resolved config as parameters, to MLflow (needs `mlflow` or
    # `mlflow-skinny`); the tracking server is MLflow's own setting (MLFLOW_TRACKING_URI,
    # default ./mlruns), the experiment is experiment.name, the run is named after the run id.
    mlflow: bool = False
    # Which individuals the test split scores. "chosen": only those a user reads it for, the
    # best survivor, the survivor with the best validation accuracy and the archive (hall of
    # fame / Pareto front), once each, after their generation is selected; the others' rows
    # hold null. "final": the same individuals, but only in the last generation the run
    # reaches (evolution.generations, or the one a stop request ends it after): one test pass
    # at the end, as a hand-written GA does, instead of one per generation's newcomers to the
    # archive; earlier generations' rows hold null. "all": every evaluated individual, in its
    # training job. Test accuracy never steers the search, so this changes no
    # other column.
    test_accuracy: Literal["chosen", "final", "all"] = "chosen"


@dataclass(frozen=True)
class Experiment:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def n_offspring(self) -> int:
        return self.evolution.offspring or self.evolution.population

    @property
    def jobs_per_generation(self) -> int:
        """Individuals trained in each generation after the first: the offspring, and the
        survivors again where evolution.retrain_survivors."""
        ev = self.evolution
        return self.n_offspring + (ev.population if ev.retrain_survivors else 0)

    @property
    def evaluations(self) -> int:
        """Individuals a complete run trains: its first population, then each generation's."""
        return self.evolution.population + self.evolution.generations * self.jobs_per_generation

    def trained_on(self, trained: int) -> int:
        """Of `trained` individuals of a generation, how many train on after evolution.halving_at
        (none without halving): the jobs a generation adds to its `trained`."""
        if self.evolution.halving_at is None:
            return 0
        return max(1, math.ceil(self.evolution.halving_keep * trained - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hash of the settings that determine results (all but RESUME_SAFE_KEYS).

        Only values that differ from their defaults count, so a later version that adds a key
        (with a default that keeps the old behaviour) does not invalidate existing runs.
        """
        defaults = flatten(Experiment().to_dict())
        flat = {k: v for k, v in flatten(self.to_dict()).items()
                if k not in RESUME_SAFE_KEYS and (k not in defaults or defaults[k] != v)}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


# Keys that may change between a run and its resume without changing what was computed.
RESUME_SAFE_KEYS = frozenset({
    "evolution.generations", "output.progress", "output.checkpoint_every",
    "output.checkpoint_seconds", "output.keep_checkpoints", "output.root",
    "resources.address", "resources.num_cpus", "resources.backend",
    "resources.max_retries", "resources.job_timeout_s", "resources.ship_code", "resources.py_modules",
    "resources.working_dir", "output.tensorboard", "output.mlflow",
    # On CPUs an MLP member's arithmetic does not depend on its group (see TrainingConfig);
    # where it does (vmapped networks, GPUs) runs.resume refuses a change.
    "training.vectorise_group",
})


# ----------------------------------------------------------------------------- loading

def load(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override and validate an experiment file; raises ConfigError on any problem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(["is a directory: give the experiment's .toml file"], source=str(path))
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], source=str(path))
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError([f"cannot be read: {e.strerror or e}"], source=str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"is not UTF-8 text (byte {e.start}): TOML files are UTF-8"], source=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], source=str(path)) from None
    raw = apply_overrides(raw, overrides or [])
    if not raw:
        raise ConfigError(["sets nothing (it is empty or only comments), which would silently run the whole "
                           "default experiment: write what to run, e.g. start from experiments/quickstart.toml"],
                          source=str(path))
    return with_absolute_paths(from_dict(raw, source=str(path)), path.parent)


def factory_parts(name: str) -> tuple[str, str]:
    """("module or file", "attribute path") of a factory name; ValueError if malformed."""
    target, sep, attr = name.rpartition(":")
    if not sep or not target or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"{name!r} is not of the form \"package.module:callable\" or \"file.py:callable\"")
    return target, attr


def factory_is_file(target: str) -> bool:
    return target.endswith(".py")


def absolute_factory(name: str, base: Path) -> str:
    """`name` with a relative .py path made absolute against `base` (the experiment's directory)."""
    target, attr = factory_parts(name)
    if not factory_is_file(target) or Path(target).is_absolute():
        return name
    return f"{(base / target).resolve()}:{attr}"


def with_absolute_paths(exp: Experiment, base: Path) -> Experiment:
    """User code named by a relative path is found from `base` (the experiment file's
    directory), wherever the run is started from; the run's config.toml records it absolute."""
    def path(p: str) -> str:
        return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

    res = exp.resources
    return dataclasses.replace(
        exp,
        model=dataclasses.replace(exp.model, factory=exp.model.factory and absolute_factory(exp.model.factory, base)),
        data=dataclasses.replace(exp.data, factory=exp.data.factory and absolute_factory(exp.data.factory, base)),
        resources=dataclasses.replace(res, py_modules=[path(p) for p in res.py_modules],
                                      working_dir=res.working_dir and path(res.working_dir)))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; values are parsed as TOML, else taken as strings."""
    raw = json.loads(json.dumps(raw))  # deep copy of plain TOML data
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            problems.append(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. evolution.population=8")
            continue
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            problems.append(f"--set {item!r}: [{parts[0]}] is not a section")
            continue
        section[parts[1]] = value
    if problems:
        raise ConfigError(problems, source="--set")
    return raw


def from_dict(raw: Mapping[str, Any], source: str = "config") -> Experiment:
    problems: list[str] = []
    sections = {f.name: f for f in dataclasses.fields(Experiment)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            problems.append(_unknown(name, sections))
        elif not isinstance(value, dict):
            problems.append(f"{name}: must be a [{name}] table, got {_show(value)}")
        else:
            kwargs[name] = _build(sections[name].type, value, name, problems)
    if not problems:
        exp = Experiment(**{k: v for k, v in kwargs.items() if v is not None})
        _cross_checks(exp, problems)
        if not problems:
            return exp
    raise ConfigError(problems, source=source)


def _build(cls_name: Any, values: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    cls = _SECTION_TYPES[cls_name] if isinstance(cls_name, str) else cls_name
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    before = len(problems)
    for key, value in values.items():
        path = f"{prefix}.{key}"
        if key not in fields:
            problems.append(_unknown(path, fields))
            continue
        error = _check_type(value, hints[key])
        if error is None:
            error = _check_range(value, fields[key].metadata.get("range"))
        if error:
            problems.append(f"{path}: {error}")
        else:
            kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs) if len(problems) == before else None


def _check_type(value: Any, tp: Any) -> str | None:
    """None if `value` fits the annotation `tp`, else what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = [_check_type(value, a) for a in args if a is not type(None)]
        if None in errors or len(errors) == 1:
            return None if None in errors else errors[0]
        expected = [re.sub(r"[,;] got .*$", "", e).removeprefix("must be ") for e in errors]
        return f"must be {' or '.join(expected)}; got {_show(value)}"
    if origin is Literal:
        return None if value in args else f"must be one of {', '.join(map(repr, args))}; got {_show(value)}"
    if origin is dict:
        if not isinstance(value, dict):
            return f"must be a table (e.g. {{ depth = 3 }}), got {_show(value)}"
        return None  # the factory it is passed to checks its values
    if origin is list:
        if not isinstance(value, list):
            return f"must be a list, got {_show(value)}"
        for i, item in enumerate(value):
            error = _check_type(item, args[0])
            if error:
                return f"item {i}: {error}"
        return None
    if tp is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {_show(value)}"
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, got {_show(value)}"
        return None if abs(value) <= INT64_MAX else f"must fit in 64 bits (TOML integers do); got {value}"
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"must be a number, got {_show(value)}"
        return None if math.isfinite(value) else f"must be a finite number, got {value}"
    if tp is str:
        return None if isinstance(value, str) else f"must be a string, got {_show(value)}"
    raise TypeError(f"unsupported annotation {tp}")


def _check_range(value: Any, spec: tuple | None) -> str | None:
    if spec is None or value is None:
        return None
    if isinstance(value, list):  # a list field's range applies to each item
        for i, item in enumerate(value):
            error = _check_range(item, spec)
            if error:
                return f"item {i}: {error}"
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None  # the other half of a union (e.g. "auto")
    lo, hi, lo_open, hi_open = spec
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if not (bad_lo or bad_hi):
        return None
    left = "" if lo is None else ("(" if lo_open else "[") + f"{lo}"
    right = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
    if lo is not None and hi is not None:
        return f"must be in {left}, {right}; got {value}"
    if lo is not None:
        return f"must be {'>' if lo_open else '>='} {lo}; got {value}"
    return f"must be {'<' if hi_open else '<='} {hi}; got {value}"


def _cross_checks(exp: Experiment, problems: list[str]) -> None:
    """Constraints that involve more than one key, or a value's form."""
    f, ev = exp.fitness, exp.evolution
    if not _NAME.fullmatch(exp.experiment.name):
        problems.append(f"experiment.name: {exp.experiment.name!r} names a directory under output.root: use "
                        f"letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    if not f.objectives:
        problems.append("fitness.objectives: at least one objective is required")
    if len(f.weights) != len(f.objectives):
        problems.append(f"fitness.weights: needs one weight per objective "
                        f"({len(f.objectives)}), got {len(f.weights)}")
    if any(w == 0 for w in f.weights):
        problems.append("fitness.weights: a weight of 0 gives an objective no direction; remove it instead")
    if len(set(f.objectives)) != len(f.objectives):
        problems.append("fitness.objectives: an objective is listed twice")
    if f.mode == "pareto" and len(f.objectives) < 2:
        problems.append('fitness.mode: "pareto" needs at least two objectives')
    sp = exp.sparsity
    sizing = sorted({"grow", "prune"} & set(ev.mutations))
    if sp.fixed and sizing:
        problems.append(f"evolution.mutations: {', '.join(map(repr, sizing))} change(s) the network's size, which "
                        f"sparsity.fixed = true forbids: set sparsity.fixed = false (and give min_density/max_density)")
    if not sp.fixed and sp.min_density >= sp.max_density:
        problems.append(f"sparsity.min_density: must be < sparsity.max_density ({sp.max_density}); "
                        f"got {sp.min_density}")
    if ev.elitism >= ev.population:
        problems.append(f"evolution.elitism: must be < evolution.population ({ev.population}); got {ev.elitism}")
    if ev.survival == "comma" and exp.n_offspring + ev.elitism < ev.population:
        problems.append(f"evolution.offspring: with survival = \"comma\", offspring + elitism must be "
                        f">= population ({ev.population}); got {exp.n_offspring} + {ev.elitism}")
    if not ev.mutations and ev.crossover == "none":
        problems.append("evolution.mutations: empty while evolution.crossover = \"none\": nothing would vary")
    if ev.trunk_rungs > 0 and (sp.fixed or ev.trunk_steps == 0):
        problems.append(f"evolution.trunk_rungs: a pruning ladder below the trunk needs evolution.trunk_steps > 0 "
                        f"and sizes searched (sparsity.fixed = false); got trunk_steps = {ev.trunk_steps}, "
                        f"fixed = {str(sp.fixed).lower()}")
    if exp.training.lineage_schedule != "none" and exp.training.lineage_horizon is None:
        problems.append(f"training.lineage_horizon: needed with training.lineage_schedule = "
                        f"{exp.training.lineage_schedule!r} (the lineage steps over which the rate decays)")
    if exp.training.inherit_optimizer and ev.inheritance != "lamarckian":
        problems.append("training.inherit_optimizer: needs evolution.inheritance = \"lamarckian\" (the state "
                        "belongs to the trained weights, which a Baldwinian child does not inherit)")
    if exp.training.inherit_optimizer and exp.training.vectorise == "on":
        problems.append("training.inherit_optimizer: inherited optimiser states train one individual at a time; "
                        "set training.vectorise = \"auto\" or \"off\"")
    if exp.structure.gradual_start >= exp.structure.gradual_end:
        problems.append(f"structure.gradual_start: must be < structure.gradual_end ({exp.structure.gradual_end}); "
                        f"got {exp.structure.gradual_start}")
    if exp.resources.gpus_per_job > 1 and exp.resources.gpus_per_job != int(exp.resources.gpus_per_job):
        problems.append("resources.gpus_per_job: above 1 it must be a whole number of GPUs")
    for key, name in (("model.factory", exp.model.factory), ("data.factory", exp.data.factory)):
        if name is not None:
            try:
                factory_parts(name)
            except ValueError as e:
                problems.append(f"{key}: {e}")
    for key in ("model.args", "data.args"):
        section, arg = key.split(".")
        if getattr(getattr(exp, section), arg) and getattr(exp, section).factory is None:
            problems.append(f"{key}: set only with {section}.factory (they are its keyword arguments)")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _unknown(path: str, allowed: Mapping[str, Any]) -> str:
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}"


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


_SECTION_TYPES = {f.type: typing.get_type_hints(Experiment)[f.name] for f in dataclasses.fields(Experiment)}


# ----------------------------------------------------------------------------- writing

def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_toml(exp: Experiment) -> str:
    """The resolved experiment as TOML that `load` reads back to an equal Experiment."""
    lines = []
    for section, values in exp.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:  # TOML has no null: an absent key means the default None
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def diff(old: Experiment, new: Experiment) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ, as {key: (old, new)}."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
