"""Tables computed from a run's history: what `neuroevo inspect` prints and `plot` draws.

Everything here reads the parquet history only (no checkpoint, no torch), so it works on a
run that is still going, or one copied off a cluster without its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


class HistoryError(ValueError):
    """A history part is missing or unreadable: tables built from the rest would mislead."""


def load(run_dir: str | Path, attempts: int = 3) -> pd.DataFrame:
    """The whole history of a run; every part from generation 0 to the newest must be there
    and readable, else HistoryError names the ones that are not. A part that vanishes while
    it is read (a resume that starts replaces the parts after its checkpoint) means the
    listing is read again."""
    for attempt in range(attempts):
        try:
            return _load(run_dir)
        except _Vanished:
            if attempt + 1 == attempts:
                raise HistoryError(f"the history of {run_dir} kept changing while it was read (a resume is "
                                   f"replacing parts): try again") from None
    raise AssertionError("unreachable")


class _Vanished(Exception):
    pass


def _load(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "history"
    parts = sorted(path.glob("gen-*.parquet")) if path.is_dir() else []
    if not parts:
        raise FileNotFoundError(f"{run_dir} has no history (expected {path}/gen-*.parquet)")
    found = {int(p.stem.split("-")[1]): p for p in parts if p.stem.split("-")[1].isdigit()}
    missing = [g for g in range(max(found) + 1) if g not in found]
    tables, damaged = [], []
    for g, part in sorted(found.items()):
        try:
            tables.append(pd.read_parquet(part))
        except FileNotFoundError:
            raise _Vanished from None
        except Exception as e:  # pyarrow raises several kinds for a damaged file
            damaged.append(f"{part.name} ({type(e).__name__}: {str(e)[:120]})")
    problems = ([f"missing part(s) for generation(s) {', '.join(map(str, missing))}"] if missing else []) + \
               ([f"unreadable part(s): {'; '.join(damaged)}"] if damaged else [])
    if problems:
        raise HistoryError(f"the history of {run_dir} is incomplete: {'; '.join(problems)}. A part is rewritten "
                           f"only by resuming from a checkpoint older than it; the other parts still read with "
                           f"pandas.read_parquet(<part>)")
    return pd.concat(tables, ignore_index=True)


def population(history: pd.DataFrame) -> pd.DataFrame:
    """The population after each generation: the rows that were selected."""
    return history[history.selected]


def evaluations(history: pd.DataFrame) -> pd.DataFrame:
    """One row per training of an individual (its metrics when it was evaluated). A test
    accuracy scored in a later generation for the same trained weights (same individual, same
    training seed: output.test_accuracy = "final" scores the last generation only) is filled in."""
    ev = history[history.evaluated]
    if not {"test_accuracy", "seed"} <= set(history.columns) or not ev.test_accuracy.isna().any():
        return ev
    known = history[history.test_accuracy.notna()].drop_duplicates(["individual_id", "seed"], keep="last")
    later = ev[["individual_id", "seed"]].merge(known[["individual_id", "seed", "test_accuracy"]],
                                                how="left", on=["individual_id", "seed"]).test_accuracy
    return ev.assign(test_accuracy=ev.test_accuracy.fillna(pd.Series(later.to_numpy(), index=ev.index)))


def generations(history: pd.DataFrame) -> pd.DataFrame:
    """Per generation: fitness (first value) best / mean / worst over the population, density
    range, the best validation accuracy in the population and the test accuracy of that same
    individual (chosen by validation: the population's highest test accuracy would be a choice
    made on the test set), and in Pareto runs the archive's hypervolume."""
    pop = population(history).assign(f0=lambda d: d.fitness.map(lambda v: v[0]))
    grouped = pop.groupby("generation")
    chosen = by_validation(pop).set_index("generation")
    out = pd.DataFrame({
        "evaluated": evaluations(history).groupby("generation").size(),
        "best_fitness": grouped.f0.max(), "mean_fitness": grouped.f0.mean(), "worst_fitness": grouped.f0.min(),
        "mean_density": grouped.density.mean(), "min_density": grouped.density.min(),
        "max_density": grouped.density.max(),
        "best_val_acc": chosen.val_accuracy, "its_test_acc": chosen.test_accuracy,
        "failed": evaluations(history).assign(bad=lambda d: d.status != "ok").groupby("generation").bad.sum(),
    })
    if "hypervolume" in history:
        out["hypervolume"] = history.groupby("generation").hypervolume.first()
    return out.fillna({"evaluated": 0, "failed": 0}).astype({"evaluated": int, "failed": int})


