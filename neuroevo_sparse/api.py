"""The Python API: what the `neuroevo` command does, from a script or a notebook.

    from neuroevo_sparse import load_experiment, evolve, load_run

    exp = load_experiment("experiments/quickstart.toml", overrides=["evolution.generations=3"])
    run = evolve(exp, callbacks=[lambda info: print(info.generation, info.best["val_accuracy"])])
    run.history                        # pandas DataFrame: one row per individual per generation
    run.generations()                  # per generation: fitness, density, hypervolume, ...
    run.front()                        # the accuracy-size front (chosen by validation accuracy)
    net = run.module()                 # the best network, a ready nn.Module (masked weights are 0)
    net = run.module(max_params=20_000)

Your own network and data: `evolve(exp, model=make_net, data=load_data)` with a function (or
nn.Module class) returning the module and one returning the splits (see `data.factory` in
config.py), both defined at the top level of a module or of your script. They are recorded in
the run's config by name (`model.factory = "module:make_net"`), so `resume`, `export` and
`Run.module` find them again, and Ray ships the module to the workers.

`neuroevo run`/`resume` and `evolve`/`resume` run the same code (`launch.start`/`launch.resume`)
and give the same history for the same experiment. A run is a directory on disk: `load_run`
opens one that any of them wrote, finished or not, here or on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from torch import nn

from .config import schema as config
from .report import tables as report
from . import launch
from .config.schema import Experiment
from .evolution.loop import Callback, GenerationInfo
from .report.export import Individual, load_individual
from .store import RunDir

__all__ = ["Experiment", "GenerationInfo", "Run", "evolve", "load_experiment", "load_run", "resume"]


def load_experiment(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> Experiment:
    """An experiment from a TOML file or a dict of sections (the TOML's structure), validated;
    `overrides` are `SECTION.KEY=VALUE` strings as `--set` takes. ConfigError lists every problem."""
    if isinstance(source, Mapping):
        exp = config.from_dict(config.apply_overrides(dict(source), list(overrides)), source="experiment dict")
        return config.with_absolute_paths(exp, Path.cwd())
    return config.load(source, list(overrides))


def evolve(experiment: Experiment, run_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
           should_stop: Callable[[], bool] = lambda: False, model: Callable[..., nn.Module] | None = None,
           data: Callable[..., Any] | None = None) -> "Run":
    """Run an experiment from generation 0 in a new run directory (default:
    `output.root/<name>/<run-id>`). Each callback gets a GenerationInfo after every generation;
    `should_stop` is polled between generations (the run then checkpoints and returns).
    `model` and `data` set `model.factory` and `data.factory` to these callables."""
    from dataclasses import replace

    from .config.plugins import name_of

    if model is not None:
        experiment = replace(experiment, model=replace(experiment.model, factory=name_of(model, "model")))
    if data is not None:
        experiment = replace(experiment, data=replace(experiment.data, factory=name_of(data, "data")))
    run, _ = launch.start(experiment, run_dir, should_stop=should_stop, callbacks=callbacks)
    return Run(run.path)


def resume(run_dir: str | Path, generations: int | None = None, overrides: Sequence[str] = (),
           callbacks: Sequence[Callback] = (), should_stop: Callable[[], bool] = lambda: False) -> "Run":
    """Continue a run from its newest valid checkpoint, as if it had never stopped; `generations`
    is the new total. Only keys that cannot change results may be overridden."""
    run, _ = launch.resume(run_dir, list(overrides), generations, should_stop=should_stop, callbacks=callbacks)
    return Run(run.path)


def load_run(run_dir: str | Path) -> "Run":
    """A run directory, for analysis; FileNotFoundError if it is not one."""
    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.toml)")
    return Run(path)


@dataclass(frozen=True)
class Run:
    """A run directory. Everything is read from disk when asked, so a run still going shows
    its latest generation."""

    path: Path

    @property
    def config(self) -> Experiment:
        return RunDir(self.path).config()

    @property
    def history(self) -> pd.DataFrame:
        return report.load(self.path)

    def generations(self) -> pd.DataFrame:
        """Per generation: fitness range, density range, best validation accuracy and that
        individual's test accuracy, hypervolume (pareto mode): `neuroevo inspect`'s first table."""
        return report.generations(self.history)

    def front(self) -> pd.DataFrame:
        """Individuals not dominated in (fewer active parameters, higher validation accuracy)
        among all evaluated; their test accuracy is shown, never used to choose."""
        return report.pareto_front(self.history)

    def individual(self, id: int | None = None, max_params: int | None = None) -> Individual:
        """An individual's weights, masks and metrics from the newest checkpoint: by `id`, else
        the most accurate with at most `max_params` active parameters, else the best."""
        return load_individual(self.path, id, max_params)

    def module(self, id: int | None = None, max_params: int | None = None) -> nn.Module:
        """That individual as a ready nn.Module in eval mode (weights outside its masks are 0)."""
        return self.individual(id, max_params).module()
