"""Curve fitting with a neural ODE (He, Xie, Lin 2019, Sec. 4.1, Fig. 1).

The trajectory x(t) = [sin t cos t, sin^2 t + cosh^2 t, e^t], t in [0, 1], sampled at
t_i = i / 100 (i = 1..100), is fitted by the solution of dx/dt = f(t, x), x(0) = x(0)
of the curve, where f is a two-layer ReLU network with 1000 units per layer (t enters
each layer as an extra input).  Loss: sum_i ||x(t_i) - x_model(t_i)||^2, the model's
trajectory read from one solve by dense output (``ts=``).

Two training strategies (Sec. 3.2.2):

- ``euler-then-adjoint``: `--euler-iters` iterations through 100 fixed Euler steps
  with plain backprop, then `--finetune-iters` iterations of dopri5 + backsolve adjoint;
- ``pure-adjoint``: dopri5 + backsolve adjoint from the start, until it reaches the
  first strategy's final loss, `--pure-iters` iterations, or `--pure-seconds` seconds.

Both are scored by the same accurate dopri5 solve (rtol = atol = 1e-6).  The summary
also gives the speed-up to equal loss (`equal_loss`: when the hybrid first reached the
best loss of the pure-adjoint run, against when that run reached it).

    python -m experiments.curve --out runs/curve            # defaults (CPU: minutes)
    python -m experiments.curve --smoke                     # seconds, a check only
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxode.fields.cnf import ConcatMLP
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.train import RegressionTask, TrainConfig, count_params, fit, with_solve
from jaxode.train.phases import Phase, apply_phase, parse_schedule


def target_curve(t):
    """x(t) = [sin t cos t, sin^2 t + cosh^2 t, e^t] (paper Sec. 4.1)."""
    return jnp.stack([jnp.sin(t) * jnp.cos(t), jnp.sin(t) ** 2 + jnp.cosh(t) ** 2, jnp.exp(t)], -1)


TASK = RegressionTask(reduction="sum")  # sum_i ||x(t_i) - x_model(t_i)||^2


@functools.lru_cache(maxsize=None)
def _adam(lr: float):
    return optax.adam(lr)  # one object per rate: both strategies share compiled steps


@eqx.filter_jit
def _score(block, x0, ts, xs):
    pred, _ = block(x0, ts=ts)
    return jnp.sum((pred - xs) ** 2), pred


def _train(block, batch, iters, label, lr, *, opt_state=None, target=None, seconds=None,
           log=None, clock0=0.0):
    """Up to `iters` Adam steps of `jaxode.train.fit` on the curve (continuing from
    `opt_state`, e.g. the Euler phase's); stop early at `target` loss or after
    `seconds`.  The first step (compilation) is timed separately and excluded.
    Returns the block, the optimiser state and the phase's record."""
    rec = {"iters": 0, "train_seconds": 0.0, "compile_seconds": 0.0, "last_loss": math.inf}
    if iters == 0:
        return block, opt_state, rec

    def on_step(row):
        if row["step"] == 1:
            rec["compile_seconds"] = row["step_time_s"]
        else:
            rec["train_seconds"] += row["step_time_s"]
        rec["iters"], rec["last_loss"] = row["step"], row["loss"]
        if log is not None:
            log.append({"phase": label, "iter": row["step"] - 1, "loss": row["loss"],
                        "nfe": int(row["nfe"]), "seconds": clock0 + rec["train_seconds"]})
        return ((target is not None and row["loss"] <= target)
                or (seconds is not None and rec["train_seconds"] > seconds))

    config = TrainConfig(epochs=1, batch_size=1, lr=lr, data_parallel=False)
    result = fit(block, TASK, lambda epoch: [batch] * iters, config=config,
                 optimizer=_adam(lr), init_opt_state=opt_state, on_step=on_step,
                 log=lambda s: None)
    return result.model, result.opt_state, rec


def _hybrid_schedule(parser, text):
    """``euler:N,adjoint:M`` -> (N, M); one phase of each, Euler first."""
    try:
        phases = parse_schedule(text)
    except ValueError as e:
        parser.error(f"argument --schedule: {e}")
    names = [ph.name for ph in phases]
    if names != ["euler", "adjoint"]:
        parser.error(f"argument --schedule: expected 'euler:N,adjoint:M', got {text!r}.")
    return phases[0].epochs, phases[1].epochs


def _equal_loss(log):
    """Speed-up to equal loss from the per-iteration log: the best training loss the
    pure-adjoint run reached, when it reached it, and when the hybrid run first
    reached it (training losses: the Euler phase's are on its Euler trajectory)."""
    pure = [r for r in log if r["run"] == "pure-adjoint"]
    hybrid = [r for r in log if r["run"] == "euler-then-adjoint"]
    if not pure or not hybrid:
        return None
    best = min(pure, key=lambda r: r["loss"])
    hit = next((r for r in hybrid if r["loss"] <= best["loss"]), None)
    out = {"pure_best_loss": best["loss"], "pure_seconds_to_best": best["seconds"],
           "hybrid_seconds_to_it": None if hit is None else hit["seconds"]}
    if hit is not None and hit["seconds"] > 0:
        out["speedup"] = best["seconds"] / hit["seconds"]
    return out


def _plot(path, ts, xs, preds: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 3.4))
    pairs = [(0, 1), (0, 2), (1, 2)]
    names = ["x1", "x2", "x3"]
    for k, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1, 4, k + 1)
        ax.plot(xs[:, a], xs[:, b], "k-", lw=3, alpha=0.35, label="target")
        for label, p in preds.items():
            ax.plot(p[:, a], p[:, b], "--", lw=1.3, label=label)
        ax.set_xlabel(names[a])
        ax.set_ylabel(names[b])
        if k == 0:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 4, 4, projection="3d")
    ax.plot(xs[:, 0], xs[:, 1], xs[:, 2], "k-", lw=3, alpha=0.35)
    for label, p in preds.items():
        ax.plot(p[:, 0], p[:, 1], p[:, 2], "--", lw=1.3)
    ax.set_title("3-D")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_losses(path, log):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run in ("euler-then-adjoint", "pure-adjoint"):
        rows = [r for r in log if r["run"] == run]
        if rows:
            ax.semilogy([r["seconds"] for r in rows], [r["loss"] for r in rows], label=run)
    ax.set_xlabel("training wall time (s, compilation excluded)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    from jaxode.cli import ArgumentParser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/curve", help="run folder (must be new or empty)")
    p.add_argument("--hidden", type=int, default=1000,
                   help="units per layer of the two-layer ReLU field (paper: 1000; on a "
                        "2-core CPU one adjoint iteration then takes ~30-55 s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (both strategies)")
    p.add_argument("--euler-iters", type=int, default=1500,
                   help="hybrid strategy: iterations of Euler-backprop (phase 1)")
    p.add_argument("--euler-steps", type=int, default=100, help="fixed Euler steps on [0, 1]")
    p.add_argument("--finetune-iters", type=int, default=100,
                   help="hybrid strategy: iterations of dopri5 + adjoint after the Euler phase")
    p.add_argument("--schedule", default=None,
                   help="the hybrid schedule as 'euler:N,adjoint:M' (Sec. 3.2.2; N, M in "
                        "iterations); overrides --euler-iters and --finetune-iters")
    p.add_argument("--pure-iters", type=int, default=3000,
                   help="pure-adjoint strategy: at most this many iterations")
    p.add_argument("--pure-seconds", type=float, default=600.0,
                   help="pure-adjoint strategy: stop after this much training time (s); it "
                        "also stops once it reaches the hybrid's final loss")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the adjoint phases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a quick check only")
    from experiments import configs

    args = configs.parse(p, "curve", argv, default="paper")
    if args.schedule is not None:
        args.euler_iters, args.finetune_iters = _hybrid_schedule(p, args.schedule)
    if args.smoke:
        args.hidden, args.euler_iters, args.finetune_iters = 32, 20, 3
        args.pure_iters, args.pure_seconds = 5, 30.0
    from jaxode.cli import check_args  # issue 9: bad arguments stop here (exit 2)

    check_args(p, args, positive=("hidden", "lr", "euler_iters", "euler_steps", "pure_iters",
                                  "pure_seconds", "tol"),
               non_negative=("finetune_iters", "seed"), new_run_dirs=("out",))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=1)

    ts = jnp.arange(1, 101, dtype=jnp.float32) / 100.0
    xs = target_curve(ts)
    x0 = target_curve(jnp.zeros((), jnp.float32))
    field = ConcatMLP(3, args.hidden, 2, activation=jax.nn.relu, key=jax.random.PRNGKey(args.seed))
    base = SolveConfig(rtol=args.tol, atol=args.tol, max_steps=2048)
    init = ODEBlock(field, 0.0, 1.0, base, name="curve")
    scorer_cfg = SolveConfig(rtol=1e-6, atol=1e-6, adjoint="direct", max_steps=8192)
    batch = {"x": x0, "ts": ts, "y": xs}
    log, summary = [], {"params": count_params(init)}

    def score(block):
        loss, pred = _score(with_solve(block, scorer_cfg), x0, ts, xs)
        return float(loss), np.asarray(pred)

    # --- strategy 1: Euler-backprop, then adjoint fine-tuning
    run_log = []
    block = apply_phase(init, Phase("euler", 1), base, euler_steps=args.euler_steps)
    block, opt, r1 = _train(block, batch, args.euler_iters, "euler", args.lr, log=run_log)
    loss_after_euler, _ = score(block)
    block = apply_phase(block, Phase("adjoint", 1), base)
    block, opt, r2 = _train(block, batch, args.finetune_iters, "finetune", args.lr,
                            opt_state=opt, log=run_log, clock0=r1["train_seconds"])
    hybrid_loss, hybrid_pred = score(block)
    for r in run_log:
        r["run"] = "euler-then-adjoint"
    log += run_log
    summary["euler-then-adjoint"] = {
        "euler": r1, "finetune": r2, "loss_after_euler": loss_after_euler,
        "final_loss": hybrid_loss, "final_rmse": float(np.sqrt(hybrid_loss / xs.size)),
        "train_seconds": r1["train_seconds"] + r2["train_seconds"],
        "seconds_per_iter_euler": r1["train_seconds"] / max(r1["iters"] - 1, 1),
        "seconds_per_iter_adjoint": r2["train_seconds"] / max(r2["iters"] - 1, 1),
    }

    # --- strategy 2: pure adjoint, until it matches strategy 1 or runs out of budget
    run_log = []
    block, _, r3 = _train(init, batch, args.pure_iters, "pure-adjoint", args.lr,
                          target=hybrid_loss, seconds=args.pure_seconds, log=run_log)
    pure_loss, pure_pred = score(block)
    for r in run_log:
        r["run"] = "pure-adjoint"
    log += run_log
    summary["pure-adjoint"] = {
        **r3, "final_loss": pure_loss, "final_rmse": float(np.sqrt(pure_loss / xs.size)),
        "reached_target": bool(pure_loss <= hybrid_loss * 1.0001 or r3["last_loss"] <= hybrid_loss),
        "seconds_per_iter": r3["train_seconds"] / max(r3["iters"] - 1, 1),
    }
    summary["time_ratio_pure_over_hybrid"] = (
        r3["train_seconds"] / summary["euler-then-adjoint"]["train_seconds"])
    summary["equal_loss"] = _equal_loss(log)

    with open(os.path.join(args.out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "phase", "iter", "loss", "nfe", "seconds"])
        w.writeheader()
        w.writerows(log)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _plot(os.path.join(args.out, "curve_fig1.png"), np.asarray(ts), np.asarray(xs),
          {"euler-then-adjoint": hybrid_pred, "pure-adjoint": pure_pred})
    _plot_losses(os.path.join(args.out, "loss_vs_time.png"), log)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
