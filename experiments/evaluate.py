"""Evaluate a shipped or running classification run: test error, solver steps and NFE
per image (mean +- std), and the time it took.

The run is read with `jaxode.train.load_run` (final weights, or the newest checkpoint
of a run still training) and evaluated on its dataset's test split with the trainer's
own evaluation (`jaxode.train.evaluate`, the run's preprocessing).  ODE blocks are
solved one image at a time (``per_sample``, `jaxode.train.with_batch_mode`), so each
image has its own adaptive step count, as in Chen et al. Table 1 / Carrara et al.
Table 1 ("steps per image").

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

from jaxode import cli as _cli


def build_parser() -> argparse.ArgumentParser:
    p = _cli.ArgumentParser(
        prog="python -m experiments.evaluate",
        description=(
            "Evaluate the run in RUN_DIR (a folder of experiments.classify, e.g. "
            "results/mnist-chen-odenet) on its test set: test error, solver steps and NFE "
            "per image (mean +- std; one adaptive solve per image), time. The weights are "
            "final.eqx, or the newest checkpoint of a run still training (its epoch is "
            "printed)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    a = p.add_argument
    a("run_dir", metavar="RUN_DIR", help="the run folder")
    a("--data-root", help="where the dataset files are (default: $JAXODE_DATA)")
    a("--limit", type=int,
      help="evaluate the first N test images only (default: the run's own test set)")
    a("--batch-size", type=int, default=500, help="images per compiled call (default 500)")
    a("--batch-mode", choices=("per_sample", "joint"), default="per_sample",
      help="per_sample (default): one solve per image, per-image steps; joint: one solve "
           "per batch, as the evaluation during training")
    a("--tol", type=float,
      help="inference tolerance rtol = atol of the ODE blocks (default: the run's)")
    a("--json", action="store_true", help="print the result as one JSON object")
    return p


def run_test_set(run, *, data_root=None, limit=None):
    """The test split of the run's dataset: its first `limit` images, by default as
    many as the run itself was evaluated on (its ``test_limit``; None = all)."""
    from jaxode.data import load_dataset

    cfg = run.config["classify"]
    test = load_dataset(cfg["dataset"], "test", root=data_root or cfg.get("data_root"))
    n = limit if limit is not None else cfg.get("test_limit")
    return test if n is None else test.subset(slice(0, n))


def evaluate_run(run, *, data_root=None, limit=None, batch_size=500,
                 batch_mode="per_sample", tol=None, progress=False) -> dict:
    """Test error, steps/NFE per image (mean, std, min, max) and times of a loaded `run`."""
    from jaxode.train import dataset_batches, evaluate, ode_blocks, with_batch_mode, with_tolerance

    cfg = run.config["classify"]
    test = run_test_set(run, data_root=data_root, limit=limit)
    model = with_batch_mode(run.model, batch_mode)
    if tol is not None:
        model = with_tolerance(model, tol)
    t = time.perf_counter()
    per = evaluate(model, run.task, dataset_batches(test, batch_size, shuffle=False),
                   batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t
    acc = float(np.mean(per["acc"]))
    out = {"run": run.path, "weights": run.source, "epoch": run.epoch,
           "dataset": test.name, "images": len(test), "test_error": 1.0 - acc,
           "eval_time_s": seconds, "batch_mode": batch_mode}
    if ode_blocks(run.model):
        out["tol"] = tol if tol is not None else cfg.get("tol")
        for k in ("steps", "nfe"):
            v = per[k]
            out.update({f"{k}_mean": float(v.mean()), f"{k}_std": float(v.std()),
                        f"{k}_min": float(v.min()), f"{k}_max": float(v.max())})
    return out


def report(r: dict) -> str:
    lines = [f"run: {r['run']} ({r['weights']} weights, epoch {r['epoch']})",
             (f"test error: {100 * r['test_error']:.2f}%  on {r['images']:,} images of "
              f"{r['dataset']}")]
    if "steps_mean" in r:
        lines.append(f"solver steps per image ({r['batch_mode']}, tol {r['tol']:g}): "
                     f"{r['steps_mean']:.2f} +- {r['steps_std']:.2f} "
                     f"(min {r['steps_min']:.0f}, max {r['steps_max']:.0f})")
        lines.append(f"NFE per image: {r['nfe_mean']:.2f} +- {r['nfe_std']:.2f}")
    lines.append(f"time: {r['total_time_s']:.1f} s (evaluation {r['eval_time_s']:.1f} s, "
                 f"loading {r['load_time_s']:.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _cli.check_args(parser, args, positive=("limit", "batch_size", "tol"),
                    existing=("data_root",))
    if not os.path.isdir(args.run_dir):
        parser.error(f"argument RUN_DIR: {args.run_dir!r} is not a folder; pass a run folder "
                     "such as results/mnist-chen-odenet.")
    from jaxode.cli import MIN_TOL
    from jaxode.train import load_run

    if args.tol is not None and args.tol < MIN_TOL:
        parser.error(f"argument --tol: {args.tol!r} is below {MIN_TOL:g}, which float32 solves "
                     "cannot meet; pass e.g. --tol 1e-3.")
    t0 = time.perf_counter()
    try:
        run = load_run(args.run_dir, data_root=args.data_root)
    except (OSError, ValueError) as e:
        _cli.stop(str(e))
    load_s = time.perf_counter() - t0
    with _cli.data_errors_exit():
        r = evaluate_run(run, data_root=args.data_root, limit=args.limit,
                         batch_size=args.batch_size, batch_mode=args.batch_mode, tol=args.tol,
                         progress=not args.json and sys.stderr.isatty())
    r.update(load_time_s=load_s, total_time_s=time.perf_counter() - t0)
    print(json.dumps(r, indent=1) if args.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
