"""Figures of a trained ODE-Net run: Carrara et al.'s Fig. 1 and the inference-time
tolerance sweep, drawn from a run folder read with `jaxode.train.load_run`.

- ``steps_hist.png``: histogram of the adaptive solver's steps per test image (one
  dopri5 solve per image, ``per_sample``), with mean +- std.
- ``fig1_steps.png``: Carrara et al. Fig. 1 -- the test images needing the most (top)
  and fewest (bottom) steps, each with its count.
- ``tol_sweep.png``: test accuracy and NFE per image against the inference tolerance
  rtol = atol (the trained weights unchanged; `jaxode.train.sweeps.tolerance_sweep`).
- ``figures.json``: the numbers behind them, with the weights' epoch and source.

A run still training is drawn from its newest checkpoint; every title says which
epoch it is.  The figures themselves are `jaxode.train.steps`.

Examples::

    python -m experiments.steps_figures results/mnist-chen-odenet
    python -m experiments.steps_figures results/mnist-chen-odenet --limit 2000 \\
        --tols 1e-1,1e-2,1e-3 --out /tmp/figs
"""

from __future__ import annotations

import json
import os
import sys
import time

from experiments.evaluate import open_run, run_folder_parser
from jaxode import cli


def build_parser():
    p = run_folder_parser("python -m experiments.steps_figures", (
        "Draw the steps-per-image histogram, Carrara et al.'s Fig. 1 (hardest and easiest "
        "test images) and the inference tolerance sweep of the ODE-Net run in RUN_DIR, into "
        "OUT (default RUN_DIR/figures, or RUN_DIR/figures-epochE for the checkpoint of a run "
        "still training)."), __doc__)
    p.add_argument("--out", help="output folder (default: RUN_DIR/figures or "
                                 "RUN_DIR/figures-epochE)")
    p.add_argument("--tols", default="1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4",
                   help="inference tolerances of the sweep ('' = no sweep)")
    p.add_argument("--examples", type=int, default=5, help="images per row of Fig. 1 (default 5)")
    return p


def main(argv=None) -> int:
    from jaxode.train import ode_blocks
    from jaxode.train.steps import evaluate_steps, sweep_lines

    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    run, test = open_run(parser, args, positive=("examples",),
                         parsers={"tols": cli.parse_tolerances})
    if not ode_blocks(run.model):
        cli.stop(f"{args.run_dir} is a {run.name} run without ODE blocks: it has no solver "
                 "steps to draw; pass an ODE-Net run.")
    # figures of a run still training are kept apart, by epoch
    out = args.out or os.path.join(
        run.path, "figures" if run.source == "final" else f"figures-epoch{run.epoch}")
    os.makedirs(out, exist_ok=True)
    planned = run.config["train"]["epochs"]
    label = (f"{os.path.basename(run.path)}, epoch {run.epoch} of {planned} "
             f"({run.source} weights), {len(test):,} test images")
    figures, _ = evaluate_steps(run.model, run.task, test, out, batch_size=args.batch_size,
                                examples=args.examples, tols=cli.parse_tolerances(args.tols),
                                histogram=label)
    result = {"run": run.path, "epoch": run.epoch, "planned_epochs": planned,
              "weights": run.source, "images": len(test), **figures,
              "time_s": time.perf_counter() - t0}
    with open(os.path.join(out, "figures.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{label}: test error {100 * result['test_error']:.2f}%, steps per image "
          f"{result['steps_mean']:.2f} +- {result['steps_std']:.2f}")
    for line in sweep_lines(result.get("tol_sweep", [])):
        print(line)
    print(f"figures in {out} ({result['time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
