"""Progress of a run: a bar on a terminal, one log line per generation otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("neuroevo_sparse")


class Progress:
    def __init__(self, mode: str, total_jobs: int, first_generation: int, last_generation: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.last_generation = last_generation
        self.start = time.monotonic()
        self.total_jobs = total_jobs
        self.jobs_done = 0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total_jobs, unit="ind", dynamic_ncols=True, file=sys.stderr)
        self.generation = first_generation

    def generation_started(self, generation: int) -> None:
        self.generation = generation
        self.gen_start = time.monotonic()
        if self.bar is not None:
            self.bar.set_description(f"gen {generation}/{self.last_generation}")

    def job_done(self, result) -> None:
        self.jobs_done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "log" and result.status != "ok":
            log.warning("individual %d: %s (%s)", result.individual_id, result.status, result.error)

    def jobs_dropped(self, n: int) -> None:
        """Jobs counted in the total that will not run, so that the bar still ends at its total:
        a halving generation's second part trains fewer where some of its first part failed."""
        if n <= 0:
            return
        self.total_jobs -= n
        if self.bar is not None:
            self.bar.total = self.total_jobs
            self.bar.refresh()

    def generation_done(self, best: dict, evaluated: int) -> None:
        text = (f"best fitness {_fmt(best['fitness'])}, val acc {best['val_accuracy']:.4f}, "
                f"test acc {_fmt(best['test_accuracy'])}, density {best['density']:.4f}")
        if best.get("hypervolume") is not None:
            text += f", hypervolume {best['hypervolume']:.4f}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif self.mode == "log":
            elapsed = time.monotonic() - self.start
            rate = self.jobs_done / elapsed if elapsed > 0 else 0.0
            eta = (self.total_jobs - self.jobs_done) / rate if rate > 0 else float("nan")
            log.info("gen %d/%d: %d trained in %.1fs | %s | ETA %s", self.generation,
                     self.last_generation, evaluated, time.monotonic() - self.gen_start, text, _eta(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
    return f"{v:.4f}"


def _eta(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
