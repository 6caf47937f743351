"""Solver steps per image: the statistics and figures of Chen et al. Table 1 / Carrara
et al. Table 1 ("steps per image", mean +- std of one adaptive solve per image), Carrara
et al. Fig. 1 (the images needing the most and the fewest steps) and their Sec. 4.2
inference-time tolerance sweep (`jaxode.train.sweeps.tolerance_sweep`).

The per-image arrays are those of `jaxode.train.evaluate` (``acc``, ``steps``, ``nfe``)
on a model whose ODE blocks solve one image at a time (``per_sample``).
"""

from __future__ import annotations

import os
import time

import numpy as np


def evaluate_steps(model, task, test, out: str, *, batch_size: int, per_sample: bool = True,
                   examples: int = 5, tols=(), histogram: str | None = None, mesh=None,
                   progress: bool = False) -> tuple[dict, dict]:
    """Evaluate `model` on the `Dataset` `test` and draw the step figures into `out`.

    ODE blocks are solved one image at a time when `per_sample` (else one solve per
    batch).  Returns ``(summary, per_image)``: the summary holds ``test_accuracy``,
    ``test_error``, ``eval_batch_mode``, ``eval_time_s`` and, for a model with ODE
    blocks, `step_stats`, Fig. 1 (``fig1`` path, ``fig1_indices``; per-sample solves
    and `examples` > 0), the steps histogram titled `histogram` (``steps_counts``) and
    the tolerance sweep over `tols` (``tol_sweep``, ``tol_sweep.png``)."""
    from jaxode.train.loop import evaluate
    from jaxode.train.sweeps import tolerance_sweep
    from jaxode.train.tasks import dataset_batches
    from jaxode.train.utils import ode_blocks, with_batch_mode

    has_ode = bool(ode_blocks(model))
    per_sample = per_sample and has_ode
    if per_sample:
        model = with_batch_mode(model, "per_sample")

    def batches():
        return dataset_batches(test, batch_size, shuffle=False)

    t = time.perf_counter()
    per = evaluate(model, task, batches(), batch_size=batch_size, mesh=mesh, progress=progress,
                   desc="final eval")
    acc = float(np.mean(per["acc"]))
    summary = {"test_accuracy": acc, "test_error": 1.0 - acc,
               "eval_batch_mode": "per_sample" if per_sample else "joint",
               "eval_time_s": time.perf_counter() - t}
    if not has_ode:
        return summary, per
    steps = per["steps"]
    summary.update(step_stats(per))
    if histogram is not None:
        steps_histogram(steps, os.path.join(out, "steps_hist.png"), histogram)
        summary["steps_counts"] = {int(s): int(c) for s, c in zip(*np.unique(steps,
                                                                            return_counts=True))}
    if per_sample and examples > 0:
        summary["fig1"] = "fig1_steps.png"  # in the run folder (which may move)
        summary["fig1_indices"] = steps_figure(test, steps, os.path.join(out, "fig1_steps.png"),
                                               examples)
    if tols:
        summary["tol_sweep"] = tolerance_sweep(model, task, batches, tols,
                                               batch_size=batch_size, mesh=mesh)
        plot_tolerance_sweep(summary["tol_sweep"], os.path.join(out, "tol_sweep.png"))
    return summary, per


def step_stats(per_image: dict) -> dict:
    """``steps_mean, steps_std, steps_min, steps_max`` and the same four of ``nfe`` over
    the images of `per_image` (population std, as the papers' "mean +- std")."""
    out = {}
    for k in ("steps", "nfe"):
        v = np.asarray(per_image[k])
        out.update({f"{k}_mean": float(v.mean()), f"{k}_std": float(v.std()),
                    f"{k}_min": int(v.min()), f"{k}_max": int(v.max())})
    return out


def sweep_lines(rows: list[dict]) -> list[str]:
    """One text line per tolerance of a `tolerance_sweep` (a failed one says why)."""
    return [f"  tol {r['tol']:.0e}: failed ({r['error']})" if "error" in r else
            f"  tol {r['tol']:.0e}: acc {100 * r['acc']:.2f}%  NFE {r['nfe_mean']:.1f} "
            f"+- {r['nfe_std']:.1f}" for r in rows]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_figure(test, per_image_steps, path: str, k: int = 5) -> list[int]:
    """Carrara et al. Fig. 1: the `k` test images needing the most (top row) and the
    fewest (bottom row) solver steps, each labelled with its count and class.  Returns
    the indices, most first then fewest."""
    plt = _pyplot()
    order = np.argsort(per_image_steps, kind="stable")
    most, fewest = order[::-1][:k], order[:k]
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.8), squeeze=False)
    for row, (idx, title) in enumerate(((most, "most steps"), (fewest, "fewest steps"))):
        for ax, i in zip(axes[row], idx):
            img = test.images[i]
            grey = img.shape[-1] == 1
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None)
            ax.set_title(f"{int(per_image_steps[i])} steps\n{test.class_names[test.labels[i]]}",
                         fontsize=8)
            ax.axis("off")
        axes[row, 0].text(-0.3, 0.5, title, transform=axes[row, 0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=9)
    fig.suptitle("Solver steps per test image (one dopri5 solve per image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [int(i) for i in most] + [int(i) for i in fewest]


def steps_histogram(steps, path: str, title: str) -> None:
    """Histogram of per-image solver steps, one bar per integer count."""
    plt = _pyplot()
    steps = np.asarray(steps)
    lo, hi = int(steps.min()), int(steps.max())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(steps, bins=np.arange(lo, hi + 2) - 0.5, color="C0", edgecolor="white")
    ax.set_xlabel("dopri5 steps per test image")
    ax.set_ylabel("images")
    ax.set_title(f"{title}\nmean {steps.mean():.2f} +- {steps.std():.2f} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tolerance_sweep(rows: list[dict], path: str) -> None:
    """Accuracy and NFE per image against the inference tolerance rtol = atol (the rows
    of `tolerance_sweep`; failed tolerances are left out, nothing is drawn if all failed)."""
    plotted = [r for r in rows if "error" not in r]
    if not plotted:
        return
    plt = _pyplot()
    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    tols = [r["tol"] for r in plotted]
    ax1.semilogx(tols, [100 * r["acc"] for r in plotted], "o-", color="C0")
    ax1.set_xlabel("inference tolerance (rtol = atol)")
    ax1.set_ylabel("test accuracy (%)", color="C0")
    ax2 = ax1.twinx()
    ax2.errorbar(tols, [r["nfe_mean"] for r in plotted], [r["nfe_std"] for r in plotted],
                 fmt="s--", color="C1", capsize=3)
    ax2.set_ylabel("NFE per image", color="C1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
