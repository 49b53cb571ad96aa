"""`neuroevo run / resume / train / inspect / plot / export`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

# Nothing of the package at module level: the supervising parent of a run needs none of it,
# and each import there (numpy, the config) is start-up time of every run.
log = logging.getLogger("neuroevo_sparse")


class StopFlag:
    """First SIGINT/SIGTERM: finish the generation in flight, checkpoint, stop. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping after the generation in flight (again to stop now)",
                    signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.requested


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.func in (cmd_run, cmd_resume) and not os.environ.get(_CHILD):
        return supervise(sys.argv[1:] if argv is None else argv)
    if os.environ.get(_CHILD):
        _die_with_parent()
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        code = _dispatch(args)
    finally:
        _report("exited")  # any way out of here explains itself (a message or a traceback)
    return code


def _dispatch(args) -> int:
    """Run the command; every error a user can cause or meet ends as one message and an exit
    status (2: bad input, 3: cluster gone, 4: the run failed, 1: the system), with how to go on.
    `--debug` shows the traceback instead."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"interrupted: stopped at once, every generation completed before is checkpointed{_resume_hint()}",
              file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        # Imported here, not before the command: evolution imports torch, report pandas.
        from .config.schema import ConfigError
        from .problem.data import DatasetError
        from .evaluators import ClusterLost
        from .evolution.loop import AllFailed
        from .report.tables import HistoryError
        from .store.checkpoint import NoValidCheckpoint
        from .store.lock import RunDirLocked

        if isinstance(e, RunDirLocked):  # another process writes the run: nothing to resume here
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, (ConfigError, DatasetError, NoValidCheckpoint, HistoryError, FileExistsError,
                          FileNotFoundError)):  # FileNotFoundError: a missing run dir, dataset (DatasetNotFound)
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ClusterLost):
            print(f"error: {e}", file=sys.stderr)
            return 3
        if isinstance(e, AllFailed):
            print(f"error: {e}{_resume_hint()}", file=sys.stderr)
            return 4
        if isinstance(e, OSError):  # a read-only location, a full disk, a lost mount
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}{_resume_hint()}", file=sys.stderr)
            return 1
        print(f"error: {type(e).__name__}: {e}{_resume_hint()}\n(rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _resume_hint() -> str:
    """How to go on, for a run that stopped on an error it may get past (space freed, cluster back)."""
    if not _RUN_DIR:
        return ""
    return (f"\nEvery generation completed before is checkpointed in {_RUN_DIR[0]}; once the cause is "
            f"fixed, continue with:\n  neuroevo resume {_RUN_DIR[0]}")


_CHILD = "NEUROEVO_SUPERVISED_REPORT"


def supervise(argv: list[str]) -> int:
    """Run `run`/`resume` in a child process and report how it ended.

    Ray's core worker ends a driver whose cluster vanished with a native exit that no Python
    handler sees, and the kernel's OOM killer sends SIGKILL: in both cases the child cannot
    say anything, so this parent does: what happened, where the run is, how to resume.
    The child runs in its own process group so that a terminal's Ctrl-C reaches it once,
    forwarded from here.
    """
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("r", prefix="neuroevo-", suffix=".run") as report:
        env = {**os.environ, _CHILD: report.name}
        child = subprocess.Popen([sys.executable, "-m", "neuroevo_sparse.cli", *argv], env=env, process_group=0)
        forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = child.wait()
        lines = report.read().splitlines()
    run_dir = next((line[4:] for line in lines if line.startswith("run=")), "")
    if "exited" in lines:  # the child explained its own outcome
        return code
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    hint = (" (SIGKILL often means the kernel ran out of memory)" if code == -signal.SIGKILL else
            " without reporting an error: if it ran on Ray, the Ray cluster (or its head node) is "
            "probably gone" if code > 0 else "")
    print(f"error: the run {how}{hint}.", file=sys.stderr)
    if run_dir:
        print(f"Every generation completed before is checkpointed in {run_dir}; continue with:\n"
              f"  neuroevo resume {run_dir}", file=sys.stderr)
    if code < 0:  # end the same way, so that callers see the same status
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _die_with_parent() -> None:
    """A supervised run dies with its supervisor (`kill -9` on `neuroevo` stops the run too)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(1)


