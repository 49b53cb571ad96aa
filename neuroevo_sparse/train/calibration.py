"""The "auto" training path, chosen by measuring the candidates (training.auto_by = "measurement").

Which path trains an individual fastest (one at a time or in vectorised groups; each masked
Linear layer dense, weight * mask, or truly sparse) depends on the machine, the layer shapes,
the density and the batch size. The rules (paths.py, sparse.layers_to_sparsify) are thresholds
measured on one machine. So when a run starts, each candidate trains a few steps of the run's
own network at its density and batch size on its data, and the fastest is used. The rules'
own choice is kept unless another path is more than MARGIN faster: a closer call is within
the noise of a measurement, and the rules' choice is the one every machine would make.

The paths round differently, so the choice is an input of the results, like the seed:
- it is cached per machine, torch and package version, problem and experiment (the whole
  config, its length included), and a cached plan is never replaced: a second run of a config
  on the same machine takes the same path, bit for bit, whatever other runs measured between
  the two (one config's plan never depends on another's measurement);
- it is stored in the run directory (plan.json), and a resumed run uses that, whatever the
  cache says;
- it is measured at a fixed group size (GROUP, or training.vectorise_group), not the
  cluster's, so it does not depend on how many workers there are;
- it is logged with the times that made it.
GPUs use the rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from . import kernels
from ..config.schema import ConfigError, Experiment
from ..problem.data import Splits
from ..topology.genome import Init, layer_densities, random_genome, target_counts
from .jobs import TrainJob, TrainSpec
from .paths import Plan, label, spec_for
from ..problem.models import Architecture
from .sparse import layers_to_sparsify
from .core import DeviceData, total_steps
from .worker import train_group

log = logging.getLogger("neuroevo_sparse")

# The rules' choice stands unless another path is this much faster.
MARGIN = 0.10
# The group a vectorised candidate is measured with (the GPU's fixed group is also 8).
GROUP = 8
# Steps a candidate is first timed for, beside a run of one step, until the two differ by
# WINDOW seconds; the evaluation samples of those timed runs.
STEPS = 8
WINDOW = 0.05
SHORT_EVAL = 256
# A candidate whose steps alone take this many times the fastest so far is not timed further;
# one the rules' choice loses to is timed this many times more, beside it.
ABANDON = 1.5
CONFIRM = 2
# The least share of a network's masked weights a layer must hold for its own choice to be timed.
FLIP_SHARE = 0.02
# No further path is timed once that would bring the measuring above this share of the run's
# predicted training time (the rules' path, for every evaluation the run makes): on a short run
# a faster path cannot win back more than timing it costs.
BUDGET = 0.05


def plan_for(exp: Experiment, arch: Architecture, splits: Splits) -> Plan | None:
    """The measured path for this run (from the cache, or measured now and cached), or None
    where the rules decide: training.auto_by = "rules", a GPU, or nothing left to choose."""
    if exp.training.auto_by == "rules" or exp.resources.gpus_per_job > 0:
        return None
    rules = spec_for(exp, arch)
    jobs = _jobs(exp, arch)
    candidates = _candidates(exp, arch, rules, jobs[0])
    if len(candidates) < 2:
        return None
    key = _key(exp, arch, splits, rules, candidates)
    cached = _read_cache().get(key)
    if cached is not None:
        try:
            plan = Plan.from_json(cached, str(cache_file()))
        except ConfigError:
            log.warning("the cached training plan %s in %s is damaged: measuring again", key, cache_file())
        else:
            log.info("training path: %s (measured on this machine for this experiment before; cached in %s)",
                     plan.label, cache_file())
            return plan
    plan = _measure(exp, rules, candidates, jobs, splits)
    if plan is not None:
        _write_cache(key, plan)
    return plan


def _jobs(exp: Experiment, arch: Architecture) -> list[TrainJob]:
    """GROUP individuals of the run's network at its density (its reference density, for runs
    that search sizes), drawn from a generator of their own: never the run's."""
    rng = np.random.default_rng(0)
    counts = target_counts(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init)
    genomes = [random_genome(i, arch.template, arch.info, counts, Init.of(exp.training), rng)
               for i in range(_group_size(exp))]
    return [TrainJob(g.id, 0, g.id, g.masks, g.weights) for g in genomes]


