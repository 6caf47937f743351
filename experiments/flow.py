"""2-D normalizing flows: a CNF with evolving weights (NODE-EW) vs fixed weights
(He, Xie, Lin 2019, Sec. 4.3, Fig. 3).

Maximum likelihood on generated 2-D densities (`jaxode.data.densities`, no
download): eight_gaussians, pinwheel, checkerboard, two_spirals, moons, rings.  Each
iteration draws a fresh batch (the paper: Adam, 1000 iterations of 100 points).  Both
models use the same MLP field (`ConcatMLP`, tanh) and CNF (`jaxode.fields.cnf`); the
evolving one adds weight dynamics g (`ElementwiseDynamics`, zero at initialisation,
so both start from the same flow).  Writes the training curves (the paper's Fig. 3),
density and sample plots and a summary with test NLL, wall time and NFE.

Options beyond the paper:

- ``--trace hutchinson`` trains with the FFJORD trace estimator (one Rademacher or
  Gaussian probe per example per solve, ``--probe``); the test NLL and the density
  plots always use the exact trace (cheap in 2-D).
- Stabilising NODE-EW (``--g-lr``, ``--clip``).  Adam moves every parameter by about
  lr per step whatever its gradient's size; a step of the weight-dynamics parameters
  theta_1 (for `ElementwiseDynamics` the output weights v, c shared by all entries
  of a tensor) changes dtheta/dt of every weight of that tensor at once.  At the
  shared lr 1e-2 the weights theta(t) drift, the flow grows stiff (NFE exploding)
  and the loss climbs back.  ``--g-lr`` gives theta_1 its own, smaller Adam learning
  rate (optax.multi_transform; default lr / 100, stable over 3,000 iterations in
  the measurements of docs/results/node_ew.md; lr / 10 learns faster in the first
  1,000 but drifts later); ``--clip`` clips the global
  gradient norm.  ``--g-lr`` equal to ``--lr`` with ``--clip 0`` is the old,
  unstabilised training.

    python -m experiments.flow --out runs/flow --densities moons,rings,checkerboard
    python -m experiments.flow --out runs/flow_old --g-lr 1e-2 --clip 0  # the old behaviour
    python -m experiments.flow --smoke
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxode.data.densities import density_names, sample_density
from jaxode.fields.cnf import CNF, PROBES, TRACES, CNFField, ConcatMLP
from jaxode.fields.evolving import EvolvingODE, num_params, theta1_mask
from jaxode.ode import ODEBlock, SolveConfig, backward_nfe, train_value_and_grad, trainable

DENSITIES = density_names()
MODELS = ("fixed", "evolving")


def make_flow(kind: str, hidden: int, depth: int, config: SolveConfig, *, key, g_hidden: int = 8,
              trace: str = "exact", probe: str = "rademacher"):
    """``fixed`` (Chen et al. CNF) or ``evolving`` (NODE-EW CNF) with the same field;
    `trace` and `probe` as for `CNF`."""
    kf, kg = jax.random.split(key)
    field = CNFField(ConcatMLP(2, hidden, depth, key=kf))
    if kind == "fixed":
        return CNF(ODEBlock(field, 0.0, 1.0, config, name="cnf"), trace, probe)
    if kind == "evolving":
        return CNF(EvolvingODE(field, "elementwise", 0.0, 1.0, config, key=kg,
                               hidden=g_hidden, name="cnf_ew"), trace, probe)
    raise ValueError(f"unknown flow kind {kind!r}; choose 'fixed' or 'evolving'.")


def param_labels(params):
    """For the trainable arrays `params` of a flow (``eqx.filter(flow, trainable(flow))``):
    ``"theta_1"`` for the weight dynamics g of a NODE-EW flow, ``"theta_0"`` for every
    other array (the field's initial / fixed weights)."""
    return jax.tree_util.tree_map(lambda m: "theta_1" if m else "theta_0", theta1_mask(params))


@functools.lru_cache(maxsize=None)
def make_optimizer(lr: float, g_lr: float | None = None, clip: float = 0.0):
    """Adam with learning rate `lr` for theta_0 and `g_lr` (default `lr`) for theta_1,
    optionally after clipping the global gradient norm to `clip` (0: no clipping).
    Cached: the same settings give the same object, so the jitted step (which takes it
    as a static argument) compiles once per model, not once per density."""
    g_lr = lr if g_lr is None else g_lr
    adam = optax.multi_transform({"theta_0": optax.adam(lr), "theta_1": optax.adam(g_lr)},
                                 param_labels)
    return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


def nll(flow, xs, key=None):
    logp, stats = flow.log_prob_batched(xs, key=key)
    return -jnp.mean(logp), stats


@eqx.filter_jit
def _step(flow, opt_state, xs, key, tx):
    # differentiate the trainable arrays and the ODE blocks' nfe_probe (which carries
    # the backward NFE); `key` draws the Hutchinson probes (if any)
    (loss, stats), grads = train_value_and_grad(nll, has_aux=True)(flow, xs, key)
    nfe_b = backward_nfe(grads)
    grads = eqx.filter(grads, trainable(flow))
    params = eqx.filter(flow, trainable(flow))
    updates, opt_state = tx.update(grads, opt_state, params)
    return eqx.apply_updates(flow, updates), opt_state, loss, stats.nfe, nfe_b


@eqx.filter_jit
def _eval(flow, xs):
    """Exact-trace log-density (whatever trace the flow was trained with)."""
    return flow.with_trace("exact").log_prob_batched(xs)[0]


def train_flow(flow, density, iters, batch, lr, seed, label, *, g_lr=None, clip=0.0):
    tx = make_optimizer(lr, g_lr, clip)
    opt_state = tx.init(eqx.filter(flow, trainable(flow)))
    key = jax.random.PRNGKey(seed)
    log, compile_s, t0 = [], 0.0, time.perf_counter()
    for i in tqdm(range(iters), desc=label, leave=False):
        k_data, k_probe = jax.random.split(jax.random.fold_in(key, i))
        xs = sample_density(density, k_data, batch)
        t = time.perf_counter()
        flow, opt_state, loss, nfe_f, nfe_b = _step(flow, opt_state, xs, k_probe, tx)
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
    from jaxode.cli import ArgumentParser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/flow", help="run folder (must be new or empty)")
    p.add_argument("--densities", default=",".join(DENSITIES),
                   help=f"comma-separated, from {', '.join(DENSITIES)} (default: all)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated, from fixed (Chen et al. CNF), evolving (NODE-EW)")
    p.add_argument("--iters", type=int, default=1000, help="Adam iterations per model")
    p.add_argument("--batch", type=int, default=100, help="fresh samples per iteration")
    p.add_argument("--hidden", type=int, default=32, help="units per hidden layer of f")
    p.add_argument("--depth", type=int, default=2, help="hidden layers of f")
    p.add_argument("--g-hidden", type=int, default=8,
                   help="units H of the elementwise weight dynamics g (NODE-EW)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of theta_0")
    p.add_argument("--g-lr", type=float, default=None,
                   help="Adam learning rate of theta_1, the parameters of g (default lr / 100; "
                        "equal to --lr for the old, unstabilised NODE-EW training)")
    p.add_argument("--clip", type=float, default=0.0,
                   help="clip the global gradient norm to this value (0: off, the default)")
    p.add_argument("--trace", default="exact", choices=TRACES,
                   help="trace of df/dz in training: exact (D Jacobian columns) or "
                        "hutchinson (one vector-Jacobian product, probe fixed per solve)")
    p.add_argument("--probe", default="rademacher", choices=PROBES,
                   help="distribution of the Hutchinson probe")
    p.add_argument("--tol", type=float, default=1e-4, help="rtol = atol of dopri5")
    p.add_argument("--test-size", type=int, default=4000, help="fresh test samples")
    p.add_argument("--grid", type=int, default=100, help="grid points per axis of the density plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a quick check only")
    from experiments import configs

    args = configs.parse(p, "flow", argv, default="paper")
    if args.smoke:
        args.iters, args.hidden, args.test_size, args.grid = 5, 8, 200, 20
    from jaxode.cli import check_args, split_list  # issue 9: bad arguments stop here

    check_args(p, args, positive=("iters", "batch", "hidden", "depth", "g_hidden", "lr", "tol",
                                  "test_size", "g_lr"), non_negative=("seed", "clip"),
               at_least={"grid": 2}, choices={"densities": DENSITIES, "models": MODELS},
               new_run_dirs=("out",))
    densities, models = split_list(args.densities), split_list(args.models)
    if args.g_lr is None:
        args.g_lr = args.lr / 100
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=1)
    config = SolveConfig(rtol=args.tol, atol=args.tol)
    summary, all_logs, grids, samples = {}, [], {}, {}
    half = 4.5
    g, pts = _grid(half, args.grid)
    for density in densities:
        # seeds by the density's place in the registry, not in --densities: the same
        # density gets the same data stream and test set whatever else is run
        d_i = DENSITIES.index(density)
        test = sample_density(density, jax.random.PRNGKey(10_000 + d_i), args.test_size)
        summary[density] = {}
        for kind in models:
            flow = make_flow(kind, args.hidden, args.depth, config,
                             key=jax.random.PRNGKey(args.seed), g_hidden=args.g_hidden,
                             trace=args.trace, probe=args.probe)
            label = f"{density}/{kind}"
            flow, log, compile_s = train_flow(flow, density, args.iters, args.batch, args.lr,
                                              args.seed + d_i, label, g_lr=args.g_lr,
                                              clip=args.clip)
            all_logs += log
            test_nll = float(-jnp.mean(_eval(flow, test)))
            logp = np.asarray(_eval(flow, jnp.asarray(pts))).reshape(args.grid, args.grid)
            mass = float(np.exp(logp).sum() * (g[1] - g[0]) ** 2)
            grids[(density, kind)] = logp
            samples[(density, kind)] = np.asarray(
                flow.with_trace("exact").sample(jax.random.PRNGKey(args.seed + 77), 2000)[0])
            tail = [r["nll"] for r in log[-max(1, len(log) // 10):]]
            summary[density][kind] = {
                "params": num_params(eqx.filter(flow, trainable(flow))),
                "test_nll": test_nll, "train_nll_last10pct": float(np.mean(tail)),
                "train_seconds": log[-1]["seconds"], "compile_seconds": compile_s,
                "mean_nfe_forward": float(np.mean([r["nfe_forward"] for r in log])),
                "mean_nfe_backward": float(np.mean([r["nfe_backward"] for r in log])),
                "last10pct_nfe_forward": float(np.mean([r["nfe_forward"] for r in log[-len(tail):]])),
                "max_nfe_forward": int(max(r["nfe_forward"] for r in log)),
                "grid_mass": mass,
                "first_iter_below": _first_below(log, args),
            }
            print(label, json.dumps(summary[density][kind]))
            _write(args.out, all_logs, summary)  # after every model: a stopped run keeps its results
    _plots(args.out, densities, models, all_logs, grids, samples, half)
    return summary


def _write(out, logs, summary):
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(logs[0]))
        w.writeheader()
        w.writerows(logs)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


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


_NAMES = {"fixed": "CNF, fixed weights", "evolving": "NODE-EW CNF"}


def _plots(out, densities, models, logs, grids, samples, half):
    """densities.png: per density, the data, and per model its exact log-density
    exp'd on the grid and 2,000 samples; training_curves.png: Fig. 3 of the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = len(densities), 1 + 2 * len(models)
    box = [[-half, half]] * 2
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.1 * n), squeeze=False)
    for i, d in enumerate(densities):
        data = np.asarray(sample_density(d, jax.random.PRNGKey(1), 20000))
        axes[i, 0].hist2d(data[:, 0], data[:, 1], bins=80, range=box)
        axes[i, 0].set_title(f"{d}: data", fontsize=8)
        for j, kind in enumerate(models):
            axes[i, 2 * j + 1].imshow(np.exp(grids[(d, kind)]), origin="lower",
                                      extent=[-half, half, -half, half])
            axes[i, 2 * j + 1].set_title(f"{_NAMES[kind]}: density", fontsize=8)
            xs = samples[(d, kind)]
            axes[i, 2 * j + 2].hist2d(xs[:, 0], xs[:, 1], bins=60, range=box)
            axes[i, 2 * j + 2].set_title(f"{_NAMES[kind]}: samples", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "densities.png"), dpi=70)
    plt.close(fig)

    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for i, d in enumerate(densities):
        ax = axes[i // ncol, i % ncol]
        for kind in models:
            nll = np.array([r["nll"] for r in logs if r["model"] == f"{d}/{kind}"])
            k = min(20, len(nll))
            ax.plot(np.convolve(nll, np.ones(k) / k, mode="valid"), label=_NAMES[kind])
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("train NLL (avg of 20)")
        ax.legend(fontsize=7)
    for j in range(n, nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training_curves.png"), dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
