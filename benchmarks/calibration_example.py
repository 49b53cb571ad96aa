"""What `auto` measures (neuroevo_sparse/train/calibration.py) on the reference's work
(benchmarks/experiments/ga_work.toml) at the given densities, with an empty cache of its own:
the log a run prints before its first generation, also written to --out.

    python benchmarks/calibration_example.py --densities 0.1 0.5
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.5])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_example.txt")
    args = ap.parse_args()
    os.environ["NEUROEVO_SPARSE_CACHE"] = tempfile.mkdtemp(prefix="calibration-example-")
    from neuroevo_sparse import config
    from neuroevo_sparse.problem import data
    from neuroevo_sparse.train.calibration import plan_for
    from neuroevo_sparse.problem.models import Architecture

    text = io.StringIO()
    for stream in (sys.stdout, text):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("neuroevo_sparse").addHandler(handler)
    logging.getLogger("neuroevo_sparse").setLevel(logging.INFO)
    for d in args.densities:
        print(f"density {d:g}:", file=text, flush=True)
        exp = config.load(ROOT / "benchmarks" / "experiments" / "ga_work.toml", [f"sparsity.density={d}"])
        splits = data.load(exp.data, exp.experiment.seed)
        plan_for(exp, Architecture.of(exp, splits.input_shape, splits.num_classes), splits)
    args.out.write_text(f"python benchmarks/calibration_example.py {' '.join(sys.argv[1:])}\n" + text.getvalue())


if __name__ == "__main__":
    main()