def _candidates(exp: Experiment, arch: Architecture, rules: TrainSpec, job: TrainJob
                ) -> list[tuple[bool, tuple[str, ...]]]:
    """(vectorise, sparse layers) of every path worth timing, the rules' choice first: on each
    way of training (one by one; vectorised groups), the rules' layers, then those with one
    layer turned from dense to sparse or back. Only layers that hold FLIP_SHARE of the masked
    weights are turned, the largest first: a smaller one changes a step by less than a timing can
    tell."""
    cfg = exp.training
    modes = [rules.vectorise]
    # Other networks than the built-in MLP are vmapped whole in fixed groups (paths.FIXED_GROUP):
    # on a cluster with more slots than groups, a step faster per individual could make a
    # generation slower. Their way of training stays the rules'.
    # With training.inherit_optimizer, one by one only (paths._vectorise says why).
    if cfg.vectorise == "auto" and (rules.vectorise or arch.is_chain()) and not cfg.inherit_optimizer:
        modes.append(not rules.vectorise)
    density = layer_densities(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init)
    total = sum(arch.info[n].size for n in arch.maskable)
    flippable = sorted((n for n in arch.maskable if len(arch.info[n].shape) == 2 and density[n] < cfg.sparse_below
                        and arch.info[n].size >= FLIP_SHARE * total), key=lambda n: (-arch.info[n].size, n))
    chosen: list[tuple[bool, tuple[str, ...]]] = []
    for vec in modes:
        base = _rule_layers(arch, rules, job, vec)
        chosen.append((vec, base))
        if cfg.sparse_kernels != "auto" or (vec and not arch.is_chain()):
            continue
        chosen += [(vec, tuple(sorted(set(base) ^ {n}))) for n in flippable]
    return chosen


def _rule_layers(arch: Architecture, rules: TrainSpec, job: TrainJob, vectorise: bool) -> tuple[str, ...]:
    """The layers the rules run sparse on that path: none in vectorised groups of networks
    other than the built-in MLP; no minimum size on the native kernels."""
    if vectorise and not arch.is_chain():
        return ()
    native = vectorise and rules.native_kernels
    return tuple(sorted(layers_to_sparsify(job.masks, rules.training, 0 if native else None)))