def by_validation(rows: pd.DataFrame) -> pd.DataFrame:
    """Per generation, the row with the highest validation accuracy (ties: fewer parameters,
    then the lower id)."""
    ok = rows[rows.status == "ok"].sort_values(["generation", "val_accuracy", "active_params", "individual_id"],
                                               ascending=[True, False, True, True])
    return ok.drop_duplicates("generation", keep="first")


def top(history: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The `n` best individuals ever evaluated (by fitness, first value), latest record each."""
    ev = evaluations(history).drop_duplicates("individual_id", keep="last")
    ev = ev.assign(f0=ev.fitness.map(lambda v: v[0])).sort_values(["f0", "val_accuracy"], ascending=False)
    cols = ["individual_id", "generation", "born", "operator", "parent_ids", "fitness", "val_accuracy",
            "test_accuracy", "density", "active_params", "flops"]
    return ev[cols].head(n).reset_index(drop=True)


def pareto_front(history: pd.DataFrame, x: str = "active_params", y: str = "val_accuracy",
                 up_to: int | None = None) -> pd.DataFrame:
    """Individuals not dominated in (min `x`, max `y`) among all evaluated (up to generation
    `up_to`), sorted by `x`. Their test accuracy is shown, never used to choose them."""
    ev = evaluations(history if up_to is None else history[history.generation <= up_to])
    ev = ev[ev.status == "ok"].drop_duplicates("individual_id", keep="last")
    ev = ev.sort_values([x, y], ascending=[True, False])
    best, keep = -np.inf, []
    for i, v in zip(ev.index, ev[y]):
        if v > best:
            keep.append(i)
            best = v
    cols = ["individual_id", "born", x, y, "test_accuracy", "density", "operator"]
    return ev.loc[keep, list(dict.fromkeys(cols))].reset_index(drop=True)


def lineage(history: pd.DataFrame, individual_id: int, depth: int = 12) -> pd.DataFrame:
    """Ancestors of an individual up to `depth` generations back, one row each."""
    rows = history.drop_duplicates("individual_id", keep="first").set_index("individual_id")
    seen, frontier, out = set(), [individual_id], []
    while frontier:
        gid = frontier.pop()
        if gid in seen or gid not in rows.index:
            continue
        seen.add(gid)
        r = rows.loc[gid]
        out.append({"individual_id": gid, "born": int(r.born), "operator": r.operator,
                    "parent_ids": list(r.parent_ids), "val_accuracy": _first_eval(history, gid)})
        if rows.loc[individual_id].born - r.born < depth:
            frontier.extend(int(p) for p in r.parent_ids)
    return pd.DataFrame(out).sort_values(["born", "individual_id"]).reset_index(drop=True)


def _first_eval(history: pd.DataFrame, gid: int) -> float:
    ev = history[(history.individual_id == gid) & history.evaluated]
    return float(ev.val_accuracy.iloc[0]) if len(ev) else float("nan")


def best_under(history: pd.DataFrame, max_params: int) -> pd.Series:
    """The most accurate (by validation) individual ever evaluated with at most `max_params`
    active parameters; ValueError naming the smallest there is when none is that small."""
    front = pareto_front(history)
    fits = front[front.active_params <= max_params]
    if fits.empty:
        raise ValueError(f"no individual has at most {max_params} active parameters; the smallest evaluated "
                         f"has {int(front.active_params.min())}" if len(front) else "no individual was evaluated")
    return fits.sort_values(["val_accuracy", "active_params"], ascending=[False, True]).iloc[0]


def best_id(history: pd.DataFrame) -> int:
    return int(top(history, 1).individual_id.iloc[0])
