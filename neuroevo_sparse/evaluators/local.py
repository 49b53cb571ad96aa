"""In-process evaluation: one group of jobs after another in the driver."""

from __future__ import annotations

from ..data import Splits
from ..jobs import TrainJob, TrainResult, TrainSpec
from ..training import DeviceData, pick_device
from ..worker import groups, train_group
from . import OnResult


class LocalEvaluator:
    def __init__(self, spec: TrainSpec, splits: Splits, gpus: float = 0.0):
        self.spec = spec
        self.data = DeviceData(splits, pick_device(gpus))

    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        results = []
        for group in groups(jobs, self.spec):
            for result in train_group(group, self.spec, self.data):
                results.append(result)
                if on_result:
                    on_result(result)
        return results

    def close(self) -> None:
        pass
