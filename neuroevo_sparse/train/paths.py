"""Which path trains a run's jobs: vectorised groups or one by one, which layers run truly
sparse, on which kernels, in groups of what size. Decided once, on the driver, from the config
and the network (the rules below) or from a measurement (`Plan`, made by calibration.py), and
handed to every worker inside the TrainSpec, so that every worker does the same arithmetic.

The job types (jobs.py) only carry the decision: they import nothing that decides it, so a
worker unpickling a job imports no more than it needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config.schema import ConfigError, Experiment
from .jobs import TrainSpec

if TYPE_CHECKING:
    from ..problem.models import Architecture

log = logging.getLogger("neuroevo_sparse")


def spec_for(exp: Experiment, arch: Architecture, plan: Plan | None = None) -> TrainSpec:
    """What every worker is told; `plan`, a measured choice of path, replaces the rules'."""
    from ..topology import genome  # only when a spec is made, never when jobs are unpickled
    density = genome.layer_densities(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init)
    return TrainSpec(arch.builder, exp.training, exp.resources.torch_threads, exp.resources.job_timeout_s,
                     _vectorise(exp, arch) if plan is None else plan.vectorise and not exp.training.inherit_optimizer,
                     exp.output.test_accuracy == "all",
                     _native_kernels(exp), _group(exp, arch), _sparse_layers(exp, plan),
                     tuple((n, float(density[n])) for n in arch.maskable))


def _sparse_layers(exp: Experiment, plan: Plan | None) -> tuple[str, ...] | None:
    """The layers a measured plan runs truly sparse (None: the rules decide, per job). On a GPU
    "auto" picks none: torch's CSR ops on CUDA do not repeat themselves (the Fashion-MNIST MLP
    at 10% density, 2 generations run twice on one H200, differed from the first generation on:
    losses, accuracies by up to 0.005, and so the parents chosen; with dense masked weights the
    two runs were equal)."""
    if exp.resources.gpus_per_job > 0 and exp.training.sparse_kernels != "off":
        if exp.training.sparse_kernels == "auto":
            return ()
        log.warning('training.sparse_kernels = "on" with resources.gpus_per_job > 0: torch\'s CSR ops on CUDA '
                    'do not repeat bit for bit, so on a GPU this run will not reproduce exactly, nor resume as '
                    'the run that never stopped; "auto" trains dense masked weights there')
    return None if plan is None else plan.sparse_layers


# training.vectorise_group = "auto" on a GPU, and for networks other than the built-in MLP
# (vmapped whole). Fixed, not by slot: batched matmuls there may round by batch size, and
# results must not depend on how many GPUs or slots there are.
FIXED_GROUP = 8


def _group(exp: Experiment, arch: Architecture) -> int | None:
    size = exp.training.vectorise_group
    if size != "auto":
        return size
    return FIXED_GROUP if exp.resources.gpus_per_job > 0 or not arch.is_chain() else None


def _native_kernels(exp: Experiment) -> bool:
    from . import kernels

    mode = exp.training.cpu_kernels
    if mode == "torch" or exp.resources.gpus_per_job > 0:
        return False
    if mode == "native" and not kernels.available():
        raise ConfigError([f"training.cpu_kernels: 'native', but {kernels.status()}; or set it to 'auto' or 'torch'"])
    return kernels.available()


# Below this many parameters a CPU step is dominated by per-call overhead, which batching
# removes (5x on the quickstart MLP); above it a dense step is bound by the matmuls and
# batching them gains little on a CPU. Measured by benchmarks/throughput.py.
VECTORISE_CPU_MAX_PARAMS = 100_000


def _vectorise(exp: Experiment, arch: Architecture) -> bool:
    """"auto": MLPs on a GPU; on a CPU, small MLPs and MLPs with a layer that starts truly
    sparse (its block-diagonal sparse matmul over the group beats one sparse matmul per
    individual: benchmarks/throughput.py); other networks (CNNs, your own) on a GPU only,
    where they can be vmapped (grouped convolutions are slower on a CPU). "on" for a network
    that cannot be vmapped trains one by one, and says why once."""
    mode = exp.training.vectorise
    # An inherited optimiser state (training.inherit_optimizer) has its own Adam step count per
    # individual, where a vectorised group's optimiser keeps one for all its members.
    if mode == "off" or exp.training.inherit_optimizer:
        return False
    gpu = exp.resources.gpus_per_job > 0
    if not arch.is_chain():
        if mode == "auto" and not (gpu and arch.builder.factory is not None):
            return False
        from .vectorised import unvectorisable  # torch.func only on the driver, once
        why = unvectorisable(arch.builder)
        if why:
            log.warning("training.vectorise: this network cannot be trained under torch.func.vmap (%s): "
                        "training one individual at a time", why)
        return why is None
    if mode == "on":
        return True
    from ..topology import genome  # only when a spec is made, never when jobs are unpickled
    density = genome.layer_densities(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init)
    cfg = exp.training
    sparse = cfg.sparse_kernels == "on" or (cfg.sparse_kernels == "auto" and any(
        len(arch.info[n].shape) == 2 and arch.info[n].size >= cfg.sparse_min_size and density[n] < cfg.sparse_below
        for n in arch.maskable))
    return gpu or arch.parameters <= VECTORISE_CPU_MAX_PARAMS or sparse


@dataclass(frozen=True)
class Plan:
    """A measured path: vectorised or not, and which masked Linear layers run truly sparse."""

    vectorise: bool
    sparse_layers: tuple[str, ...]
    # Seconds an individual takes on each candidate (by its label), as measured.
    seconds: dict[str, float] = field(default_factory=dict, compare=False)
    # Where BUDGET stopped the timing: the evaluations of the run it was measured for (a longer
    # run is another experiment, with a plan of its own).
    limited_to: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return label(self.vectorise, self.sparse_layers)

    def to_json(self) -> dict:
        return {"vectorise": self.vectorise, "sparse_layers": list(self.sparse_layers), "seconds": self.seconds,
                "limited_to": self.limited_to}

    @classmethod
    def from_json(cls, d: object, source: str) -> "Plan":
        """A stored plan; anything else is refused, naming `source` and how to mend it."""
        ok = (isinstance(d, dict) and isinstance(d.get("vectorise"), bool)
              and isinstance(d.get("sparse_layers"), list) and all(isinstance(n, str) for n in d["sparse_layers"])
              and isinstance(d.get("seconds", {}), dict)
              and (d.get("limited_to") is None or type(d.get("limited_to")) is int))
        if not ok:
            raise ConfigError([f"not a training plan ({{'vectorise': bool, 'sparse_layers': [names], optional "
                               f"'seconds': {{label: seconds}} and 'limited_to': int or null}}): {d!r:.200}; "
                               f"delete it to measure the paths again (the run may then round differently)"],
                              source=source)
        return cls(d["vectorise"], tuple(d["sparse_layers"]),
                   {str(k): float(v) for k, v in d.get("seconds", {}).items()}, d.get("limited_to"))


def label(vectorise: bool, sparse_layers: tuple[str, ...] | list[str]) -> str:
    way = "vectorised groups" if vectorise else "one by one"
    return f"{way}, sparse: {', '.join(n.removesuffix('.weight') for n in sparse_layers) or 'none'}"
