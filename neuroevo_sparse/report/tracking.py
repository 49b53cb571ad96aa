"""Experiment trackers: a generation's scalars to TensorBoard or MLflow, as callbacks.

Both are optional extras (`pip install neuroevo_sparse[tracking]`) imported only when switched
on in `[output]`. They see exactly what any `on_generation` callback sees (a GenerationInfo),
after the generation's history part is on disk, and the step of every scalar is the
generation, so a resumed run continues its curves where they stopped.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..config.schema import ConfigError, Experiment, flatten
from ..evolution.loop import GenerationInfo


def _require(module: str, key: str, package: str):
    """`module` imported, or a ConfigError naming the `[output]` key and what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError([f"{key}: needs the {package} package ({e}): "
                           f"pip install 'neuroevo_sparse[tracking]' or pip install {package}"]) from None


def _summary_writer():
    return _require("torch.utils.tensorboard", "output.tensorboard", "tensorboard").SummaryWriter


def _mlflow():
    return _require("mlflow", "output.mlflow", "mlflow")


def check(exp: Experiment) -> None:
    """The trackers `[output]` asks for can be imported: said before a run directory exists."""
    if exp.output.tensorboard:
        _summary_writer()
    if exp.output.mlflow:
        _mlflow()


class TensorBoard:
    """Event files in <run dir>/tensorboard: `tensorboard --logdir populations/`."""

    def __init__(self, run_dir: Path):
        self.writer = _summary_writer()(log_dir=str(Path(run_dir) / "tensorboard"))

    def on_generation(self, info: GenerationInfo) -> None:
        for key, value in info.scalars.items():
            self.writer.add_scalar(key, value, info.generation)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per neuroevo run (named after its run id, resumed into the same one), in
    the MLflow experiment named like the experiment; the resolved config as its parameters."""

    def __init__(self, exp: Experiment, run_dir: Path):
        self.mlflow = mlflow = _mlflow()
        run_id = Path(run_dir).name
        mlflow.set_experiment(exp.experiment.name)
        found = mlflow.search_runs(filter_string=f"tags.neuroevo_run_dir = '{Path(run_dir).resolve()}'",
                                   output_format="list")
        if found:
            self.run = mlflow.start_run(run_id=found[0].info.run_id)
        else:
            self.run = mlflow.start_run(run_name=run_id,
                                        tags={"neuroevo_run_dir": str(Path(run_dir).resolve())})
            mlflow.log_params({k: _param(v) for k, v in flatten(exp.to_dict()).items()})

    def on_generation(self, info: GenerationInfo) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in info.scalars.items()}, step=info.generation,
                                run_id=self.run.info.run_id)

    def close(self) -> None:
        self.mlflow.end_run()


def _param(value: Any) -> str:
    return str(value)[:500]  # MLflow's limit on a parameter value


def trackers(exp: Experiment, run_dir: Path) -> list:
    """The trackers `[output]` switches on, for this run directory."""
    out: list = []
    if exp.output.tensorboard:
        out.append(TensorBoard(run_dir))
    if exp.output.mlflow:
        out.append(MLflow(exp, run_dir))
    return out
