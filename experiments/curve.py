"""Curve fitting with a neural ODE (He, Xie, Lin 2019, Sec. 4.1, Fig. 1).

The curve of `jaxode.data.curve` (100 points on t in (0, 1]) is fitted by the solution
of dx/dt = f(t, x) from the curve's x(0), f a two-layer ReLU network (1000 units per
layer in the paper; t enters each layer).  Loss: sum_i ||x(t_i) - x_model(t_i)||^2,
the trajectory read from one solve by dense output.  Two strategies (Sec. 3.2.2):

- ``euler-then-adjoint``: `--euler-iters` Adam iterations through `--euler-steps`
  fixed Euler steps with backprop, then `--finetune-iters` of dopri5 + adjoint;
- ``pure-adjoint``: dopri5 + adjoint until it reaches the first strategy's final
  loss, `--pure-iters` iterations or `--pure-seconds` seconds.

Both are scored by one accurate dopri5 solve (rtol = atol = 1e-6).  The summary also
gives the speed-up to equal loss (`equal_loss`).  Writes RUNS_DIR/NAME/: config.json,
metrics.csv, summary.json, curve_fig1.png, loss_vs_time.png.

    python -m experiments.curve --name curve          # the paper's sizes (CPU: long)
    python -m experiments.curve --config smoke        # seconds, a check only
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxode.data.curve import curve_data
from jaxode.fields.cnf import ConcatMLP
from jaxode.figures.curve import plot_curve_fit, plot_loss_vs_time
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.train import RegressionTask, count_params, with_solve
from jaxode.train.budget import time_to_equal_loss, train_on_batch
from jaxode.train.phases import Phase, apply_phase, parse_schedule

TASK = RegressionTask(reduction="sum")  # sum_i ||x(t_i) - x_model(t_i)||^2
SCORER = SolveConfig(rtol=1e-6, atol=1e-6, adjoint="direct", max_steps=8192)


@functools.lru_cache(maxsize=None)
def _adam(lr: float):
    return optax.adam(lr)  # one object per rate: both strategies share compiled steps


@eqx.filter_jit
def _score(block, batch):
    pred, _ = block(batch["x"], ts=batch["ts"])
    return jnp.sum((pred - batch["y"]) ** 2), pred


def score(block, batch):
    """Loss and trajectory of `block` solved accurately (`SCORER`)."""
    loss, pred = _score(with_solve(block, SCORER), batch)
    return float(loss), np.asarray(pred)


def parse_args(argv=None):
    from experiments.configs.node_ew import parse_run_flags
    from jaxode.cli import ArgumentParser, check_args

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--hidden", type=int, help="units per layer of f (paper 1000: ~30-55 s per adjoint "
                                 "iteration on a 2-core CPU)")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (both strategies)")
    a("--euler-iters", type=int, help="hybrid: iterations of Euler-backprop")
    a("--euler-steps", type=int, default=100, help="fixed Euler steps on [0, 1]")
    a("--finetune-iters", type=int, help="hybrid: iterations of dopri5 + adjoint after them")
    a("--schedule", help="the hybrid as 'euler:N,adjoint:M' (iterations; overrides the two above)")
    a("--pure-iters", type=int, help="pure adjoint: at most this many iterations")
    a("--pure-seconds", type=float, help="pure adjoint: at most this much training time (s)")
    a("--tol", type=float, default=1e-5, help="rtol = atol of the adjoint phases")
    a("--seed", type=int, default=0)
    a("--smoke", action="store_true", help="the smoke config's sizes (same as --config smoke)")
    args = parse_run_flags(p, "curve", argv)
    if args.schedule is not None:
        phases = _parse(p, args.schedule)
        if [ph.name for ph in phases] != ["euler", "adjoint"]:
            p.error(f"argument --schedule: expected 'euler:N,adjoint:M', got {args.schedule!r}.")
        args.euler_iters, args.finetune_iters = phases[0].epochs, phases[1].epochs
    if args.smoke:
        args.hidden, args.euler_iters, args.finetune_iters = 32, 20, 3
        args.pure_iters, args.pure_seconds = 5, 30.0
    check_args(p, args, positive=("hidden", "lr", "euler_iters", "euler_steps", "pure_iters",
                                  "pure_seconds", "tol"), non_negative=("finetune_iters", "seed"))
    return args


def _parse(parser, text):
    try:
        return parse_schedule(text)
    except ValueError as e:
        parser.error(f"argument --schedule: {e}")


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.run, exist_ok=True)
    with open(os.path.join(args.run, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=1)
    batch = curve_data()
    field = ConcatMLP(3, args.hidden, 2, activation=jax.nn.relu, key=jax.random.PRNGKey(args.seed))
    base = SolveConfig(rtol=args.tol, atol=args.tol, max_steps=2048)
    init = ODEBlock(field, 0.0, 1.0, base, name="curve")
    hybrid_log, pure_log = [], []

    def train(block, iters, label, log, **budget):
        return train_on_batch(block, TASK, batch, iters, _adam(args.lr), log, label=label,
                              lr=args.lr, **budget)

    # strategy 1: Euler-backprop, then adjoint fine-tuning
    block = apply_phase(init, Phase("euler", 1), base, euler_steps=args.euler_steps)
    block, opt, r1 = train(block, args.euler_iters, "euler", hybrid_log)
    loss_after_euler, _ = score(block, batch)
    block = apply_phase(block, Phase("adjoint", 1), base)
    block, _, r2 = train(block, args.finetune_iters, "finetune", hybrid_log, opt_state=opt,
                         clock0=r1["train_seconds"])
    hybrid_loss, hybrid_pred = score(block, batch)
    # strategy 2: pure adjoint, until it matches strategy 1 or runs out of budget
    block, _, r3 = train(init, args.pure_iters, "pure-adjoint", pure_log, target=hybrid_loss,
                         seconds=args.pure_seconds)
    pure_loss, pure_pred = score(block, batch)

    n = batch["y"].size
    hybrid = {"euler": r1, "finetune": r2, "loss_after_euler": loss_after_euler,
              "final_loss": hybrid_loss, "final_rmse": float(np.sqrt(hybrid_loss / n)),
              "train_seconds": r1["train_seconds"] + r2["train_seconds"],
              "seconds_per_iter_euler": r1["train_seconds"] / max(r1["iters"] - 1, 1),
              "seconds_per_iter_adjoint": r2["train_seconds"] / max(r2["iters"] - 1, 1)}
    summary = {
        "params": count_params(init), "euler-then-adjoint": hybrid,
        "pure-adjoint": {
            **r3, "final_loss": pure_loss, "final_rmse": float(np.sqrt(pure_loss / n)),
            "reached_target": bool(pure_loss <= hybrid_loss * 1.0001 or r3["last_loss"] <= hybrid_loss),
            "seconds_per_iter": r3["train_seconds"] / max(r3["iters"] - 1, 1)},
        "time_ratio_pure_over_hybrid": r3["train_seconds"] / hybrid["train_seconds"],
        "equal_loss": time_to_equal_loss(hybrid_log, pure_log)}
    runs = {"euler-then-adjoint": hybrid_log, "pure-adjoint": pure_log}
    with open(os.path.join(args.run, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "phase", "iter", "loss", "nfe", "seconds"])
        w.writeheader()
        w.writerows({"run": run, **r} for run, rows in runs.items() for r in rows)
    with open(os.path.join(args.run, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    ys = np.asarray(batch["y"])
    plot_curve_fit(os.path.join(args.run, "curve_fig1.png"), ys,
                   {"euler-then-adjoint": hybrid_pred, "pure-adjoint": pure_pred})
    plot_loss_vs_time(os.path.join(args.run, "loss_vs_time.png"), runs)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