def _measure(exp: Experiment, rules: TrainSpec, candidates: list[tuple[bool, tuple[str, ...]]],
             jobs: list[TrainJob], splits: Splits) -> Plan | None:
    """Time the rules' layers on each way of training first, then the other layer sets of the
    ways that are not far behind. If a candidate beats the rules' choice by more than MARGIN,
    the two are timed again, interleaved, CONFIRM times more: a switch is made on repeated
    evidence, never on one timing. A candidate timed more than once counts its least time
    (interruptions only ever add time). Timing stops at BUDGET of the run's predicted time."""
    log.info("measuring up to %d training paths on this network (once on this machine: the choice is cached)",
             len(candidates))
    started = time.perf_counter()
    cfg = exp.training
    steps = total_steps(cfg, len(splits.train_y))
    timer = _Timer(rules, jobs, splits, steps)
    timer.warm_up(*candidates[0])
    seconds: dict[tuple[bool, tuple[str, ...]], list[float]] = {}
    behind: set[tuple[bool, tuple[str, ...]]] = set()  # abandoned: their steps alone took too long

    runs = exp.evaluations
    over_budget: float | None = None  # the run's predicted training time, once it stopped the timing

    def affordable() -> bool:
        """Whether timing one more path, at the mean cost of those so far, keeps the measuring
        within BUDGET of the run's predicted time (on the rules' path, else the fastest)."""
        nonlocal over_budget
        if over_budget is None and seconds:
            each = min(seconds[candidates[0]]) if candidates[0] in seconds else min(min(v) for v in seconds.values())
            if (time.perf_counter() - started) * (1 + 1 / len(seconds)) > BUDGET * each * runs:
                over_budget = each * runs
        return over_budget is None

    def measure(c: tuple[bool, tuple[str, ...]]) -> None:
        best = min((min(v) for k, v in seconds.items() if k not in behind), default=None)
        give_up = None if best is None else ABANDON * best
        try:
            estimate, complete = timer.seconds(*c, give_up=give_up)
        except RuntimeError as e:
            log.info("  %s: could not be measured (%s)", label(*c), e)
            return
        seconds[c] = [estimate]
        if not complete:
            behind.add(c)

    firsts = [c for i, c in enumerate(candidates) if c[0] not in {d[0] for d in candidates[:i]}]
    for c in firsts:
        if affordable():
            measure(c)
    if not seconds:
        log.warning("no training path could be measured on this network: the rules choose it")
        return None
    best = min(min(v) for v in seconds.values())
    ahead = {c[0] for c in firsts if c in seconds and min(seconds[c]) <= ABANDON * best}
    for c in candidates:
        if c not in firsts and c[0] in ahead and affordable():
            measure(c)
    if over_budget is not None:
        log.info("  timed %d of the %d: one more would bring the measuring over %.0f%% of the run's predicted "
                 "training time (%.1f s)", len(seconds), len(candidates), 100 * BUDGET, over_budget)
    rule = candidates[0]
    least = {c: min(v) for c, v in seconds.items()}
    fastest = min(least, key=least.__getitem__)
    if rule in least and fastest != rule and least[rule] > (1 + MARGIN) * least[fastest]:
        try:
            for _ in range(CONFIRM):
                for c in (rule, fastest):
                    seconds[c].append(timer.seconds(*c)[0])
        except RuntimeError as e:
            log.info("  timing again failed (%s): the first timings decide", e)
        least = {c: min(v) for c, v in seconds.items()}
        fastest = min(least, key=least.__getitem__)
    pick = rule if rule in least and least[rule] <= (1 + MARGIN) * least[fastest] else fastest
    for c, s in sorted(least.items(), key=lambda kv: kv[1]):
        log.info("  %-52s %s%8.1f ms an individual%s%s%s", label(*c), ">" if c in behind else " ", 1e3 * s,
                 f" (least of {len(seconds[c])})" if len(seconds[c]) > 1 else
                 " (its steps alone: not timed further)" if c in behind else "",
                 "  <- chosen" if c == pick else "", "  (the rules' choice)" if c == rule else "")
    why = (f"the rules' choice, within {100 * MARGIN:.0f}% of the fastest" if pick == rule else
           f"{least[rule] / least[pick]:.2f}x faster than the rules' choice" if rule in least else
           "the rules' choice could not be measured")
    log.info("training path: %s (%s; measured in %.1f s)", label(*pick), why, time.perf_counter() - started)
    return Plan(pick[0], pick[1], {label(*c): s for c, s in least.items()},
                runs if over_budget is not None else None)


