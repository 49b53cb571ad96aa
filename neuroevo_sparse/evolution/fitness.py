"""Objectives, DEAP fitness, selection and the archive of the best.

"weighted": one fitness value, sum(weight_i * objective_i), maximised.
"pareto": the objectives themselves, each maximised or minimised by the sign of its weight;
survivors by NSGA-II (DEAP's selNSGA2), parents by binary tournaments on (front, crowding).
An individual whose training failed gets each objective's worst possible value in the
direction its weight gives (accuracy 0; density 1, the dense parameter count and dense FLOPs
when minimised, 0 when maximised): finite, so NSGA-II's crowding stays defined.

The hypervolume of a set of individuals (pareto mode) is measured on objectives each scaled
to [0, 1] by its range (accuracy as it is, parameters and FLOPs as fractions of the dense
network's), oriented so that smaller is better, against the reference point where every
objective is at its worst. It lies in [0, 1], 1 being a dense-accuracy-1 network of no
size, and compares across runs of the same model whatever their population. Computed by
moocore (which DEAP itself uses), not by hand.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Sequence

import moocore
import numpy as np
from deap import base, tools

from ..config.schema import FitnessConfig
from .. import draws
from ..topology.genome import Genome
from ..problem.models import LayerInfo


class Objectives:
    def __init__(self, cfg: FitnessConfig, info: dict[str, LayerInfo]):
        self.cfg = cfg
        self.info = info
        weights = (1.0,) if cfg.mode == "weighted" else tuple(float(np.sign(w)) for w in cfg.weights)
        # A class per experiment rather than creator.create: no global registry to collide in.
        self.fitness_class = type("Fitness", (base.Fitness,), {"weights": weights})

    def measure(self, g: Genome) -> dict[str, float]:
        """Objective values of an evaluated genome (worst values if its training failed)."""
        if g.metrics.get("status", "ok") != "ok":
            return self.worst(g)
        values = {"val_accuracy": float(g.metrics["val_accuracy"]), "density": g.density(),
                  "active_params": float(g.active_params()), "flops": float(g.flops(self.info))}
        return {k: values[k] for k in self.cfg.objectives}

    def worst(self, g: Genome) -> dict[str, float]:
        """Each objective's worst possible value in its own direction (the sign of its weight):
        a failed individual must never win on an objective, whichever way it points."""
        bounds = self.bounds(g)
        return {k: bounds[k][0] if w > 0 else bounds[k][1] for k, w in zip(self.cfg.objectives, self.cfg.weights)}

    def bounds(self, g: Genome) -> dict[str, tuple[float, float]]:
        """The range each objective can take for a network of this model."""
        masked = [self.info[n] for n in g.masks]
        unmasked = g.active_params() - sum(g.counts().values())
        return {"val_accuracy": (0.0, 1.0), "density": (0.0, 1.0),
                "active_params": (float(unmasked), float(unmasked + sum(i.size for i in masked))),
                "flops": (0.0, float(sum(2 * i.size * i.positions for i in masked)))}

    def hypervolume(self, genomes: Sequence[Genome]) -> float | None:
        """Hypervolume of `genomes` in normalised objective space (module docstring); None in
        weighted mode, where there is no front."""
        if self.cfg.mode != "pareto":
            return None
        if not genomes:
            return 0.0
        bounds = self.bounds(genomes[0])
        points = []
        for g in genomes:
            row = []
            for k, w, v in zip(self.cfg.objectives, self.cfg.weights, g.fitness.values):
                lo, hi = bounds[k]
                x = (v - lo) / max(hi - lo, 1e-12)
                row.append(1.0 - x if w > 0 else x)
            points.append(row)
        return float(moocore.hypervolume(np.clip(np.array(points), 0.0, 1.0), ref=np.ones(len(points[0]))))

    def assign(self, g: Genome) -> None:
        values = list(self.measure(g).values())
        g.fitness = self.fitness_class()
        if self.cfg.mode == "weighted":
            g.fitness.values = (float(np.dot(self.cfg.weights, values)),)
        else:
            g.fitness.values = tuple(values)

    def restore(self, g: Genome, values: Sequence[float]) -> None:
        g.fitness = self.fitness_class()
        g.fitness.values = tuple(values)

    # ------------------------------------------------------------------- selection
    def select_parents(self, population: list[Genome], k: int, tournament: int,
                       rng: np.random.Generator) -> list[Genome]:
        """`k` parents by tournaments: on fitness ("weighted") or on (front, crowding) ("pareto")."""
        key = self._rank_keys(population)
        size = tournament if self.cfg.mode == "weighted" else 2
        chosen = []
        for _ in range(k):
            entrants = draws.choice(rng, len(population), min(size, len(population)))
            chosen.append(population[max(entrants, key=lambda i: key[i])])
        return chosen

    def select_survivors(self, pool: list[Genome], k: int) -> list[Genome]:
        if self.cfg.mode == "weighted":
            # Stable sort: ties keep pool order, which is itself deterministic.
            return sorted(pool, key=lambda g: g.fitness.wvalues, reverse=True)[:k]
        return tools.selNSGA2(pool, k)

    def _rank_keys(self, population: list[Genome]) -> list[Any]:
        if self.cfg.mode == "weighted":
            return [g.fitness.wvalues for g in population]
        fronts = tools.sortNondominated(population, len(population))
        rank = {}
        for r, front in enumerate(fronts):
            tools.emo.assignCrowdingDist(front)
            for g in front:
                rank[id(g)] = r
        return [(-rank[id(g)], g.fitness.crowding_dist) for g in population]

    def best(self, population: list[Genome]) -> Genome:
        """The individual reported as "best": top fitness, or in pareto mode the most accurate
        member of the first front (accuracy is what a user usually wants first)."""
        if self.cfg.mode == "weighted":
            return max(population, key=lambda g: g.fitness.wvalues)
        front = tools.sortNondominated(population, len(population), first_front_only=True)[0]
        return max(front, key=lambda g: (g.metrics.get("val_accuracy", 0.0), -g.density()))

    def make_archive(self, size: int = 10) -> tools.HallOfFame:
        same = lambda a, b: a.id == b.id  # noqa: E731
        return tools.HallOfFame(size, similar=same) if self.cfg.mode == "weighted" else tools.ParetoFront(same)


def restore_archive(archive: tools.HallOfFame, members: Sequence[Genome]) -> None:
    """Put `members` back into an empty `archive` in the order they were listed.

    Not by `update`: DEAP's `insert` places an individual after those of equal fitness, so
    re-inserting a list reverses its ties, and a full hall of fame would later evict another
    tied member than the run that never stopped. The archive keeps copies, as `insert` does;
    its keys are its members' fitnesses in ascending order (the members' order reversed)."""
    archive.clear()
    archive.items.extend(deepcopy(g) for g in members)
    archive.keys.extend(g.fitness for g in reversed(archive.items))
