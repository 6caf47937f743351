"""Evaluation and analysis of SegNode and its baseline (Khoshsirat & Kambhamettu,
Sec. 4.4-4.8, Fig. 3-4).

- `evaluate_trained`: val/test mIoU and per-class IoU of a trained model, the
  predictions drawn, and for SegNode the mIoU of Head(z(t)) along the trajectory.
- `trajectory`: Fig. 3-4, mIoU of Head(z(t)) against t from one dense-output solve.
- `solve_sweep` / `plot_sweeps`: Sec. 4.8, mIoU against the measured forward time and
  the NFE when rtol = atol or the end time t1 change ("by sacrificing 3% of accuracy,
  the required computational time decreases by 50%").
- `analyse`: the three above for a trained SegNode, written to a folder.

Every function takes a split as `jaxode.data.camvid.SegSplit` (uint8 images) and the
dataset's `jaxode.data.segmentation.Labels`.
"""

from __future__ import annotations

import csv
import os
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from jaxode.compile_log import compile_count
from jaxode.data import camvid
from jaxode.models.segnode import with_solve
from jaxode.train.seg_metrics import (
    iou_from_confusion,
    median_time,
    miou,
    pixel_accuracy,
    split_confusion,
)

__all__ = ["predict", "evaluate", "evaluate_trained", "trajectory", "solve_sweep",
           "plot_sweeps", "analyse", "draw_predictions", "draw_trajectory_grid", "write_csv",
           "SWEEPS"]

SWEEPS = ("trajectory", "tol", "t1")
DEFAULT_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)


@eqx.filter_jit
def predict(model, images, ts=None):
    """uint8 (B, H, W, 3) -> (argmax classes (B, H, W) [or (B, T, H, W) with ts], the
    forward NFE of the solve, None for the baseline)."""
    logits, stats = model.batched(camvid.normalize(images), ts)
    return jnp.argmax(logits, axis=-3), (None if stats is None else stats.nfe)


