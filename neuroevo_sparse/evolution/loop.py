"""The generational loop: select parents, vary, train, write back, select survivors, record.

Read `Evolution.run` top to bottom: it is the whole algorithm. Each generation g draws all
its random choices from a generator derived from (seed, "variation", g) and trains each
individual with the seed (seed, "train", g, id). A generation is therefore a pure function
of the population that entered it, which is what a checkpoint stores: resuming from
generation g gives exactly the run that never stopped.

History: generation 0 records the initial population; generation g >= 1 records the
population that entered it (parents) and the offspring born in it, one row each, with
`evaluated` (trained in g) and `selected` (survived g). A run of G generations, population
mu and lambda offspring therefore has mu + G * (mu + lambda) rows (1 + evolution.trunk_rungs
more with evolution.trunk_steps: the trunk's and its rungs', in generation 0; plus the
polished, in the last).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from .. import faults
from .. import seeds
from ..config.schema import Experiment
from ..evaluators import Evaluator
from .fitness import Objectives, restore_archive
from ..topology.genome import Genome, Init, inherited_optimiser, pruned, random_genome, target_counts
from ..train.jobs import Base, TrainJob, TrainResult
from ..problem.models import Architecture
from .operators import Variation, clone, make_toolbox
from .progress import Progress
from ..store import RunDir

log = logging.getLogger("neuroevo_sparse")


class AllFailed(RuntimeError):
    """Every individual of a generation failed: there is nothing to select, so the run stops
    (with the generations before it checkpointed) instead of evolving zeros."""


@dataclass
class State:
    """Everything the next generation depends on."""

    generation: int
    population: list[Genome]
    archive: list[Genome]
    next_id: int
    # Every individual that is, or may yet be, on the front the history offers (`Front`):
    # kept so that each point `inspect`, `Run.front` and `export --max-params` name can be exported.
    front: list[Genome] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationInfo:
    """What a callback (`on_generation`) sees once a generation is recorded in the history."""

    generation: int
    run_dir: Path
    evaluated: int                 # individuals trained in this generation
    failed: int                    # of which failed (diverged, crashed, timed out)
    best: dict[str, Any]           # the best survivor: id, fitness, accuracies, density, active_params
    hypervolume: float | None      # the Pareto archive's (pareto mode), else None
    # What trackers plot: fitness/best, fitness/mean, val_accuracy/best|mean, density/best|mean,
    # active_params/best, hypervolume (pareto), failed, evaluated, throughput/jobs_per_s, seconds.
    scalars: dict[str, float] = field(default_factory=dict)


# A function of a GenerationInfo, or an object with an `on_generation(info)` method (a tracker).
Callback = Callable[[GenerationInfo], None]


def _call(callback: Any, info: GenerationInfo) -> None:
    (callback.on_generation if hasattr(callback, "on_generation") else callback)(info)


class Evolution:
    def __init__(self, exp: Experiment, arch: Architecture, evaluator: Evaluator, run: RunDir,
                 should_stop: Callable[[], bool] = lambda: False, callbacks: Sequence[Callback] = ()):
        self.exp = exp
        self.callbacks = list(callbacks)
        self.seed = exp.experiment.seed
        self.evaluator = evaluator
        self.run_dir = run
        self.should_stop = should_stop
        self.input_shape, self.num_classes = arch.input_shape, arch.num_classes
        self.info, self.maskable, self.template = arch.info, arch.maskable, arch.template
        self.objectives = Objectives(exp.fitness, self.info)
        self.variation = Variation.of(exp, self.info, self.maskable)
        self.toolbox = make_toolbox(exp, self.variation)
        if not exp.sparsity.fixed:  # the smallest network allowed must still connect every layer
            target_counts(self.info, self.maskable, exp.sparsity.min_density, exp.sparsity.init, "sparsity.min_density")
        self.archive = self.objectives.make_archive()
        self.front = Front(exp.evolution.retrain_survivors)
        # The history gets a lineage_steps column where the run uses lineages' steps (fixed-size
        # runs without these keys keep their histories column for column).
        self.lineages = (exp.training.lineage_schedule != "none" or exp.evolution.polish_steps > 0
                         or exp.evolution.trunk_steps > 0)

    # ------------------------------------------------------------------------ the loop
    def run(self, state: State | None = None, generations: int | None = None) -> State:
        ev = self.exp.evolution
        last = self._last = ev.generations if generations is None else generations
        first = 0 if state is None else state.generation + 1
        trainings = lambda n: n + self.exp.trained_on(n)  # noqa: E731  (halving adds the jobs that go on)
        jobs = (trainings(ev.population) if first == 0 else 0) + \
            (last - max(first, 1) + 1) * trainings(self.exp.jobs_per_generation)
        progress = Progress(self.exp.output.progress, max(jobs, 0), first, last)
        last_checkpoint = time.monotonic()
        frozen = _freeze_older_objects()
        try:
            if state is None:
                state = self._initial(progress)
                self._checkpoint(state)
                # Finished before generation 1 trains: there is no older checkpoint to fall back on,
                # and a driver that dies with no checkpoint (a vanished Ray cluster ends it natively,
                # no handler runs) leaves a run that cannot be resumed.
                self._finish_checkpoint()
                last_checkpoint = time.monotonic()
            while state.generation < last and not self.should_stop():
                state = self._generation(state, progress)
                if self._checkpoint_due(state, last, last_checkpoint):
                    self._checkpoint(state)
                    last_checkpoint = time.monotonic()
            if not self._checkpointed(state):
                self._checkpoint(state)
        except BaseException:
            # The generation in flight is lost; what completed before it is kept on disk.
            if state is not None and not self._checkpointed(state):
                self._checkpoint(state)
            raise
        finally:
            progress.close()
            self._finish_checkpoint()
            if frozen:
                gc.unfreeze()
        return state

    def _initial(self, progress: Progress) -> State:
        ev = self.exp.evolution
        progress.generation_started(0)
        self._started = time.monotonic()
        if ev.trunk_steps > 0:  # ids 0..R are the trunk and its rungs, the population R+1..R+n
            trunk = self._trunk(progress)
            population = [self._inherit(pruned(_rung_for(trunk, counts), len(trunk) + i, counts), trunk)
                          for i, counts in enumerate(self._initial_counts())]
        else:
            trunk = []
            rng = seeds.rng(self.seed, "init")
            population = [random_genome(i, self.template, self.info, counts, Init.of(self.exp.training), rng)
                          for i, counts in enumerate(self._initial_counts())]
        self._evaluate(population, 0, progress)
        # The trunk is a network the run trained: it may be on the front like any other.
        self.archive.update(trunk + population)
        self._score_test(population, 0)
        self._record(0, parents=[], offspring=trunk + population, survivors=population, progress=progress)
        self.front.update(0, trunk + population, population)
        return State(0, population, list(self.archive), ev.population + len(trunk), self.front.members())

    def _trunk(self, progress: Progress) -> list[Genome]:
        """evolution.trunk_steps: one network at the largest size, initialised as the population
        is, trained with its rate decayed by a cosine to zero (a polish from the start); then,
        with evolution.trunk_rungs, its pruning ladder, each rung pruned from the one above and
        trained the same way. The trunk first, then the rungs from large to small."""
        sp, ev = self.exp.sparsity, self.exp.evolution
        density, key = (sp.density, "sparsity.density") if sp.fixed else (sp.max_density, "sparsity.max_density")
        counts = self.variation.fit(target_counts(self.info, self.maskable, density, sp.init, key))
        trunk = random_genome(0, self.template, self.info, counts, Init.of(self.exp.training),
                              seeds.rng(self.seed, "trunk"))
        ladder = [self._train_alone(trunk, seeds.derive(self.seed, "trunk"), ev.trunk_steps, progress)]
        for k in range(1, ev.trunk_rungs + 1):
            d = sp.max_density * (sp.min_density / sp.max_density) ** (k / ev.trunk_rungs)
            counts = self.variation.fit(target_counts(self.info, self.maskable, d, sp.init, "sparsity.min_density"))
            rung = self._inherit(pruned(ladder[-1], k, counts), ladder)
            ladder.append(self._train_alone(rung, seeds.derive(self.seed, "trunk", k), ev.trunk_rung_steps, progress))
        return ladder

    def _train_alone(self, genome: Genome, seed: int, steps: int, progress: Progress) -> Genome:
        """One network of the trunk trained on its own (operator "trunk"), its rate decayed to zero."""
        genome.operator = "trunk"
        job = TrainJob(genome.id, 0, seed, genome.masks, genome.weights, lineage_step=genome.lineage_steps,
                       steps=steps, polish=True, optimiser=genome.optimiser)
        progress.jobs_dropped(-1)  # a job the total did not count
        results = self._train([job], 0, progress)
        self._all_failed(0, [(r.status, r.error) for r in results])
        self._write_back([genome], [job], results)
        # Its only row is generation 0's, which the scoring of the last generation never
        # reaches: on the front it would have no test accuracy, so it is scored now.
        if genome.metrics.get("status") == "ok" and genome.metrics.get("test_accuracy") is None:
            test = TrainJob(genome.id, 0, 0, genome.masks, genome.network_weights(), test_only=True)
            r = self.evaluator.evaluate([test])[0]
            if r.status == "ok":
                genome.metrics = {**genome.metrics, "test_accuracy": r.test_accuracy}
        return genome

    def _initial_counts(self) -> list[dict[str, int]]:
        """Per individual, its active connections per layer: all at `sparsity.density`, or with
        sizes searched, at densities drawn log-uniformly between the bounds (so the first
        generation already spans the sizes the front is to cover)."""
        sp, n = self.exp.sparsity, self.exp.evolution.population
        if sp.fixed:
            return [target_counts(self.info, self.maskable, sp.density, sp.init)] * n
        rng = seeds.rng(self.seed, "init-density")
        densities = np.exp(rng.uniform(np.log(sp.min_density), np.log(sp.max_density), size=n))
        return [self.variation.fit(target_counts(self.info, self.maskable, float(d), sp.init, "sparsity.min_density"))
                for d in densities]

    def _generation(self, state: State, progress: Progress) -> State:
        ev, g = self.exp.evolution, state.generation + 1
        progress.generation_started(g)
        self._started = time.monotonic()
        rng = seeds.rng(self.seed, "variation", g)

        n = self.exp.n_offspring
        parents = self.objectives.select_parents(state.population, n + n % 2, ev.tournament_size, rng)
        offspring = self._vary(parents, state.next_id, g, rng)[:n]

        trained = offspring + (state.population if ev.retrain_survivors else [])
        self._evaluate(trained, g, progress, made_from=state.population)

        if ev.survival == "plus":
            survivors = self.objectives.select_survivors(state.population + offspring, ev.population)
        else:
            elites = self.objectives.select_survivors(state.population, ev.elitism)
            survivors = elites + self.objectives.select_survivors(offspring, ev.population - ev.elitism)
        # A Pareto archive holds every non-dominated individual evaluated so far, survivor or
        # not (its hypervolume can then never fall); a hall of fame the best survivors.
        self.archive.update(trained + survivors if self.exp.fitness.mode == "pareto" else survivors)
        polished = []
        if g == ev.generations and ev.polish_steps > 0:
            polished = self._polish(g, state.next_id + len(offspring), progress)
        self._score_test(survivors, g, trained + polished)
        self._record(g, state.population, offspring + polished, survivors, progress)
        # In the order of the history's rows: the parents, then the offspring, then the polished.
        retrained = {id(t) for t in trained}
        self.front.update(g, [p for p in state.population if id(p) in retrained] + offspring + polished,
                          survivors)
        return State(g, survivors, list(self.archive), state.next_id + len(offspring) + len(polished),
                     self.front.members())

    def _polish(self, g: int, next_id: int, progress: Progress) -> list[Genome]:
        """evolution.polish_steps: each member of the archive, in its order, trained on as a new
        individual (operator "polish") with a rate that decays to zero; the polished networks
        enter the archive, where they replace the members they beat on validation."""
        members = [m for m in self.archive if m.metrics.get("status") == "ok"]
        polished = []
        for i, m in enumerate(members):
            child = self._inherit(clone(m, next_id + i, g), [m])
            child.operator = "polish"
            polished.append(child)
        jobs = [TrainJob(p.id, g, seeds.derive(self.seed, "polish", g, p.id), p.masks, p.weights,
                         lineage_step=p.lineage_steps, steps=self.exp.evolution.polish_steps, polish=True,
                         optimiser=p.optimiser)
                for p in polished]
        progress.jobs_dropped(-len(jobs))  # jobs the total did not count
        self._write_back(polished, jobs, self._train(jobs, g, progress))
        self.archive.update(polished)
        return polished

    def _vary(self, parents: list[Genome], next_id: int, g: int, rng: np.random.Generator) -> list[Genome]:
        """Pairs of parents -> pairs of new children: crossover with probability crossover_prob,
        then mutation with probability mutation_prob. A child that drew neither operator is
        mutated anyway, so no training is spent on an exact copy of a parent; with no mutation
        configured it is a clone: a new individual whose training goes on from the parent's
        weights (never the parent object itself, which would collapse the population)."""
        ev, tb = self.exp.evolution, self.toolbox
        children = []
        for i in range(0, len(parents), 2):
            a, b = parents[i], parents[i + 1]
            ids = (next_id + i, next_id + i + 1)
            # Drawn even when a is b, so that the stream of draws does not depend on who was picked.
            crossed = hasattr(tb, "mate") and rng.random() < ev.crossover_prob and a.id != b.id
            pair = tb.mate(a, b, ids, g, rng) if crossed else (a, b)
            for gid, child in zip(ids, pair):
                if tb.mutations and (not crossed or rng.random() < ev.mutation_prob):
                    op = tb.mutations[rng.integers(len(tb.mutations))]
                    mutant = getattr(tb, f"mutate_{op}")(child, gid, g, rng)
                    if crossed:  # lineage: the crossover's parents, both operators
                        mutant.parents, mutant.operator = child.parents, f"{child.operator}+{mutant.operator}"
                    child = mutant
                if child is a or child is b:  # no operator applied: a new individual, not the parent
                    child = clone(child, gid, g)
                children.append(self._inherit(child, [a, b]))
        return children

    def _inherit(self, child: Genome, parents: Sequence[Genome]) -> Genome:
        """`child`, its optimiser state inherited from `parents` (those among them that are its
        parents, in its order) under training.inherit_optimizer; as it is otherwise."""
        if self.exp.training.inherit_optimizer:
            mine = {g.id: g for g in parents}
            child.optimiser = inherited_optimiser(child, [mine[p] for p in child.parents if p in mine])
        return child

    # ------------------------------------------------------------------------ evaluation
    def _evaluate(self, genomes: list[Genome], generation: int, progress: Progress,
                  made_from: Sequence[Genome] = ()) -> None:
        """Train on the evaluator, write the results back (Lamarckian), assign fitness. With
        evolution.halving_at, in two parts: all of them to that point, then the best on.
        `made_from`: the population the genomes were varied from; each job names the arrays
        of its parents there (or its own, for a survivor trained again) as its bases, which
        the Ray evaluator ships once for all their children."""
        ev = self.exp.evolution
        # One Base per member, shared by the jobs of all its children (an evaluator tells bases
        # apart by their arrays, never by the Base object).
        known = {p.id: Base(p.id, p.masks, p.weights) for p in made_from}

        def bases(g: Genome) -> tuple[Base, ...]:
            return (known[g.id],) if g.id in known else tuple(known[p] for p in g.parents if p in known)

        jobs = [TrainJob(g.id, generation, seeds.derive(self.seed, "train", generation, g.id),
                         g.masks, g.weights, until=ev.halving_at or 1.0, lineage_step=g.lineage_steps,
                         optimiser=g.optimiser, bases=bases(g))
                for g in genomes]
        results = self._train(jobs, generation, progress)
        self._all_failed(generation, [(r.status, r.error) for r in results])  # before any write-back
        self._write_back(genomes, jobs, results)
        if ev.halving_at is not None:
            self._train_on(genomes, jobs, results, generation, progress)
            # Judged on the whole generation once both parts trained: one that fails in the
            # second part is one failed individual, as it would be in the first.
            self._all_failed(generation, [(g.metrics.get("status"), g.metrics.get("error")) for g in genomes])

    @staticmethod
    def _all_failed(generation: int, outcomes: list[tuple[str | None, str | None]]) -> None:
        """AllFailed if every individual of the generation failed: nothing is left to select."""
        if not outcomes or any(status == "ok" for status, _ in outcomes):
            return
        errors = sorted({f"{status}: {error}" for status, error in outcomes})
        raise AllFailed(f"every individual of generation {generation} failed ({len(outcomes)}), e.g. "
                        + "; ".join(e[:300] for e in errors[:3])
                        + ("; check training.lr and the data" if any("diverged" in e for e in errors) else ""))

    def _train_on(self, genomes: list[Genome], jobs: list[TrainJob], results: list[TrainResult],
                  generation: int, progress: Progress) -> None:
        """Successive halving's second part: the best of those that stopped part-way go on."""
        # Those that stopped part-way and are among the best go on from where they stopped.
        partial = {r.individual_id: (job, r) for job, r in zip(jobs, results) if r.status == "ok" and r.resume}
        planned = self.exp.trained_on(len(genomes))  # counted in the progress's total
        ranked = self.objectives.select_survivors([g for g in genomes if g.id in partial], planned)
        ranked_ids = {id(g) for g in ranked}
        kept = [g for g in genomes if id(g) in ranked_ids]  # in the generation's order
        on = [replace(partial[g.id][0], weights=partial[g.id][1].weights, resume=partial[g.id][1].resume,
                      until=1.0) for g in kept]
        progress.jobs_dropped(planned - len(on))
        self._write_back(kept, on, self._train(on, generation, progress))

    def _train(self, jobs: list[TrainJob], generation: int, progress: Progress) -> list[TrainResult]:
        def on_result(result) -> None:
            progress.job_done(result)
            faults.point("mid-generation", generation)

        results = self.evaluator.evaluate(jobs, on_result=on_result)
        if [r.individual_id for r in results] != [j.individual_id for j in jobs]:
            raise RuntimeError(f"the evaluator returned results for individuals "
                               f"{[r.individual_id for r in results]} for jobs {[j.individual_id for j in jobs]}")
        return results

    def _write_back(self, genomes: list[Genome], jobs: list[TrainJob], results: list[TrainResult]) -> None:
        for g, job, r in zip(genomes, jobs, results):
            if self.exp.evolution.inheritance == "lamarckian":
                g.weights = r.weights
                if r.status == "ok":  # a failed training returns the weights it was given
                    g.lineage_steps = job.lineage_step + r.steps
                    if self.exp.training.inherit_optimizer:  # and with them the state it was given
                        g.optimiser = r.optimiser
            else:  # Baldwinian: offspring inherit the untrained weights; exports show the trained
                g.trained = r.weights if r.status == "ok" else None
            g.metrics = {**r.metrics(), "seed": job.seed, "evaluated_in": job.generation}
            self.objectives.assign(g)

    def _score_test(self, survivors: list[Genome], generation: int, trained: list[Genome] = ()) -> None:
        """Test accuracy for the individuals it is reported for (output.test_accuracy =
        "chosen", or "final" in the run's last generation): the best survivor, the survivor
        best by validation, and the archive; each scored once, by test-only jobs on the
        evaluator (the training jobs skipped the split). The value goes to every object of
        that individual: the archive's copies, and the survivor or this generation's trained
        individual whose row the history gets.

        "final" means the configured last generation, never the one a stop request ends in:
        scores taken there would stay in the individuals' metrics and reach the rows of later
        generations after a resume, which the run that never stopped does not have."""
        mode = self.exp.output.test_accuracy
        if mode == "all" or (mode == "final" and generation < self._last):
            return
        ok = [g for g in survivors if g.metrics.get("status") == "ok"]
        chosen = [self.objectives.best(survivors)]
        if ok:
            chosen.append(max(ok, key=lambda g: (g.metrics.get("val_accuracy") or 0.0, -g.id)))
        chosen += list(self.archive)  # copies (DEAP's archives deepcopy): each copy is updated too
        todo: dict[int, list[Genome]] = {}
        for g in chosen:
            if g.metrics.get("status") == "ok" and g.metrics.get("test_accuracy") is None:
                todo.setdefault(g.id, []).append(g)
        if not todo:
            return
        for g in [*survivors, *trained]:
            if g.id in todo and not any(g is h for h in todo[g.id]):
                todo[g.id].append(g)
        jobs = [TrainJob(gid, generation, 0, gs[0].masks, gs[0].network_weights(), test_only=True)
                for gid, gs in todo.items()]
        for job, r in zip(jobs, self.evaluator.evaluate(jobs)):
            if r.status != "ok":
                log.warning("scoring individual %d on the test split failed: %s", job.individual_id, r.error)
                continue
            for g in todo[job.individual_id]:
                g.metrics = {**g.metrics, "test_accuracy": r.test_accuracy}

    # ------------------------------------------------------------------------ records
    def _record(self, g: int, parents: list[Genome], offspring: list[Genome],
                survivors: list[Genome], progress: Progress) -> None:
        hypervolume = self.objectives.hypervolume(list(self.archive))
        columns = self._columns(parents + offspring, g, {s.id for s in survivors}, hypervolume)
        self.run_dir.write_history(g, columns)
        faults.point("history-written", g)
        best = self.objectives.best(survivors)
        evaluated = sum(columns["evaluated"])
        progress.generation_done({"fitness": list(best.fitness.values), **best.metrics,
                                  "density": best.density(), "hypervolume": hypervolume},
                                 evaluated=evaluated)
        failed = sum(e and status != "ok" for e, status in zip(columns["evaluated"], columns["status"]))
        info = GenerationInfo(g, self.run_dir.path, evaluated, failed,
                              {"id": best.id, "fitness": list(best.fitness.values),
                               "val_accuracy": best.metrics.get("val_accuracy"),
                               "test_accuracy": best.metrics.get("test_accuracy"),
                               "density": best.density(), "active_params": best.active_params()},
                              hypervolume, self._scalars(best, survivors, evaluated, failed, hypervolume))
        for callback in self.callbacks:
            _call(callback, info)

    def _scalars(self, best: Genome, survivors: list[Genome], evaluated: int, failed: int,
                 hypervolume: float | None) -> dict[str, float]:
        seconds = time.monotonic() - getattr(self, "_started", time.monotonic())
        mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
        out = {"fitness/best": float(best.fitness.values[0]),
               "fitness/mean": mean([s.fitness.values[0] for s in survivors]),
               "val_accuracy/best": float(best.metrics.get("val_accuracy") or 0.0),
               "val_accuracy/mean": mean([s.metrics.get("val_accuracy") or 0.0 for s in survivors]),
               "density/best": best.density(), "density/mean": mean([s.density() for s in survivors]),
               "active_params/best": float(best.active_params()),
               "evaluated": float(evaluated), "failed": float(failed), "seconds": seconds,
               "throughput/jobs_per_s": evaluated / seconds if seconds > 0 else float("nan")}
        if hypervolume is not None:
            out["hypervolume"] = float(hypervolume)
        return out

    def _columns(self, individuals: list[Genome], g: int, chosen: set[int],
                 hypervolume: float | None) -> dict[str, list]:
        """The history's rows of `individuals` in generation `g`, column by column: one list per
        column, which costs a fraction of a dict per row. `chosen`: the ids of the survivors;
        `hypervolume`, the archive's after this generation, goes on every row (pareto mode)."""
        metrics = [ind.metrics for ind in individuals]
        n = len(individuals)

        def get(key: str) -> list:
            return [m.get(key) for m in metrics]

        columns = {
            "run_id": [self.run_dir.run_id] * n, "generation": [g] * n,
            "individual_id": [ind.id for ind in individuals],
            "parent_ids": [list(ind.parents) for ind in individuals],
            "operator": [ind.operator for ind in individuals], "born": [ind.born for ind in individuals],
            "seed": get("seed"), "evaluated": [m.get("evaluated_in") == g for m in metrics],
            "selected": [ind.id in chosen for ind in individuals],
            "status": get("status"), "error": get("error"), "train_loss": get("train_loss"),
            "val_loss": get("val_loss"), "val_accuracy": get("val_accuracy"),
            "test_accuracy": get("test_accuracy"),
            "active_params": [ind.active_params() for ind in individuals],
            "density": [ind.density() for ind in individuals],
            "flops": [ind.flops(self.info) for ind in individuals],
            "fitness": [list(ind.fitness.values) for ind in individuals],
            "steps": get("steps"), "train_seconds": get("train_seconds"), "worker": get("worker"),
            "device": get("device"),
        }
        if hypervolume is not None:
            columns["hypervolume"] = [hypervolume] * n
        if self.lineages:
            columns["lineage_steps"] = [ind.lineage_steps for ind in individuals]
        layers = [ind.layer_density() for ind in individuals]
        for name in dict.fromkeys(name for layer in layers for name in layer):
            columns[f"density.{name}"] = [layer.get(name) for layer in layers]
        return columns

    # ------------------------------------------------------------------------ checkpoints
    def _checkpoint_due(self, state: State, last: int, since: float) -> bool:
        out = self.exp.output
        return (state.generation % out.checkpoint_every == 0 or state.generation == last
                or self.should_stop()
                or (out.checkpoint_seconds is not None and time.monotonic() - since >= out.checkpoint_seconds))

    def _checkpointed(self, state: State) -> bool:
        return getattr(self, "_saved_generation", None) == state.generation

    def _checkpoint(self, state: State) -> None:
        """Write a checkpoint of `state` in a background thread while the next generation trains.

        Safe because a genome's arrays are never modified in place (operators copy, the
        write-back replaces them), and a kill mid-write leaves the previous checkpoint named."""
        self._finish_checkpoint()
        # The population's version of an individual is the current one; the archive keeps its
        # own copy from when it entered, which differs once the individual was retrained
        # (retrain_survivors): such copies are stored apart, so both come back on resume.
        population = {g.id: g for g in state.population}
        copies = [g for g in state.archive if g.id in population and g.meta() != population[g.id].meta()]
        genomes = {g.id: g for g in state.archive if g.id not in population}
        genomes.update(population)
        # A point of the front that is also stored above may be another version of it (the
        # archive's copy got a test accuracy it did not): stored apart too, as the archive's are.
        front_copies = [g for g in state.front if g.id in genomes and genomes[g.id] is not g
                        and g.meta() != genomes[g.id].meta()]
        for g in state.front:
            genomes.setdefault(g.id, g)
        individuals = {f"g{gid}": g.to_arrays() for gid, g in genomes.items()}
        individuals.update({f"a{g.id}": g.to_arrays() for g in copies})
        individuals.update({f"f{g.id}": g.to_arrays() for g in front_copies})
        meta = {
            "generation": state.generation, "next_id": state.next_id,
            "population": [g.id for g in state.population], "archive": [g.id for g in state.archive],
            "genomes": [g.meta() for g in genomes.values()],
            "archive_copies": [g.meta() for g in copies],
            "front": self.front.to_json(), "front_copies": [g.meta() for g in front_copies],
            "config_hash": self.exp.hash(), "seed": self.seed,
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            # Every random draw is derived from (seed, purpose, generation, id): the RNG state
            # of the next generation is fully given by the seed and the generation counter.
            "rng": {"scheme": "derived", "seed": self.seed, "next_generation": state.generation + 1},
            "versions": _versions(),
        }
        best = self.objectives.best(state.population)
        summary = self.summary(best)

        def write() -> Iterator[None]:
            yield from self.run_dir.saving_checkpoint(state.generation, meta, individuals,
                                                      self.exp.output.keep_checkpoints)
            self.run_dir.save_model(self.run_dir.best, best.network_weights(), best.masks, summary)

        self._writer = _Background(write())
        self._saved_generation = state.generation

    def _finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written, if any; its error, if any, is raised here."""
        writer, self._writer = getattr(self, "_writer", None), None
        if writer is not None:
            writer.join()

    def restore(self, meta: dict, arrays_of: Callable[[str], dict[str, np.ndarray]]) -> State:
        """The state a checkpoint holds: `meta` its state.json, `arrays_of(entry)` the arrays of
        an individual ("g<id>"), an archive's own copy ("a<id>") or a front point's ("f<id>")
        (checkpoint.Loaded.arrays_of)."""
        def load(gm: dict, entry: str) -> Genome:
            g = Genome.from_arrays(gm, arrays_of(entry))
            self.objectives.restore(g, gm["fitness"])
            return g

        genomes = {gm["id"]: load(gm, f"g{gm['id']}") for gm in meta["genomes"]}
        copies = {gm["id"]: load(gm, f"a{gm['id']}") for gm in meta.get("archive_copies", [])}
        population = [genomes[i] for i in meta["population"]]
        front_copies = {gm["id"]: load(gm, f"f{gm['id']}") for gm in meta.get("front_copies", [])}
        self.front.restore(meta.get("front", []), {**genomes, **front_copies}, population)
        state = State(meta["generation"], population, [copies.get(i, genomes[i]) for i in meta["archive"]],
                      meta["next_id"], self.front.members())
        restore_archive(self.archive, state.archive)
        self._saved_generation = state.generation
        return state

    def summary(self, g: Genome) -> dict:
        """What is reported about one individual (best/metrics.json, `inspect`, `export`)."""
        return {"id": g.id, "born": g.born, "parents": list(g.parents), "operator": g.operator,
                "fitness": list(g.fitness.values), "objectives": self.exp.fitness.objectives,
                "density": g.density(), "active_params": g.active_params(), "flops": g.flops(self.info),
                "layer_density": g.layer_density(), "model": self.exp.to_dict()["model"],
                **{k: v for k, v in g.metrics.items() if k != "worker"}}


class Front:
    """The individuals a history's front (report.pareto_front: fewest active parameters, highest
    validation accuracy, among every individual evaluated with status ok, each by its latest
    record) can show, kept by the driver so that their weights are in the checkpoints.

    An individual leaves only when it can never be on that front again: another one whose
    record is final (it cannot be trained again: not a survivor while survivors are retrained)
    strictly dominates it, or equals it on both and comes earlier in the history (where the
    report keeps the first). Anything less certain keeps it: storing one more is cheap,
    exporting one that is missing is impossible."""

    def __init__(self, retrain_survivors: bool):
        self.retrain = retrain_survivors
        self.kept: dict[int, Genome] = {}
        self.order: dict[int, tuple[int, int]] = {}  # id -> (generation, row) of its latest record
        self.alive: set[int] = set()

    def update(self, generation: int, evaluated: list[Genome], population: list[Genome]) -> None:
        """After generation `generation`: `evaluated`, in the order of its history rows, and the
        population that survived it."""
        for row, g in enumerate(evaluated):
            self.kept.pop(g.id, None)
            self.order.pop(g.id, None)
            if g.metrics.get("status") == "ok":
                self.kept[g.id] = g
                self.order[g.id] = (generation, row)
        self.alive = {g.id for g in population} if self.retrain else set()
        point = {i: (g.active_params(), float(g.metrics["val_accuracy"])) for i, g in self.kept.items()}

        def beaten(i: int) -> bool:
            (p, v), first = point[i], self.order[i]
            for j, (q, w) in point.items():
                if j == i or j in self.alive:
                    continue
                if q <= p and w >= v and (q < p or w > v or self.order[j] < first):
                    return True
            return False

        for i in [i for i in self.kept if beaten(i)]:
            del self.kept[i], self.order[i]

    def members(self) -> list[Genome]:
        return list(self.kept.values())

    def to_json(self) -> list[list[int]]:
        return [[i, *self.order[i]] for i in self.kept]

    def restore(self, entries: list[list[int]], genomes: dict[int, Genome], population: list[Genome]) -> None:
        """From a checkpoint's `to_json`, with its individuals, after the generation it holds."""
        self.kept = {i: genomes[i] for i, _, _ in entries}
        self.order = {i: (g, row) for i, g, row in entries}
        self.alive = {g.id for g in population} if self.retrain else set()


