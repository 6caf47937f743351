"""2-D normalizing flows: a CNF with evolving weights (NODE-EW) vs fixed weights
(He, Xie, Lin 2019, Sec. 4.3, Fig. 3).

Maximum likelihood on generated 2-D densities (embedded generators, no download):
``moons``, ``rings``, ``checkerboard``.  Each iteration draws a fresh batch (the
paper: Adam, 1000 iterations of 100 points).  Both models use the same MLP field
(`ConcatMLP`, tanh) and the exact-trace CNF (`jaxode.fields.cnf`); the evolving one
adds weight dynamics g (`ElementwiseDynamics`, zero at initialisation, so both start
from the same flow).  Writes the training curves (the paper's Fig. 3), density plots
and a summary with test NLL, wall time and NFE.

    python -m experiments.flow --out runs/flow --densities moons,rings,checkerboard
    python -m experiments.flow --smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
from jaxode.fields.evolving import EvolvingODE, num_params
from jaxode.ode import ODEBlock, SolveConfig, backward_nfe, trainable

DENSITIES = ("moons", "rings", "checkerboard")


def sample_density(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of a generated 2-D density, roughly within [-4, 4]^2."""
    if name == "moons":
        theta = rng.uniform(0, np.pi, n)
        upper = rng.random(n) < 0.5
        x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
        y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
        pts = np.stack([x - 0.5, y - 0.25], 1) * 2.0
        return (pts + 0.1 * rng.normal(size=pts.shape)).astype(np.float32)
    if name == "rings":
        radius = rng.choice([1.0, 2.0, 3.0], size=n)
        angle = rng.uniform(0, 2 * np.pi, n)
        pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
        return (pts + 0.08 * rng.normal(size=pts.shape)).astype(np.float32)
    if name == "checkerboard":
        # 4 x 4 board on [-4, 4]^2, mass on the cells with (i + j) even
        i = rng.integers(0, 4, n)
        j = (rng.integers(0, 2, n) * 2 + i % 2) % 4
        pts = np.stack([i + rng.random(n), j + rng.random(n)], 1) * 2.0 - 4.0
        return pts.astype(np.float32)
    raise ValueError(f"unknown density {name!r}; choose one of {', '.join(DENSITIES)}.")


def make_flow(kind: str, hidden: int, depth: int, config: SolveConfig, *, key, g_hidden: int = 8):
    """``fixed`` (Chen et al. CNF) or ``evolving`` (NODE-EW CNF) with the same field."""
    kf, kg = jax.random.split(key)
    mlp = ConcatMLP(2, hidden, depth, key=kf)
    if kind == "fixed":
        return CNF(ODEBlock(CNFField(mlp), 0.0, 1.0, config, name="cnf"))
    if kind == "evolving":
        return CNF(EvolvingODE(CNFField(mlp), "elementwise", 0.0, 1.0, config, key=kg,
                               hidden=g_hidden, name="cnf_ew"))
    raise ValueError(f"unknown flow kind {kind!r}; choose 'fixed' or 'evolving'.")


def nll(flow, xs):
    logp, stats = flow.log_prob_batched(xs)
    return -jnp.mean(logp), stats


@eqx.filter_jit
def _step(flow, opt_state, xs, tx):
    # differentiate all arrays (the ODE blocks' nfe_probe carries the backward NFE),
    # then update only the trainable ones
    diff, static = eqx.partition(flow, eqx.is_inexact_array)
    (loss, stats), grads = jax.value_and_grad(
        lambda d: nll(eqx.combine(d, static), xs), has_aux=True)(diff)
    nfe_b = backward_nfe(grads)
    grads = eqx.filter(grads, trainable(flow))
    params = eqx.filter(flow, trainable(flow))
    updates, opt_state = tx.update(grads, opt_state, params)
    return eqx.apply_updates(flow, updates), opt_state, loss, stats.nfe, nfe_b


@eqx.filter_jit
def _eval(flow, xs):
    return flow.log_prob_batched(xs)[0]


def train_flow(flow, density, iters, batch, lr, seed, label):
    tx = optax.adam(lr)
    opt_state = tx.init(eqx.filter(flow, trainable(flow)))
    rng = np.random.default_rng(seed)
    log, compile_s, t0 = [], 0.0, time.perf_counter()
    for i in tqdm(range(iters), desc=label, leave=False):
        xs = jnp.asarray(sample_density(density, batch, rng))
        t = time.perf_counter()
        flow, opt_state, loss, nfe_f, nfe_b = _step(flow, opt_state, xs, tx)
        loss = float(loss)
        if i == 0:
            compile_s = time.perf_counter() - t
        log.append({"model": label, "iter": i, "nll": loss, "nfe_forward": int(nfe_f),
                    "nfe_backward": int(nfe_b),
                    "seconds": time.perf_counter() - t0 - compile_s})
        if not np.isfinite(loss):
            raise FloatingPointError(f"{label}: NLL became {loss} at iteration {i}; lower --lr.")
    return flow, log, compile_s