def evaluate(model, split, labels, batch, ts=None):
    """Accumulated confusion matrix over a split (one per time in `ts` if given) and
    the predictions."""
    cm, preds, _ = split_confusion(lambda x: predict(model, x, ts), split.images,
                                   split.labels, labels.num_classes, labels.ignore_label, batch)
    return cm, preds


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_predictions(path, split, preds, palette, count=4):
    """A PNG: rows of image | label | prediction, in the dataset's palette."""
    from PIL import Image

    rows = []
    for i in range(min(count, len(preds))):
        gap = np.full((split.images.shape[1], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([split.images[i], gap, camvid.colorize(split.labels[i], palette),
                                    gap, camvid.colorize(preds[i], palette)], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)


def draw_trajectory_grid(path, images, labels, preds_t, ts, palette, max_columns=6):
    """Fig. 3 as a titled grid: per image, image | label | prediction at (up to
    `max_columns` of) the times `ts`, evenly chosen, first and last included."""
    plt = _pyplot()
    cols = np.unique(np.linspace(0, len(ts) - 1, min(max_columns, len(ts))).astype(int))
    n, m = len(images), 2 + len(cols)
    fig, axes = plt.subplots(n, m, figsize=(1.9 * m, 1.5 * n + 0.3), squeeze=False)
    for i in range(n):
        panels = [images[i], camvid.colorize(labels[i], palette)] + [
            camvid.colorize(preds_t[i, k], palette) for k in cols]
        titles = ["image", "label"] + [f"t = {ts[k]:.2f}" for k in cols]
        for ax, panel, title in zip(axes[i], panels, titles):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_trained(name, model, splits, labels, batch, out) -> dict:
    """The summary of a trained model: ``{split}_miou``, ``{split}_iou_per_class`` and
    ``{split}_seconds_per_image`` for val and test, with ``out/<name>_<split>_predictions.png``;
    for SegNode also ``val_miou_along_t`` (5 times in [0, t1], Fig. 3-4) and
    ``out/segnode_trajectory.png``."""
    summary = {}
    for split in ("val", "test"):
        t0 = time.time()
        cm, preds = evaluate(model, splits[split], labels, batch)
        summary[f"{split}_miou"] = miou(cm)
        summary[f"{split}_iou_per_class"] = [None if np.isnan(v) else float(v)
                                             for v in iou_from_confusion(cm)]
        summary[f"{split}_seconds_per_image"] = (time.time() - t0) / len(splits[split].images)
        draw_predictions(os.path.join(out, f"{name}_{split}_predictions.png"), splits[split],
                         preds, labels.palette)
    if name == "segnode":
        ts = jnp.linspace(0.0, float(model.ode.t1), 5)
        cms, preds_t = evaluate(model, splits["val"], labels, batch, ts)
        summary["val_miou_along_t"] = {f"{float(t):.2f}": miou(c) for t, c in zip(ts, cms)}
        val = splits["val"]
        draw_trajectory_grid(os.path.join(out, "segnode_trajectory.png"), val.images[:1],
                             val.labels[:1], preds_t[:1], np.asarray(ts), labels.palette)
    return summary


def write_csv(path, rows):
    """`rows` (dicts with the same keys) as a CSV file, floats to 6 significant digits."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def trajectory(model, split, labels, batch, ts, out, show=3):
    """Fig. 3-4: mIoU of Head(z(t)) at each t in `ts` from one dense-output solve
    (`ODEBlock` with ts) per batch; writes trajectory.csv, trajectory.png (mIoU against
    t) and trajectory_predictions.png (`show` images, prediction at each t)."""
    ts = jnp.asarray(ts)
    cms, preds_t = evaluate(model, split, labels, batch, ts)
    rows = [dict(t=float(t), miou=miou(c), pixel_acc=pixel_accuracy(c))
            for t, c in zip(ts, cms)]
    write_csv(os.path.join(out, "trajectory.csv"), rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["t"] for r in rows], [r["miou"] for r in rows], marker="o")
    ax.set_xlabel("t (SegNode's ODE time; the model is trained to t1)")
    ax.set_ylabel("mIoU of Head(z(t))")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "trajectory.png"), dpi=110)
    plt.close(fig)
    pick = np.unique(np.linspace(0, len(split.images) - 1, min(show, len(split.images)))
                     .astype(int))  # spread over the split (neighbouring frames look alike)
    draw_trajectory_grid(os.path.join(out, "trajectory_predictions.png"), split.images[pick],
                         split.labels[pick], preds_t[pick], np.asarray(ts), labels.palette)
    return rows


def solve_sweep(model, kind, values, split, labels, batch, repeats=5):
    """Sec. 4.8's trade-off: for each value (rtol = atol = value for ``tol``, the end
    time for ``t1``) the split's mIoU and mean forward NFE per batch, and the wall time
    of the forward pass on one batch of `batch` images (median of `repeats` runs after
    a warm-up) with that batch's NFE; ``compiles`` counts the XLA compiles each
    setting caused (t1 and the tolerances are arrays, so after the first setting there
    should be none)."""
    xb = jnp.asarray(split.images[:batch])
    if len(xb) < batch:  # the timed batch has the evaluation's shape: no extra compile
        xb = jnp.concatenate([xb, jnp.repeat(xb[:1], batch - len(xb), 0)])
    rows = []
    for v in values:
        c0 = compile_count()
        m = with_solve(model, **({"rtol": v, "atol": v} if kind == "tol" else {"t1": v}))
        cm, _, nfes = split_confusion(lambda x: predict(m, x), split.images, split.labels,
                                      labels.num_classes, labels.ignore_label, batch)
        t_fwd, _, (_, nfe) = median_time(predict, m, xb, repeats=repeats)
        rows.append(dict(value=float(v), miou=miou(cm), pixel_acc=pixel_accuracy(cm),
                         nfe_mean=float(np.mean(nfes)), nfe_timed_batch=int(nfe),
                         ms_per_image=1e3 * t_fwd / batch, compiles=compile_count() - c0))
        print(f"[sweep {kind}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in rows[-1].items()), flush=True)
    return rows


def plot_sweeps(path, sweeps: dict, reference):
    """mIoU against the measured forward time per image (left) and against the NFE of
    the solve (right, the machine-independent cost), one line per sweep, points
    labelled with the swept value."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    names = {"tol": "rtol = atol", "t1": f"end time t1 (rtol = atol = {reference['t1_tol']:g})"}
    for ax, xkey, xlabel in ((axes[0], "ms_per_image",
                              "forward time per image (ms, median of repeated runs)"),
                             (axes[1], "nfe_mean", "forward NFE of the solve")):
        for kind, rows in sweeps.items():
            x = [r[xkey] for r in rows]
            y = [r["miou"] for r in rows]
            ax.plot(x, y, marker="o", label=f"{names[kind]} swept")
            for r in rows:
                ax.annotate(f"{r['value']:.3g}", (r[xkey], r["miou"]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"trained: t1 = {reference['t1']:g}, rtol = atol = {reference['tol']:g}; "
                 "points labelled with the swept value", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyse(model, split, labels, batch, out, *, kinds=SWEEPS, times=None, tols=None,
            t1s=None, t1_tol=None, repeats=5) -> dict:
    """Fig. 3-4 and the Sec. 4.8 trade-off of a trained SegNode, written to `out`:
    ``trajectory`` at `times` (default 11 points in [0, t1]) with the plain forward
    pass's mIoU; ``tol`` at rtol = atol = each of `tols`; ``t1`` at each end time of
    `t1s` (default 0.1 t1 ... t1), solved at rtol = atol = `t1_tol` (default: the
    trained one).  Returns the rows of each."""
    t1, tol = float(model.ode.t1), float(model.ode.config.rtol)
    if times is not None and max(times) > t1:
        raise ValueError(f"--times {','.join(map(str, times))} goes past the run's end time "
                         f"t1 = {t1:g}; give times in [0, {t1:g}].")
    results = {}
    if "trajectory" in kinds:
        ts = times or list(np.linspace(0.0, t1, 11))
        results["trajectory"] = trajectory(model, split, labels, batch, ts, out)
        results["plain_forward_miou"] = miou(evaluate(model, split, labels, batch)[0])
    sweeps = {}
    if "tol" in kinds:
        sweeps["tol"] = solve_sweep(model, "tol", tols or DEFAULT_TOLS, split, labels, batch,
                                    repeats)
    if "t1" in kinds:
        base = model if t1_tol is None else with_solve(model, rtol=t1_tol, atol=t1_tol)
        values = t1s or [round(t1 * k / 10, 6) for k in range(1, 11)]
        sweeps["t1"] = solve_sweep(base, "t1", values, split, labels, batch, repeats)
    for kind, rows in sweeps.items():
        write_csv(os.path.join(out, f"sweep_{kind}.csv"), rows)
    if sweeps:
        plot_sweeps(os.path.join(out, "sweep.png"), sweeps,
                    dict(t1=t1, tol=tol, t1_tol=t1_tol or tol))
    return dict(results, **sweeps)
