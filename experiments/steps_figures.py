"""Figures of a trained ODE-Net run: Carrara et al.'s Fig. 1 and the inference-time
tolerance sweep, drawn from a run folder read with `jaxode.train.load_run`.

- ``steps_hist.png``: histogram of the adaptive solver's steps per test image (one
  dopri5 solve per image, ``per_sample``), with mean +- std.
- ``fig1_steps.png``: Carrara et al. Fig. 1 -- the test images needing the most (top)
  and fewest (bottom) steps, each with its count (`experiments.classify_figures.steps_figure`).
- ``tol_sweep.png``: test accuracy and NFE per image against the inference tolerance
  rtol = atol (the trained weights unchanged; `jaxode.train.sweeps.tolerance_sweep`).
- ``figures.json``: the numbers behind them, with the weights' epoch and source.

A run still training is drawn from its newest checkpoint; every title says which
epoch it is.

Examples::

    python -m experiments.steps_figures results/mnist-chen-odenet
    python -m experiments.steps_figures results/mnist-chen-odenet --limit 2000 \\
        --tols 1e-1,1e-2,1e-3 --out /tmp/figs
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
        prog="python -m experiments.steps_figures",
        description=("Draw the steps-per-image histogram, Carrara et al.'s Fig. 1 (hardest "
                     "and easiest test images) and the inference tolerance sweep of the "
                     "ODE-Net run in RUN_DIR, into OUT (default RUN_DIR/figures, or "
                     "RUN_DIR/figures-epochE for the checkpoint of a run still training)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    a = p.add_argument
    a("run_dir", metavar="RUN_DIR", help="the run folder of an ODE-Net")
    a("--out", help="output folder (default: RUN_DIR/figures or RUN_DIR/figures-epochE)")
    a("--data-root", help="where the dataset files are (default: $JAXODE_DATA)")
    a("--limit", type=int,
      help="use the first N test images only (default: the run's own test set)")
    a("--batch-size", type=int, default=500, help="images per compiled call (default 500)")
    a("--tols", default="1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4",
      help="inference tolerances of the sweep ('' = no sweep)")
    a("--examples", type=int, default=5, help="images per row of Fig. 1 (default 5)")
    return p


def steps_histogram(steps: np.ndarray, path: str, title: str) -> None:
    """Histogram of per-image solver steps (one bar per integer count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = int(steps.min()), int(steps.max())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(steps, bins=np.arange(lo, hi + 2) - 0.5, color="C0", edgecolor="white")
    ax.set_xlabel("dopri5 steps per test image")
    ax.set_ylabel("images")
    ax.set_title(f"{title}\nmean {steps.mean():.2f} +- {steps.std():.2f} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from experiments.classify_figures import plot_tolerance_sweep, steps_figure
    from jaxode.cli import parse_tolerances
    from jaxode.train.sweeps import tolerance_sweep

    _cli.check_args(parser, args, positive=("limit", "batch_size", "examples"),
                    parsers={"tols": parse_tolerances}, existing=("data_root",))
    if not os.path.isdir(args.run_dir):
        parser.error(f"argument RUN_DIR: {args.run_dir!r} is not a folder; pass a run folder "
                     "such as results/mnist-chen-odenet.")
    from experiments.evaluate import run_test_set
    from jaxode.train import dataset_batches, evaluate, ode_blocks, with_batch_mode
    from jaxode.train import load_run

    t0 = time.perf_counter()
    try:
        run = load_run(args.run_dir, data_root=args.data_root)
    except (OSError, ValueError) as e:
        _cli.stop(str(e))
    if not ode_blocks(run.model):
        _cli.stop(f"{args.run_dir} is a {run.config['classify']['model']} run without ODE "
                  "blocks: it has no solver steps to draw; pass an ODE-Net run.")
    with _cli.data_errors_exit():
        test = run_test_set(run, data_root=args.data_root, limit=args.limit)
    # figures of a run still training are kept apart, by epoch
    out = args.out or os.path.join(
        run.path, "figures" if run.source == "final" else f"figures-epoch{run.epoch}")
    os.makedirs(out, exist_ok=True)
    planned = run.config["train"]["epochs"]
    label = (f"{os.path.basename(run.path)}, epoch {run.epoch} of {planned} "
             f"({run.source} weights), {len(test):,} test images")

    model = with_batch_mode(run.model, "per_sample")

    def batches():
        return dataset_batches(test, args.batch_size, shuffle=False)

    per = evaluate(model, run.task, batches(), batch_size=args.batch_size)
    steps = per["steps"]
    steps_histogram(steps, os.path.join(out, "steps_hist.png"), label)
    indices = steps_figure(test, steps, os.path.join(out, "fig1_steps.png"), k=args.examples)
    result = {"run": run.path, "epoch": run.epoch, "planned_epochs": planned,
              "weights": run.source, "images": len(test),
              "test_error": 1.0 - float(np.mean(per["acc"])),
              "steps_mean": float(steps.mean()), "steps_std": float(steps.std()),
              "steps_counts": {int(s): int(c) for s, c in zip(*np.unique(steps, return_counts=True))},
              "nfe_mean": float(per["nfe"].mean()), "nfe_std": float(per["nfe"].std()),
              "fig1_most_then_fewest": indices}
    tols = parse_tolerances(args.tols)
    if tols:
        result["tol_sweep"] = tolerance_sweep(model, run.task, batches, tols,
                                              batch_size=args.batch_size)
        plot_tolerance_sweep(result["tol_sweep"], os.path.join(out, "tol_sweep.png"))
    result["time_s"] = time.perf_counter() - t0
    with open(os.path.join(out, "figures.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{label}: test error {100 * result['test_error']:.2f}%, steps per image "
          f"{result['steps_mean']:.2f} +- {result['steps_std']:.2f}")
    for r in result.get("tol_sweep", []):
        if "error" in r:
            print(f"  tol {r['tol']:.0e}: failed ({r['error']})")
        else:
            print(f"  tol {r['tol']:.0e}: error {100 * (1 - r['acc']):.2f}%  "
                  f"NFE {r['nfe_mean']:.1f} +- {r['nfe_std']:.1f}")
    print(f"figures in {out} ({result['time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
