"""Starting and resuming runs: data, evaluator, run directory and loop put together."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .problem import data
from .config import plugins
from .report import tracking
from .train.calibration import Plan, plan_for
from .config.schema import RESUME_SAFE_KEYS, ConfigError, Experiment, diff, to_toml
from .evaluators import ClusterLost, Cluster, connect, make as make_evaluator
from .evolution.loop import Callback, Evolution, State
from .train.jobs import TrainSpec
from .train.paths import spec_for
from .problem.models import Architecture
from .store import RunDir

log = logging.getLogger("neuroevo_sparse")


def start(exp: Experiment, run_dir: str | Path | None = None,
          should_stop: Callable[[], bool] = lambda: False,
          on_created: Callable[[Path], None] = lambda path: None,
          callbacks: Sequence[Callback] = (), splits: Future[data.Splits] | None = None,
          ) -> tuple[RunDir, State]:
    """Run an experiment from generation 0 in a new run directory. `splits`: its data, already
    loading (`data.load(exp.data, exp.experiment.seed)` in a thread), else loaded here."""
    # Data and network before the run dir: a missing dataset or a broken factory leaves nothing.
    tracking.check(exp)
    splits, arch, spec, plan, cluster = _prepare(exp, splits, measure=True)
    try:
        run = RunDir.create(exp, run_dir, plan.to_json() if plan else None)
    except BaseException:
        _close(cluster)
        raise
    try:
        on_created(run.path)
        log.info("run directory: %s", run.path)
        log.info("data: %s %s", exp.data.factory or exp.data.dataset, splits.summary())
        log.info("network: %s, %d parameters, %d masked tensor(s)", exp.model.factory or exp.model.kind,
                 arch.parameters, len(arch.maskable))
        return run, _execute(exp, run, splits, None, should_stop, callbacks, arch, spec, cluster)
    finally:
        run.release()


def _prepare(exp: Experiment, splits: Future[data.Splits] | None = None, plan: Plan | None = None,
             measure: bool = False) -> tuple[data.Splits, Architecture, TrainSpec, Plan | None, Cluster | None]:
    """The data, the network and what workers are told to do with it, loaded in a thread while
    the evaluator's cluster starts (a local Ray takes ~5 s, the data about as long: their
    start-ups overlap). The path is `plan`, or with `measure` the one measured for this machine
    (calibration.py), else the rules'. Everything a config can get wrong is found here, before
    anything is written. Errors come as they would alone; a cluster started here is stopped on
    any of them."""
    factory = plugins.resolve(exp.model.factory, "model.factory") if exp.model.factory else None
    with ThreadPoolExecutor(1, thread_name_prefix="neuroevo-data") as pool:
        loading = pool.submit(_data_and_network, exp, factory, splits)
        cluster = None
        try:
            cluster = connect(exp, factory)
            splits, arch = loading.result()
            # Once the cluster is up: its start-up would slow some timings and not others.
            if measure:
                plan = plan_for(exp, arch, splits)
            spec = spec_for(exp, arch, plan)
        except BaseException:
            _close(cluster)
            raise
    return splits, arch, spec, plan, cluster


def _data_and_network(exp: Experiment, factory, loading: Future[data.Splits] | None,
                      ) -> tuple[data.Splits, Architecture]:
    splits = data.load(exp.data, exp.experiment.seed) if loading is None else loading.result()
    return splits, Architecture.of(exp, splits.input_shape, splits.num_classes, factory)


def _close(cluster: Cluster | None) -> None:
    if cluster is not None:
        cluster.close()


def resume(run_path: str | Path, overrides: list[str] | None = None, generations: int | None = None,
           should_stop: Callable[[], bool] = lambda: False,
           callbacks: Sequence[Callback] = ()) -> tuple[RunDir, State]:
    """Continue a run from its newest valid checkpoint, as if it had never stopped.

    Overrides may change only keys that cannot change what is computed (RESUME_SAFE_KEYS);
    anything else is refused with the list of changed keys.
    """
    run = RunDir(run_path)
    if not run.config_path.is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory (no config.toml)")
    # Before anything is read or written: another writer's files are not stale, and a
    # checkpoint read while it works could be pruned by it.
    run.acquire("resume")
    try:
        return _resume(run, overrides, generations, should_stop, callbacks)
    finally:
        run.release()


def _resume(run: RunDir, overrides: list[str] | None, generations: int | None, should_stop: Callable[[], bool],
            callbacks: Sequence[Callback]) -> tuple[RunDir, State]:
    for path in run.remove_stale_temporaries():
        log.info("removed %s, left half-written by a process that was killed", path)
    original = run.config()
    exp = run.config(overrides)
    if generations is not None:
        exp = replace(exp, evolution=replace(exp.evolution, generations=generations))
    changed = {k: v for k, v in diff(original, exp).items() if k not in RESUME_SAFE_KEYS}
    if changed:
        lines = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()]
        raise ConfigError(lines + [f"only these keys may change on resume: {', '.join(sorted(RESUME_SAFE_KEYS))}"],
                          source=f"resuming {run.path}")
    # A run stopped before its first checkpoint computed nothing that could be lost:
    # resuming it is starting it, in the same directory.
    loaded = run.load_checkpoint() if run.has_checkpoint() else None
    done = _check_checkpoint(run, loaded, original, exp) if loaded else -1
    # The path the run started on, never measured again: another would round differently.
    # A run without plan.json started on the rules' path.
    stored = run.read_plan()
    plan = None if stored is None else Plan.from_json(stored, str(run.plan_path))
    if plan is not None:
        log.info("training path: %s (as the run started: %s)", plan.label, run.plan_path)
    splits, arch, spec, plan, cluster = _prepare(exp, plan=plan)
    try:
        _check_groups(original, exp, arch, spec)
        if exp != original:
            run.config_path.write_text(to_toml(exp))
        dropped = run.drop_history_after(done)
        missing = run.missing_history(done)
    except BaseException:
        _close(cluster)
        raise
    if missing:
        log.warning("history parts of generation(s) %s are missing: they cannot be recomputed from the "
                    "checkpoint, so this run's history will lack them (inspect and plot will say so)",
                    ", ".join(map(str, missing)))
    if loaded:
        log.info("resuming %s from %s%s", run.path, loaded.path.name,
                 f" (history of {len(dropped)} later generation(s) replaced)" if dropped else "")
    else:
        log.info("%s has no checkpoint yet: starting it from generation 0", run.path)
    return run, _execute(exp, run, splits, loaded, should_stop, callbacks, arch, spec, cluster)


def _check_groups(original: Experiment, exp: Experiment, arch: Architecture, spec: TrainSpec) -> None:
    """training.vectorise_group may change on resume only where a member's arithmetic does not
    depend on its group: an MLP on a CPU. A vmapped network's batched ops, and a GPU's, round
    by group size, so there the groups are part of the results."""
    if exp.training.vectorise_group == original.training.vectorise_group or not spec.vectorise:
        return
    if exp.resources.gpus_per_job > 0 or not arch.is_chain():
        raise ConfigError([f"training.vectorise_group: {original.training.vectorise_group!r} -> "
                           f"{exp.training.vectorise_group!r}: this run's vectorised groups "
                           f"({'on a GPU' if exp.resources.gpus_per_job > 0 else 'a network trained under vmap'}) "
                           f"round by their size, so resuming with other groups would not continue the same run"],
                          source="resuming")


def _check_checkpoint(run: RunDir, loaded, original: Experiment, exp: Experiment) -> int:
    """The generation a checkpoint continues from, once it is known to belong to this run,
    this version and this request."""
    for why in loaded.skipped:
        log.warning("damaged checkpoint skipped, using an older one: %s", why)
    written_by = str(loaded.state.get("versions", {}).get("neuroevo_sparse", "unknown"))
    if written_by.split(".")[:2] != __version__.split(".")[:2]:
        raise ConfigError([f"its checkpoints were written by neuroevo_sparse {written_by}; this is {__version__}, "
                           f"whose defaults and operators differ (see CHANGELOG.md), so resuming would not continue "
                           f"the same run: finish it with {written_by}, or start a new run"],
                          source=f"resuming {run.path}")
    done = loaded.state["generation"]
    if exp.evolution.generations < done:
        raise ConfigError([f"--generations {exp.evolution.generations}: the run has already done {done} "
                           f"generation(s) (checkpoint {loaded.path.name}); ask for {done} or more"],
                          source=f"resuming {run.path}")
    if loaded.state["config_hash"] != original.hash():
        raise ConfigError([f"config.toml of {run.path} does not match the checkpoint's config hash "
                           f"({original.hash()} != {loaded.state['config_hash']}): it was edited by hand"],
                          source=str(run.config_path))
    return done


def _execute(exp, run, splits, loaded, should_stop, callbacks, arch: Architecture, spec: TrainSpec,
             cluster: Cluster | None) -> State:
    evaluator = None
    trackers = []
    try:
        trackers = tracking.trackers(exp, run.path)
        evaluator = make_evaluator(exp, spec, splits, cluster)
        evo = Evolution(exp, arch, evaluator, run, should_stop, [*callbacks, *trackers])
        state = evo.restore(loaded.state, loaded.arrays_of) if loaded else None
        return evo.run(state)
    except ClusterLost as e:
        raise ClusterLost(f"{e}\nEvery generation completed before it is checkpointed in {run.path}; "
                          f"once the cluster is back, continue with:\n  neuroevo resume {run.path}") from e
    finally:
        for t in trackers:
            t.close()
        if evaluator is not None:
            evaluator.close()  # and with it the cluster
        else:
            _close(cluster)

