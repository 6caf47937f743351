"""Benchmark: regularised dynamics on the 2-D CNF (issue 19, the CNF part).

The fixed-weight CNF of `experiments.flow` (Chen et al. 2018 / FFJORD, exact trace,
dopri5) trained by maximum likelihood on fresh batches of a 2-D density, once per
setting, from the same initial weights, data stream and seed:

- ``none``: no regulariser;
- ``kinetic=W``: + W * int ||dz/dt||^2 dt (RNODE's kinetic energy, Finlay et al.,
  ICML 2020, eq. 3);
- ``rnode=W``: + W * (kinetic + int ||df/dz||_F^2 dt), the Jacobian norm estimated
  with one Rademacher probe per solve (ibid., eq. 4); both of z only
  (`jaxode.fields.cnf.CNFField.regularized_mask`);
- ``steer=B``: STEER's end time t1 ~ U(1 - B, 1 + B) at each step (Ghosh et al. 2020).

Recorded per setting: the forward / backward NFE and the wall time of every
iteration, the exact-trace test NLL every `--eval-every` iterations (with the test
solve's NFE), and "NFE at equal NLL": the first checkpoint at which the test NLL is
at most the unregularised run's final test NLL, with the forward + backward NFE and
the training seconds summed up to it.

Writes OUT/{iters.csv, evals.csv, summary.json, summary.md, cnf_regularizers.png}::

    python -m benchmarks.cnf_regularizers --out runs/cnf_reg
    python -m benchmarks.cnf_regularizers --out /tmp/cnf_reg_smoke --smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import jax
import numpy as np

from jaxode.data.densities import density_names, sample_density
from jaxode.models.flows import make_flow, smoothed
from jaxode.ode import SolveConfig
from jaxode.train.flows import fit_flow

SETTINGS = {
    "none": ({}, None),
    "kinetic=0.01": ({"kinetic": 0.01}, None),
    "kinetic=0.1": ({"kinetic": 0.1}, None),
    "rnode=0.01": ({"kinetic": 0.01, "jacobian": 0.01}, None),
    "rnode=0.1": ({"kinetic": 0.1, "jacobian": 0.1}, None),
    "steer=0.5": ({}, 0.5),
}
SMOKE_SETTINGS = "none,rnode=0.1"


def equal_nll(evals, iters_log, target):
    """The first checkpoint with test NLL <= `target`, and the forward + backward NFE
    and training seconds (after the compiling first step) summed up to it; None when
    never reached."""
    hit = next((e for e in evals if e["test_nll"] <= target), None)
    if hit is None:
        return None
    upto = [r for r in iters_log if r["iter"] < hit["iter"]]
    return {"iter": hit["iter"], "test_nll": hit["test_nll"],
            "nfe_forward": int(sum(r["nfe_forward"] for r in upto)),
            "nfe_backward": int(sum(r["nfe_backward"] for r in upto)),
            "seconds": upto[-1]["seconds"]}


def run_setting(name, density, args, test):
    regs, steer = SETTINGS[name]
    config = SolveConfig(rtol=args.tol, atol=args.tol)
    flow = make_flow("fixed", args.hidden, 2, config, key=jax.random.PRNGKey(args.seed))
    evals, t = [], time.perf_counter()
    d_i = density_names().index(density)
    _, log, compile_s, test_nll = fit_flow(
        flow, density, iters=args.iters, batch=args.batch, lr=args.lr, g_lr=args.lr, clip=0.0,
        seed=args.seed + d_i, test=test, label=f"{density}/{name}", progress=False,
        regularizers=regs, steer=steer, eval_every=args.eval_every, evals=evals)
    tail = max(1, len(log) // 10)
    return log, evals, {
        "test_nll": test_nll, "compile_seconds": compile_s, "train_seconds": log[-1]["seconds"],
        "total_seconds": time.perf_counter() - t,
        "mean_nfe_forward": float(np.mean([r["nfe_forward"] for r in log])),
        "mean_nfe_backward": float(np.mean([r["nfe_backward"] for r in log])),
        "last10pct_nfe_forward": float(np.mean([r["nfe_forward"] for r in log[-tail:]])),
        "last10pct_nfe_backward": float(np.mean([r["nfe_backward"] for r in log[-tail:]])),
        "final_test_nfe": evals[-1]["test_nfe"]}


def plot(path, densities, names, logs, evals):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(densities), 3, figsize=(14, 3.6 * len(densities)), squeeze=False)
    for row, density in zip(axes, densities):
        for name in names:
            log = [r for r in logs if r["density"] == density and r["setting"] == name]
            ev = [e for e in evals if e["density"] == density and e["setting"] == name]
            for ax, key in zip(row[:2], ("nfe_forward", "nfe_backward")):
                y = smoothed([r[key] for r in log], 10)
                ax.plot(np.arange(len(y)) + len(log) - len(y), y, label=name)
            row[2].plot([e["iter"] for e in ev], [e["test_nll"] for e in ev], "o-", label=name)
        for ax, title in zip(row, ("forward NFE per iteration", "backward NFE per iteration",
                                   "test NLL (exact trace)")):
            ax.set_title(f"{density}: {title}")
            ax.set_xlabel("iteration")
        row[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(densities, names, summary) -> str:
    lines = [("| density | setting | final test NLL | fwd / bwd NFE per iter (mean; last 10%) | "
              "test NFE | train s | iter to base NLL | fwd+bwd NFE to it | s to it |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for d in densities:
        for n in names:
            s, q = summary[d][n], summary[d][n]["equal_nll"]
            reach = ("not reached", "—", "—") if q is None else (
                str(q["iter"]), f"{q['nfe_forward'] + q['nfe_backward']:,}", f"{q['seconds']:.0f}")
            lines.append(
                f"| {d} | {n} | {s['test_nll']:.3f} | {s['mean_nfe_forward']:.1f} / "
                f"{s['mean_nfe_backward']:.1f}; {s['last10pct_nfe_forward']:.1f} / "
                f"{s['last10pct_nfe_backward']:.1f} | {s['final_test_nfe']:.0f} | "
                f"{s['train_seconds']:.0f} | {' | '.join(reach)} |")
    return "\n".join(lines)


def main(argv=None):
    from jaxode.cli import ArgumentParser, check_args, split_list

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--out", required=True, help="output folder (created; existing files are overwritten)")
    a("--densities", default="moons,rings")
    a("--settings", default=",".join(SETTINGS), help=f"from {', '.join(SETTINGS)}")
    a("--iters", type=int, default=300)
    a("--eval-every", type=int, default=25, help="test NLL every so many iterations")
    a("--batch", type=int, default=100)
    a("--hidden", type=int, default=32)
    a("--lr", type=float, default=1e-2)
    a("--tol", type=float, default=1e-4, help="rtol = atol of dopri5")
    a("--test-size", type=int, default=1000)
    a("--seed", type=int, default=0)
    a("--smoke", action="store_true", help=f"4 iterations, 8 units, settings {SMOKE_SETTINGS}")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.eval_every, args.hidden, args.test_size = 4, 2, 8, 100
        args.densities, args.settings = "moons", SMOKE_SETTINGS
    check_args(p, args, positive=("iters", "eval_every", "batch", "hidden", "lr", "tol",
                                  "test_size"), non_negative=("seed",),
               choices={"densities": density_names(), "settings": tuple(SETTINGS)})
    if args.iters % args.eval_every:
        p.error(f"--eval-every {args.eval_every} must divide --iters {args.iters}.")
    densities, names = split_list(args.densities), split_list(args.settings)
    if "none" in names:  # the baseline first: its final NLL is the target of the others
        names = ["none"] + [n for n in names if n != "none"]
    os.makedirs(args.out, exist_ok=True)
    logs, evals, summary = [], [], {}
    for density in densities:
        test = sample_density(density, jax.random.PRNGKey(10_000 + density_names().index(density)),
                              args.test_size)
        summary[density] = {}
        for name in names:
            log, ev, s = run_setting(name, density, args, test)
            logs += [{"density": density, "setting": name, **{k: r[k] for k in (
                "iter", "nll", "nfe_forward", "nfe_backward", "seconds")}} for r in log]
            evals += [{"density": density, "setting": name, **e} for e in ev]
            summary[density][name] = s
            print(f"{density}/{name}", json.dumps(s))
        base = summary[density].get("none")
        for name in names:
            target = None if base is None else base["test_nll"]
            runs = [r for r in logs if r["density"] == density and r["setting"] == name]
            ev = [e for e in evals if e["density"] == density and e["setting"] == name]
            summary[density][name]["equal_nll"] = (None if target is None
                                                   else equal_nll(ev, runs, target))
        _write(args.out, logs, evals, summary, args)
    md = table(densities, names, summary)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    plot(os.path.join(args.out, "cnf_regularizers.png"), densities, names, logs, evals)
    return summary


def _write(out, logs, evals, summary, args):
    for fname, rows in (("iters.csv", logs), ("evals.csv", evals)):
        with open(os.path.join(out, fname), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
