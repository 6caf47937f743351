"""Evaluate a shipped or running classification run (`jaxode.train.load_run`: final
weights, or the newest checkpoint of a run still training) on its test split: test
error, and solver steps and NFE per image (mean +- std) from one adaptive solve per
image (``per_sample``), as in Chen et al. / Carrara et al. Table 1.

Examples::

    python -m experiments.evaluate results/mnist-chen-odenet
    python -m experiments.evaluate results/mnist-chen-odenet --tol 1e-2 --limit 2000
    python -m experiments.evaluate results/mnist-chen-resnet --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxode import cli


def run_folder_parser(prog: str, description: str, doc: str) -> cli.ArgumentParser:
    """The flags of a command reading a run folder (this one and
    `experiments.steps_figures`): RUN_DIR, --data-root, --limit, --batch-size."""
    p = cli.ArgumentParser(prog=prog, description=description, epilog=doc.split("Examples::")[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("--data-root", help="where the dataset files are (default: $JAXODE_DATA)")
    p.add_argument("--limit", type=int,
                   help="use the first N test images only (default: the run's own test set)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="images per compiled call (default 500)")
    return p


def open_run(parser, args, **checks):
    """``(run, test set)`` of RUN_DIR after the flag checks (`checks`: more of
    `jaxode.cli.check_args`); a missing or damaged run or dataset stops with one line."""
    from jaxode.train import load_run

    cli.check_args(parser, args, positive=("limit", "batch_size", *checks.pop("positive", ())),
                   existing=("data_root",), **checks)
    if not os.path.isdir(args.run_dir):
        parser.error(f"argument RUN_DIR: {args.run_dir!r} is not a folder; pass a run folder "
                     "such as results/mnist-chen-odenet.")
    with cli.data_errors_exit():
        run = load_run(args.run_dir, data_root=args.data_root)
        return run, run.test_set(data_root=args.data_root, limit=args.limit)


def build_parser() -> argparse.ArgumentParser:
    p = run_folder_parser("python -m experiments.evaluate", (
        "Evaluate the run in RUN_DIR (a folder of experiments.classify) on its test set: "
        "test error, solver steps and NFE per image (mean +- std; one adaptive solve per "
        "image), time. The weights are final.eqx, or the newest checkpoint of a run still "
        "training (its epoch is printed)."), __doc__)
    p.add_argument("--batch-mode", choices=("per_sample", "joint"), default="per_sample",
                   help="per_sample (default): one solve per image, per-image steps; joint: "
                        "one solve per batch, as the evaluation during training")
    p.add_argument("--tol", type=float,
                   help="inference tolerance rtol = atol of the ODE blocks (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def report(r: dict) -> str:
    lines = [f"run: {r['run']} ({r['weights']} weights, epoch {r['epoch']})",
             (f"test error: {100 * r['test_error']:.2f}%  on {r['images']:,} images of "
              f"{r['dataset']}")]
    if "steps_mean" in r:
        lines.append(f"solver steps per image ({r['batch_mode']}, tol {r['tol']:g}): "
                     f"{r['steps_mean']:.2f} +- {r['steps_std']:.2f} "
                     f"(min {r['steps_min']}, max {r['steps_max']})")
        lines.append(f"NFE per image: {r['nfe_mean']:.2f} +- {r['nfe_std']:.2f}")
    lines.append(f"time: {r['total_time_s']:.1f} s (evaluation {r['eval_time_s']:.1f} s, "
                 f"loading {r['load_time_s']:.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from jaxode.train import ode_blocks
    from jaxode.train.steps import step_stats

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tol is not None and args.tol < cli.MIN_TOL:
        parser.error(f"argument --tol: {args.tol!r} is below {cli.MIN_TOL:g}, which float32 "
                     "solves cannot meet; pass e.g. --tol 1e-3.")
    t0 = time.perf_counter()
    run, test = open_run(parser, args, positive=("tol",))
    load_s = time.perf_counter() - t0
    with cli.data_errors_exit():
        per = run.evaluate(test, batch_size=args.batch_size, batch_mode=args.batch_mode,
                           tol=args.tol, progress=not args.json and sys.stderr.isatty())
    r = {"run": run.path, "weights": run.source, "epoch": run.epoch, "dataset": test.name,
         "images": len(test), "test_error": 1.0 - float(np.mean(per["acc"])),
         "eval_time_s": time.perf_counter() - t0 - load_s, "batch_mode": args.batch_mode}
    if ode_blocks(run.model):
        r.update(tol=args.tol or (run.config.get("classify") or run.config).get("tol"),
                 **step_stats(per))
    r.update(load_time_s=load_s, total_time_s=time.perf_counter() - t0)
    print(json.dumps(r, indent=1) if args.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