class _Background:
    """The steps of a generator run in a thread at idle priority (`_idle_priority`); its
    exception kept for whoever joins it.

    Whoever joins hands the steps left to a thread of its own priority: a driver that needs the
    checkpoint finished must not wait on a thread that only runs when a core has nothing else
    to do (on a loaded machine, hardly ever). A lock runs the steps one at a time and in
    order, whichever thread takes them."""

    def __init__(self, steps: Iterator[None]):
        self.error: BaseException | None = None
        self._steps = steps
        self._lock = threading.Lock()
        self._done = False
        self._handed_over = False
        self.threads = [threading.Thread(target=self._run, args=(True,), name="neuroevo-checkpoint")]
        self.threads[0].start()

    def _step(self) -> bool:
        """Run the next step; False once none is left (or one failed)."""
        with self._lock:
            if self._done:
                return False
            try:
                next(self._steps)
            except StopIteration:
                self._done = True
            except BaseException as e:  # re-raised in the driver's thread by join()
                self.error, self._done = e, True
            return not self._done

    def _run(self, idle: bool) -> None:
        if idle:
            _idle_priority()
        while not (idle and self._handed_over) and self._step():
            pass

    def join(self) -> None:
        if not self._done:
            self._handed_over = True
            finish = threading.Thread(target=self._run, args=(False,), name="neuroevo-checkpoint-finish")
            self.threads.append(finish)
            finish.start()
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error


