"""2-D normalizing flows: a CNF with evolving weights (NODE-EW) vs fixed weights
(He, Xie, Lin 2019, Sec. 4.3, Fig. 3).

Maximum likelihood on generated 2-D densities (`jaxode.data.densities`), a fresh
batch each iteration (the paper: Adam, 1000 iterations of 100 points), through
`jaxode.train.fit`.  The flows are `jaxode.models.flows.make_flow`; the figures
(`jaxode.figures.flows`) are the training curves (Fig. 3), densities and samples.
Writes RUNS_DIR/NAME/: config.json, metrics.csv, summary.json (test NLL, wall time,
NFE), densities.png, training_curves.png.

Stabilising NODE-EW: Adam moves every parameter by about lr per step, and a step of
theta_1 (the parameters of g) changes dtheta/dt of a whole weight tensor at once; at
the shared lr 1e-2 the flow grows stiff and the loss climbs back.  ``--g-lr`` gives
theta_1 its own rate (`TrainConfig.g_lr_scale`; default lr / 100, stable over 3,000
iterations in docs/results/node_ew.md); ``--clip`` clips the global gradient norm.
``--trace hutchinson`` trains with FFJORD's estimator (test NLL and plots: exact).
``--reg kinetic=W,jacobian=W`` (RNODE, of dz/dt), ``--reg taylor=W`` (TayNODE's
int ||d^K z/dt^K||^2 dt, K = ``--taylor-order``) and ``--steer B`` regularise the
fixed flow's dynamics (`jaxode.train.regularize`; benchmarks.cnf_regularizers).

    python -m experiments.flow --name flow --densities moons,rings,checkerboard
    python -m experiments.flow --name flow_old --g-lr 1e-2 --clip 0  # unstabilised
    python -m experiments.flow --config smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import jax
import numpy as np

from jaxode.data.densities import density_names, sample_density
from jaxode.fields.cnf import PROBES, TRACES
from jaxode.figures.flows import plot_densities, plot_training_curves
from jaxode.models.flows import FLOW_KINDS, density_grid, make_flow, training_summary
from jaxode.ode import SolveConfig
from jaxode.train import DensityTask, count_params, evaluate
from jaxode.train.flows import fit_flow

DENSITIES = density_names()
HALF = 4.5  # the plots and the grid cover [-HALF, HALF]^2


def main(argv=None):
    from experiments.configs.node_ew import parse_run_flags
    from jaxode.cli import ArgumentParser, check_args, parse_regularizers, split_list
    from jaxode.ode import REGULARIZERS

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--densities", default=",".join(DENSITIES), help=f"from {', '.join(DENSITIES)}")
    a("--models", default=",".join(FLOW_KINDS), help="fixed (Chen et al. CNF), evolving (NODE-EW)")
    a("--iters", type=int, help="Adam iterations per model")
    a("--batch", type=int, help="fresh samples per iteration")
    a("--hidden", type=int, help="units per hidden layer of f")
    a("--depth", type=int, default=2, help="hidden layers of f")
    a("--g-hidden", type=int, default=8, help="units of the elementwise weight dynamics g")
    a("--lr", type=float, default=1e-2, help="Adam learning rate of theta_0")
    a("--g-lr", type=float, help="Adam learning rate of theta_1 (default lr / 100)")
    a("--clip", type=float, default=0.0, help="clip the global gradient norm (0: off)")
    a("--trace", default="exact", choices=TRACES, help="trace of df/dz in training")
    a("--probe", default="rademacher", choices=PROBES, help="the Hutchinson probe")
    a("--tol", type=float, default=1e-4, help="rtol = atol of dopri5")
    a("--test-size", type=int, help="fresh test samples")
    a("--grid", type=int, help="grid points per axis of the density plot")
    a("--reg", default="", help="regulariser weights of the fixed flow, e.g. "
      f"kinetic=0.1,jacobian=0.1 (RNODE); of {', '.join(REGULARIZERS)}")
    a("--taylor-order", type=int, default=2,
      help="K of the taylor regulariser int ||d^K z/dt^K||^2 dt (TayNODE)")
    a("--steer", type=float, help="STEER: each step's t1 ~ U(1 - B, 1 + B), B < 1 (fixed flow)")
    a("--seed", type=int, default=0)
    a("--smoke", action="store_true", help="the smoke config's sizes (same as --config smoke)")
    args = parse_run_flags(p, "flow", argv)
    if args.smoke:
        args.iters, args.hidden, args.test_size, args.grid = 5, 8, 200, 20
    check_args(p, args, positive=("iters", "batch", "hidden", "depth", "g_hidden", "lr", "tol",
                                  "test_size", "g_lr", "steer", "taylor_order"), non_negative=("seed", "clip"),
               at_least={"grid": 2}, choices={"densities": DENSITIES, "models": FLOW_KINDS},
               parsers={"reg": parse_regularizers})
    densities, models = split_list(args.densities), split_list(args.models)
    regs = dict(parse_regularizers(args.reg))
    if (regs or args.steer) and models != ["fixed"]:
        p.error("--reg and --steer apply to the fixed-weight flow: add --models fixed.")
    args.g_lr = args.lr / 100 if args.g_lr is None else args.g_lr
    os.makedirs(args.run, exist_ok=True)
    with open(os.path.join(args.run, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=1)
    config = SolveConfig(rtol=args.tol, atol=args.tol)
    summary, logs, grids, samples = {}, [], {}, {}
    axis, points = density_grid(HALF, args.grid)
    for density in densities:
        # seeded by the density's place in the registry, not in --densities: the same
        # density gets the same data stream and test set whatever else is run
        d_i = DENSITIES.index(density)
        test = sample_density(density, jax.random.PRNGKey(10_000 + d_i), args.test_size)
        summary[density] = {}
        for kind in models:
            flow = make_flow(kind, args.hidden, args.depth, config, key=jax.random.PRNGKey(args.seed),
                             g_hidden=args.g_hidden, trace=args.trace, probe=args.probe)
            flow, log, compile_s, test_nll = fit_flow(
                flow, density, iters=args.iters, batch=args.batch, lr=args.lr, g_lr=args.g_lr,
                clip=args.clip, seed=args.seed + d_i, test=test, label=f"{density}/{kind}",
                progress=not args.no_progress, regularizers=regs, steer=args.steer,
                taylor_order=args.taylor_order)
            logs += log
            logp = -evaluate(flow, DensityTask(), [{"x": points}])["nll"]  # exact trace
            grids[(density, kind)] = logp.reshape(args.grid, args.grid)
            samples[(density, kind)] = np.asarray(
                flow.with_trace("exact").sample(jax.random.PRNGKey(args.seed + 77), 2000)[0])
            summary[density][kind] = {
                "params": count_params(flow), "test_nll": test_nll, "compile_seconds": compile_s,
                "grid_mass": float(np.exp(logp).sum() * (axis[1] - axis[0]) ** 2),
                **training_summary(log)}
            print(f"{density}/{kind}", json.dumps(summary[density][kind]))
            _write(args.run, logs, summary)  # after every model: a stopped run keeps its results
    plot_densities(os.path.join(args.run, "densities.png"), densities, models, grids, samples, HALF)
    plot_training_curves(os.path.join(args.run, "training_curves.png"), densities, models, logs)
    return summary


def _write(folder, logs, summary):
    with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(logs[0]))
        w.writeheader()
        w.writerows(logs)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
