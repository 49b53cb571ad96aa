"""PNG figures of a run, drawn from its history (see report.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import tables as report


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def all_figures(run_dir: str | Path, out_dir: str | Path | None = None,
                baselines: str | Path | None = None) -> list[Path]:
    """Every figure of a run; `baselines` is a JSON file written by benchmarks/front.py whose
    curves the final front is drawn against."""
    history = report.load(run_dir)
    out = Path(out_dir or Path(run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    name = Path(run_dir).name
    curves = load_curves(baselines) if baselines else {}
    return [fitness(history, out / "fitness.png", name),
            accuracy_vs_params(history, out / "accuracy_vs_params.png", name),
            front(history, out / "front.png", name, curves),
            layer_density(history, out / "layer_density.png", name),
            lineage(history, out / "lineage.png", name)]


def load_curves(path: str | Path) -> dict[str, pd.DataFrame]:
    """Baseline curves from benchmarks/front.py's JSON: method -> (active_params, test accuracy)."""
    import json

    try:
        raw = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a baselines file of benchmarks/front.py (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a baselines file of benchmarks/front.py (not JSON: {e})") from None
    try:
        return {method: pd.DataFrame(points).sort_values("active_params")
                for method, points in raw["curves"].items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a baselines file of benchmarks/front.py (no 'curves' of points): {e}") from None


def fitness(history: pd.DataFrame, path: Path, title: str) -> Path:
    plt = _plt()
    g = report.generations(history)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.fill_between(g.index, g.worst_fitness, g.best_fitness, alpha=0.2, label="population range")
    ax1.plot(g.index, g.best_fitness, "o-", label="best")
    ax1.plot(g.index, g.mean_fitness, "s--", label="mean")
    ax1.set(xlabel="generation", ylabel="fitness (first value)", title="Fitness of the population")
    ax1.legend()
    ax2.plot(g.index, g.best_val_acc, "o-", label="best validation accuracy")
    ax2.plot(g.index, g.its_test_acc, "s--", label="its test accuracy")
    ax2.set(xlabel="generation", ylabel="accuracy", title="Accuracy in the population")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return _save(fig, path)


def accuracy_vs_params(history: pd.DataFrame, path: Path, title: str) -> Path:
    plt = _plt()
    ev = report.evaluations(history)
    ev = ev[ev.status == "ok"]
    front = report.pareto_front(history)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sc = ax.scatter(ev.active_params, ev.val_accuracy, c=ev.generation, cmap="viridis", s=22, alpha=0.8)
    ax.step(front.active_params, front.val_accuracy, "r-", where="post", lw=1.5, label="Pareto front")
    ax.scatter(front.active_params, front.val_accuracy, facecolors="none", edgecolors="r", s=70)
    fig.colorbar(sc, ax=ax, label="generation")
    ax.set(xlabel="active parameters", ylabel="validation accuracy",
           title=f"{title}: every evaluated individual")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def front(history: pd.DataFrame, path: Path, title: str, curves: dict[str, pd.DataFrame]) -> Path:
    """Left: the front (validation accuracy vs active parameters) after each generation, and the
    archive's hypervolume if the run has one. Right: the final front's test accuracy (of the
    networks chosen by validation) against the baselines' curves, if given."""
    plt = _plt()
    last = int(history.generation.max())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("viridis")
    for g in range(last + 1):
        f = report.pareto_front(history, up_to=g)
        ax1.step(f.active_params, f.val_accuracy, "-", where="post", color=cmap(g / max(last, 1)),
                 lw=2.2 if g == last else 1.0, alpha=1.0 if g == last else 0.6)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(last, 1)))
    fig.colorbar(sm, ax=ax1, label="generation")
    ax1.set(xscale="log", xlabel="active parameters", ylabel="validation accuracy",
            title="Front after each generation")
    if "hypervolume" in history:
        hv = history.groupby("generation").hypervolume.first()
        inset = ax1.inset_axes([0.58, 0.1, 0.38, 0.3])
        inset.plot(hv.index, hv.values, "k.-")
        inset.set_title("hypervolume", fontsize=8)
        inset.tick_params(labelsize=7)
    final = report.pareto_front(history)
    ax2.plot(final.active_params, final.test_accuracy, "ko-", lw=2, label="GA front (test acc. of each)")
    for method, c in curves.items():
        ax2.errorbar(c.active_params, c.test_accuracy, yerr=c.get("test_accuracy_sd"), fmt="o--", ms=4,
                     capsize=2, label=method)
    ax2.set(xscale="log", xlabel="active parameters", ylabel="test accuracy",
            title="Final front" + (" against the baselines" if curves else ""))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)


def layer_density(history: pd.DataFrame, path: Path, title: str) -> Path:
    plt = _plt()
    pop = report.population(history)
    cols = [c for c in pop.columns if c.startswith("density.")]
    mean = pop.groupby("generation")[cols + ["density"]].mean()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for c in cols:
        ax.plot(mean.index, mean[c], "o-", ms=3, label=c.removeprefix("density."))
    ax.plot(mean.index, mean.density, "k--", lw=2, label="all masked weights")
    ax.set(xlabel="generation", ylabel="density (population mean)", title=f"{title}: density per layer",
           yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def lineage(history: pd.DataFrame, path: Path, title: str, depth: int = 12) -> Path:
    """The best individual's ancestry: one node per ancestor, by generation of birth."""
    plt = _plt()
    best = report.best_id(history)
    tree = report.lineage(history, best, depth)
    pos = {}
    for born, group in tree.groupby("born"):
        for i, gid in enumerate(group.individual_id):
            pos[gid] = (born, i - (len(group) - 1) / 2)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(pos) ** 0.5 * 4), 5))
    for r in tree.itertuples():
        for p in r.parent_ids:
            if p in pos:
                (x0, y0), (x1, y1) = pos[p], pos[r.individual_id]
                ax.plot([x0, x1], [y0, y1], "-", color="0.6", lw=1, zorder=1)
    acc = tree.val_accuracy.to_numpy()
    sc = ax.scatter([pos[g][0] for g in tree.individual_id], [pos[g][1] for g in tree.individual_id],
                    c=acc, cmap="plasma", s=160, zorder=2, edgecolors="k",
                    vmin=np.nanmin(acc) if np.isfinite(acc).any() else 0, vmax=np.nanmax(acc) if np.isfinite(acc).any() else 1)
    for r in tree.itertuples():
        x, y = pos[r.individual_id]
        label = f"{r.individual_id}\n" + r.operator.replace("+", "+\n")
        ax.annotate(label, (x, y), fontsize=6,
                    ha="center", va="bottom", xytext=(0, 8), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="validation accuracy when born")
    ax.set(xlabel="generation of birth", yticks=[], title=f"{title}: ancestry of individual {best}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