def _freeze_older_objects() -> bool:
    """Leave the objects that exist when a run starts (modules, torch's among them, the data)
    out of the cyclic garbage collector until the run ends (`gc.freeze`): none of them becomes
    garbage, yet each full collection, which the driver's turnover of individuals sets off
    every few generations, would traverse them all (a few hundred thousand, about 0.1 s).
    False, and nothing frozen, where something else froze objects already: theirs to manage."""
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def _idle_priority() -> None:
    """Run the calling thread only on CPU time nobody else wants (Linux SCHED_IDLE).

    The checkpoint is written while the next generation trains: on a machine whose cores all
    train (a laptop), a writer at normal priority takes its CPU time from one worker, whose
    task then ends last while the others wait. At idle priority it fills the gaps instead
    (the driver's turn between generations, workers waiting for the last task). Elsewhere it
    runs as it is."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread, on Linux
    except (AttributeError, OSError):
        pass


def _versions() -> dict[str, str]:
    import deap
    import torch
    return {"neuroevo_sparse": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "deap": deap.__version__}


def _rung_for(ladder: list[Genome], counts: dict[str, int]) -> Genome:
    """The smallest network of the trunk's ladder with at least `counts` active connections in
    every layer (the trunk itself when no rung has): the closest larger network to prune from."""
    fits = [g for g in ladder if all(g.counts()[n] >= c for n, c in counts.items())]
    return min(fits, key=lambda g: sum(g.counts().values())) if fits else ladder[0]
