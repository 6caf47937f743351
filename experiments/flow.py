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
  rate (the trainer's theta_1 group, `TrainConfig.g_lr_scale` = g_lr / lr; default lr / 100, stable over 3,000 iterations in
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

import jax
import numpy as np
import optax

from jaxode.data.densities import density_names, sample_density
from jaxode.fields.cnf import CNF, PROBES, TRACES, CNFField, ConcatMLP
from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.train import DensityTask, TrainConfig, count_params, evaluate, fit

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


@functools.lru_cache(maxsize=None)
def make_optimizer(lr: float, clip: float = 0.0):
    """Adam with learning rate `lr` (theta_1's own rate is `TrainConfig.g_lr_scale`,
    applied by the trainer), after clipping the global gradient norm to `clip` (0: no
    clipping).  Cached: the jitted step compiles once per model, not once per density."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


class _FreshSamples:
    """`iters` batches ``{"x": (batch, 2)}``, each freshly drawn from `density`; the
    draw of iteration i depends only on (seed, i)."""

    def __init__(self, density, iters, batch, seed):
        self.density, self.iters, self.batch = density, iters, batch
        self.key = jax.random.PRNGKey(seed)

    def __len__(self):
        return self.iters

    def __iter__(self):
        for i in range(self.iters):
            k_data, _ = jax.random.split(jax.random.fold_in(self.key, i))
            yield {"x": sample_density(self.density, k_data, self.batch)}


def train_flow(flow, density, iters, batch, lr, seed, label, *, g_lr=None, clip=0.0,
               test=None):
    """Maximum likelihood with Adam through `jaxode.train.fit` (`DensityTask`); returns
    the trained flow, the per-iteration log, the first step's (compile) seconds and,
    with `test` samples, the test NLL (exact trace)."""
    g_lr = lr if g_lr is None else g_lr
    config = TrainConfig(epochs=1, batch_size=batch, lr=lr, g_lr_scale=g_lr / lr, seed=seed,
                         data_parallel=False, keep_checkpoints=1)
    log, clock = [], [0.0, 0.0]  # [compile seconds, training seconds after it]

    def on_step(row):
        if row["step"] == 1:
            clock[0] = row["step_time_s"]
        else:
            clock[1] += row["step_time_s"]
        log.append({"model": label, "iter": row["step"] - 1, "nll": row["loss"],
                    "nfe_forward": int(row["nfe"]), "nfe_backward": int(row["nfe_backward"]),
                    "seconds": clock[1]})

    result = fit(flow, DensityTask(), lambda epoch: _FreshSamples(density, iters, batch, seed),
                 None if test is None else (lambda: [{"x": test}]), config=config,
                 optimizer=make_optimizer(lr, clip), on_step=on_step,
                 log=lambda s: print(f"{label}: {s}"))
    test_nll = None if test is None else result.history[-1]["eval_nll"]
    return result.model, log, clock[0], test_nll


def _log_density(flow, xs):
    """Exact-trace log-density (whatever trace the flow was trained with)."""
    return -evaluate(flow, DensityTask(), [{"x": xs}])["nll"]


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
            flow, log, compile_s, test_nll = train_flow(
                flow, density, args.iters, args.batch, args.lr, args.seed + d_i, label,
                g_lr=args.g_lr, clip=args.clip, test=test)
            all_logs += log
            logp = _log_density(flow, pts).reshape(args.grid, args.grid)
            mass = float(np.exp(logp).sum() * (g[1] - g[0]) ** 2)
            grids[(density, kind)] = logp
            samples[(density, kind)] = np.asarray(
                flow.with_trace("exact").sample(jax.random.PRNGKey(args.seed + 77), 2000)[0])
            tail = [r["nll"] for r in log[-max(1, len(log) // 10):]]
            summary[density][kind] = {
                "params": count_params(flow),
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