_RUN_DIR: list[str] = []


def report_run_dir(path) -> None:
    """Tell the supervising parent (if any) where the run lives, as soon as it exists."""
    _RUN_DIR[:] = [str(path)]
    _report(f"run={path}")


def _report(line: str) -> None:
    target = os.environ.get(_CHILD)
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p = argparse.ArgumentParser(prog="neuroevo", description=__doc__, parents=[common])
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    add = sub.add_parser
    sub.add_parser = lambda *a, **k: add(*a, parents=[common], **k)  # -q after the command too

    run = sub.add_parser("run", help="run an experiment in a new run directory")
    run.add_argument("experiment", type=Path, help="experiment TOML file")
    run.add_argument("--run-dir", type=Path, help="run directory (default: populations/<name>/<run-id>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set evolution.population=8 (repeatable)")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    res.add_argument("run_dir", type=Path)
    res.add_argument("--generations", type=_non_negative, help="new total number of generations")
    res.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    res.add_argument("--address", help="Ray cluster to join")
    res.set_defaults(func=cmd_resume)

    tr = sub.add_parser("train", help="train one network with a structure rule ([structure].method): "
                                      "dense, static, set, rigl, threshold, strength, magnitude")
    tr.add_argument("experiment", type=Path, help="experiment TOML file")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set structure.method=rigl (repeatable)")
    tr.add_argument("--seed", type=int, nargs="+", help="seeds (default: experiment.seed)")
    tr.add_argument("--json", type=Path, help="write every epoch of every seed to this JSON file")
    tr.set_defaults(func=cmd_train)

    ins = sub.add_parser("inspect", help="print tables of a run: generations, top individuals, Pareto front")
    ins.add_argument("run_dir", type=Path)
    ins.add_argument("--top", type=_positive, default=10, help="how many top individuals (default 10)")
    ins.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    ins.set_defaults(func=cmd_inspect)

    plot = sub.add_parser("plot", help="write PNG figures of a run (default into RUN_DIR/plots)")
    plot.add_argument("run_dir", type=Path)
    plot.add_argument("--out", type=Path, help="directory for the PNGs")
    plot.add_argument("--baselines", type=Path, help="JSON of benchmarks/front.py: draw the final front against its curves")
    plot.set_defaults(func=cmd_plot)

    exp = sub.add_parser("export", help="write an individual as a plain torch state_dict + masks + metrics")
    exp.add_argument("run_dir", type=Path)
    exp.add_argument("--out", type=Path, help="output file (default RUN_DIR/export/individual-ID.pt)")
    which = exp.add_mutually_exclusive_group()
    which.add_argument("--id", type=int, dest="individual", help="individual id (default: the best)")
    which.add_argument("--max-params", type=_positive, metavar="N",
                       help="the most accurate (by validation) individual with at most N active parameters")
    exp.set_defaults(func=cmd_export)

    cfg = sub.add_parser("config", help="print the configuration reference: every TOML key with its type, "
                                        "default, allowed values and meaning")
    cfg.add_argument("--doc", action="store_true", help="as the Markdown page docs/configuration.md (the default)")
    cfg.set_defaults(func=cmd_config)
    return p


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative; got {value}")
    return value


def _address_overrides(args) -> list[str]:
    address = args.address or os.environ.get("RAY_ADDRESS")
    return [f'resources.address="{address}"'] if address else []


def cmd_run(args) -> int:
    from .config import schema as config

    exp = config.load(args.experiment, args.overrides + _address_overrides(args))
    loading = _load_in_background(exp)
    from . import launch  # torch, pandas, Ray's client: 2-3 s of imports, while the data loads

    stop = StopFlag()
    run, state = launch.start(exp, args.run_dir, should_stop=stop, on_created=report_run_dir, splits=loading)
    return _finished(run, state, exp.evolution.generations, stop)


