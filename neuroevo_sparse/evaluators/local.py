"""In-process evaluation: one job after another in the driver."""

from __future__ import annotations

from ..data import Splits
from ..jobs import TrainJob, TrainResult, TrainSpec
from ..training import DeviceData, pick_device, train
from . import OnResult


class LocalEvaluator:
    def __init__(self, spec: TrainSpec, splits: Splits, gpus: float = 0.0):
        self.spec = spec
        self.data = DeviceData(splits, pick_device(gpus))

    def evaluate(self, jobs: list[TrainJob], on_result: OnResult | None = None) -> list[TrainResult]:
        results = []
        for job in jobs:
            results.append(train(job, self.spec, self.data))
            if on_result:
                on_result(results[-1])
        return results

    def close(self) -> None:
        pass