class _Timer:
    """Seconds an individual takes on a path for the run's steps and evaluation: a timed run of
    1 step with the whole evaluation, plus the run's other steps at the cost of one step. That
    cost is the difference of timed runs of 1 and 1 + n steps (with a short evaluation), n
    grown until the difference is WINDOW or more: a shorter one would be mostly noise."""

    def __init__(self, rules: TrainSpec, jobs: list[TrainJob], splits: Splits, steps: int):
        self.rules, self.jobs, self.steps = rules, jobs, steps
        self.short, self.full = DeviceData(_head(splits, SHORT_EVAL)), DeviceData(splits)

    def _timed(self, vectorise: bool, layers: tuple[str, ...], data: DeviceData, steps: int) -> float:
        spec = replace(self.rules, vectorise=vectorise, sparse_layers=layers, time_limit_s=None,
                       training=replace(self.rules.training, steps=steps))
        start = time.perf_counter()
        results = train_group(self.jobs if vectorise else self.jobs[:1], spec, data)
        took = time.perf_counter() - start
        failed = next((r for r in results if r.status != "ok"), None)
        if failed is not None:
            raise RuntimeError(f"{failed.status}: {failed.error}")
        return took

    def warm_up(self, vectorise: bool, layers: tuple[str, ...]) -> None:
        """One untimed run: the first calls of a process allocate and load."""
        try:
            self._timed(vectorise, layers, self.short, 1)
        except RuntimeError:
            pass  # the candidate's own measurement says so

    def seconds(self, vectorise: bool, layers: tuple[str, ...], give_up: float | None = None,
                ) -> tuple[float, bool]:
        """(the estimate, True); if the steps alone take longer than `give_up`, (that lower
        bound, False)."""
        def timed(data: DeviceData, steps: int) -> float:
            return self._timed(vectorise, layers, data, steps)
        one, n = timed(self.short, 1), STEPS
        many = timed(self.short, 1 + n)
        while many - one < WINDOW and n < self.steps:
            n = min(self.steps, 2 * n)
            many = timed(self.short, 1 + n)
        def steps() -> float:
            return (self.steps - 1) * max(0.0, (many - one) / n)
        individuals = len(self.jobs) if vectorise else 1
        if give_up is not None and steps() / individuals > give_up:
            return steps() / individuals, False
        return (timed(self.full, 1) + steps()) / individuals, True


def _head(splits: Splits, n: int) -> Splits:
    return replace(splits, val_x=splits.val_x[:n], val_y=splits.val_y[:n],
                   test_x=splits.test_x[:n], test_y=splits.test_y[:n])


# ---------------------------------------------------------------------------- the cache
def cache_file() -> Path:
    """$NEUROEVO_SPARSE_CACHE/plans.json, else under $XDG_CACHE_HOME or ~/.cache."""
    root = os.environ.get("NEUROEVO_SPARSE_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuroevo_sparse")
    return Path(root) / "plans.json"


def _key(exp: Experiment, arch: Architecture, splits: Splits, rules: TrainSpec,
         candidates: list[tuple[bool, tuple[str, ...]]]) -> str:
    """What a measurement is for: the machine and software, the problem's shape, and the
    experiment itself (its config hash, which leaves out the keys a resume may change, its
    length among them), so that no run ever takes a path another experiment measured, and a
    run extended by `resume --generations` takes the path a run configured that long from the
    start takes: a config's path is a function of the config and the machine."""
    cfg = exp.training
    machine = [platform.machine(), _cpu_model(), os.cpu_count(), torch.__version__, __version__, kernels.status()]
    problem = [exp.model.factory or exp.model.kind, {k: list(v.shape) for k, v in arch.template.items()},
               {n: round(float(d), 4) for n, d in
                layer_densities(arch.info, arch.maskable, exp.sparsity.density, exp.sparsity.init).items()},
               cfg.batch_size, cfg.optimizer, cfg.steps, cfg.epochs, len(splits.train_y), len(splits.val_y),
               len(splits.test_y) if rules.score_test else 0, rules.torch_threads, rules.native_kernels,
               _group_size(exp), candidates, exp.hash()]
    text = json.dumps([machine, problem], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _group_size(exp: Experiment) -> int:
    return exp.training.vectorise_group if exp.training.vectorise_group != "auto" else GROUP


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _read_cache() -> dict:
    path = cache_file()
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring the training-plan cache %s (%s): the paths are measured again", path, e)
        return {}
    return d if isinstance(d, dict) else {}


def _write_cache(key: str, plan: Plan) -> None:
    """Atomically; a cache that cannot be written costs a measurement next time, nothing else."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache()
        entries[key] = plan.to_json()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache the training plan in %s (%s): the next run measures again", path, e)