def _grid(half, n):
    g = np.linspace(-half, half, n, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    return g, np.stack([xx.ravel(), yy.ravel()], 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/flow")
    p.add_argument("--densities", default="moons,rings,checkerboard")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--g-hidden", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--test-size", type=int, default=4000)
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.hidden, args.test_size, args.grid = 5, 8, 200, 20
    from experiments._cli import check_args  # issue 9: bad arguments stop here (exit 2)

    check_args(p, args, positive=("iters", "batch", "hidden", "depth", "g_hidden", "lr", "tol",
                                  "test_size"), non_negative=("seed",), at_least={"grid": 2},
               choices={"densities": DENSITIES}, new_run_dirs=("out",))
    densities = [d.strip() for d in args.densities.split(",") if d.strip()]
    for d in densities:
        if d not in DENSITIES:
            raise ValueError(f"unknown density {d!r}; choose from {', '.join(DENSITIES)}.")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=1)
    config = SolveConfig(rtol=args.tol, atol=args.tol)
    summary, all_logs, grids = {}, [], {}
    half = 4.5
    g, pts = _grid(half, args.grid)
    for d_i, density in enumerate(densities):
        test = jnp.asarray(sample_density(density, args.test_size, np.random.default_rng(10_000 + d_i)))
        summary[density] = {}
        for kind in ("fixed", "evolving"):
            flow = make_flow(kind, args.hidden, args.depth, config,
                             key=jax.random.PRNGKey(args.seed), g_hidden=args.g_hidden)
            label = f"{density}/{kind}"
            flow, log, compile_s = train_flow(flow, density, args.iters, args.batch, args.lr,
                                              args.seed + d_i, label)
            all_logs += log
            test_nll = float(-jnp.mean(_eval(flow, test)))
            logp = np.asarray(_eval(flow, jnp.asarray(pts))).reshape(args.grid, args.grid)
            mass = float(np.exp(logp).sum() * (g[1] - g[0]) ** 2)
            grids[(density, kind)] = logp
            tail = [r["nll"] for r in log[-max(1, len(log) // 10):]]
            summary[density][kind] = {
                "params": num_params(eqx.filter(flow, trainable(flow))),
                "test_nll": test_nll, "train_nll_last10pct": float(np.mean(tail)),
                "train_seconds": log[-1]["seconds"], "compile_seconds": compile_s,
                "mean_nfe_forward": float(np.mean([r["nfe_forward"] for r in log])),
                "mean_nfe_backward": float(np.mean([r["nfe_backward"] for r in log])),
                "grid_mass": mass,
                "first_iter_below": _first_below(log, args),
            }
            print(label, json.dumps(summary[density][kind]))
    with open(os.path.join(args.out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_logs[0]))
        w.writeheader()
        w.writerows(all_logs)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _plots(args.out, densities, all_logs, grids, half)
    return summary


def _first_below(log, args):
    """Iterations to reach given NLLs (smoothed over 20 iterations): the paper's
    Fig. 3 claim is that NODE-EW gets to a low loss in fewer iterations."""
    nll = np.array([r["nll"] for r in log])
    k = min(20, len(nll))
    smooth = np.convolve(nll, np.ones(k) / k, mode="valid")
    out = {}
    for level in (3.5, 3.0, 2.8, 2.5):
        hit = np.nonzero(smooth <= level)[0]
        out[str(level)] = int(hit[0] + k - 1) if hit.size else None
    return out


def _plots(out, densities, logs, grids, half):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(densities)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i, d in enumerate(densities):
        data = sample_density(d, 20000, np.random.default_rng(1))
        axes[i, 0].hist2d(data[:, 0], data[:, 1], bins=100, range=[[-half, half]] * 2)
        axes[i, 0].set_title(f"{d}: data")
        for j, kind in enumerate(("fixed", "evolving")):
            axes[i, j + 1].imshow(np.exp(grids[(d, kind)]), origin="lower",
                                  extent=[-half, half, -half, half])
            axes[i, j + 1].set_title(f"{'CNF fixed weights' if kind == 'fixed' else 'NODE-EW CNF'}")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "densities.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.3), squeeze=False)
    for i, d in enumerate(densities):
        for kind in ("fixed", "evolving"):
            nll = np.array([r["nll"] for r in logs if r["model"] == f"{d}/{kind}"])
            k = min(20, len(nll))
            axes[0, i].plot(np.convolve(nll, np.ones(k) / k, mode="valid"),
                            label="NODE-EW" if kind == "evolving" else "fixed weights")
        axes[0, i].set_title(d)
        axes[0, i].set_xlabel("iteration")
        axes[0, i].set_ylabel("NLL (moving average, 20)")
        axes[0, i].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training_curves.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