def _load_in_background(exp):
    """A built-in dataset loading in a thread, started before the training code is imported:
    reading, decompressing and normalising release the GIL, so on two cores the load and the
    imports take the time of the longer one. A `data.factory` is the user's code, which may
    import what the main thread is importing: it is loaded where it always was (launch.start)."""
    if exp.data.factory is not None:
        return None
    from concurrent.futures import ThreadPoolExecutor

    from .problem import data

    pool = ThreadPoolExecutor(1, thread_name_prefix="neuroevo-data")
    loading = pool.submit(data.load, exp.data, exp.experiment.seed)
    pool.shutdown(wait=False)
    return loading


def cmd_train(args) -> int:
    import dataclasses
    import json

    from .config import schema as config
    from .problem import data
    from .train import single as dst

    exp = config.load(args.experiment, args.overrides)
    splits = data.load(exp.data, exp.experiment.seed)
    runs = []
    for seed in args.seed or [exp.experiment.seed]:
        print(f"{exp.structure.method}, seed {seed}: epoch  train loss  val acc  test acc  density  changed", flush=True)
        try:
            run = dst.train_network(exp, splits, seed, on_epoch=lambda r: print(
                f"  {r.epoch:>5}  {r.train_loss:>10.4f}  {r.val_accuracy:>7.4f}  {r.test_accuracy:>8.4f}  "
                f"{r.density:>7.4f}  {r.changed:>7.2%}  ({r.seconds:.0f} s)", flush=True))
        except dst.DivergedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 4
        print(f"  converged at epoch: {run.converged_epoch}")
        runs.append(run)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": exp.to_dict(), "runs": [
            {"method": r.method, "seed": r.seed, "converged_epoch": r.converged_epoch,
             "records": [dataclasses.asdict(x) for x in r.records]} for r in runs]}, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_resume(args) -> int:
    from . import launch

    stop = StopFlag()
    report_run_dir(args.run_dir)
    run, state = launch.resume(args.run_dir, args.overrides + _address_overrides(args), args.generations,
                             should_stop=stop)
    return _finished(run, state, run.config().evolution.generations, stop)


def cmd_inspect(args) -> int:
    import json

    import pandas as pd

    from .report import tables as report

    from .report.export import exportable_ids

    history = report.load(args.run_dir)
    # The top individuals ever evaluated include ones that died out; say which `export` has.
    stored = exportable_ids(args.run_dir)
    top = report.top(history, args.top)
    top = top.assign(exportable=top.individual_id.isin(stored))
    tables = {"generations": report.generations(history).reset_index(),
              "top": top, "pareto_front": report.pareto_front(history)}
    if args.json:
        print(json.dumps({k: json.loads(v.to_json(orient="records")) for k, v in tables.items()}, indent=1))
        return 0
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        for title, table in [("Generations (population after selection)", tables["generations"]),
                             (f"Top {args.top} individuals", tables["top"]),
                             ("Pareto front: validation accuracy vs active parameters (test accuracy "
                              "shown, not used to choose)", tables["pareto_front"])]:
            print(f"== {title}\n{table.to_string(index=False)}\n")
        print(f"Export a point of the front, or a top individual marked exportable: neuroevo export {args.run_dir} "
              f"--id ID   (or --max-params N: the best with at most N active parameters)")
    return 0


def cmd_plot(args) -> int:
    from .report import plots

    try:
        figures = plots.all_figures(args.run_dir, args.out, args.baselines)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in figures:
        print(path)
    return 0


def cmd_config(args) -> int:
    from .config import doc as config_doc

    print(config_doc.markdown(), end="")
    return 0


def cmd_export(args) -> int:
    from .report.export import export

    try:
        print(export(args.run_dir, args.out, args.individual, args.max_params))
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


def _finished(run, state, generations: int, stop: StopFlag) -> int:
    if state.generation < generations:
        print(f"stopped after generation {state.generation} of {generations}, checkpoint saved; "
              f"continue with:\n  neuroevo resume {run.path}", file=sys.stderr)
        return 130 if stop.requested else 1
    print(f"done: {generations} generation(s) in {run.path}\n"
          f"  best individual: {run.best}\n  history: pandas.read_parquet('{run.history}')",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    if os.environ.get(_CHILD):
        # A supervised run has written and closed everything (Ray is stopped): skip the
        # interpreter's teardown of torch and Ray, about a second.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
