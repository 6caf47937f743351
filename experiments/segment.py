"""Semantic segmentation with SegNode and its residual baseline (Khoshsirat &
Kambhamettu, "Semantic Segmentation using Neural ODEs": Sec. 3-4, Tables 1-2, Fig. 3-4).

Recipes::

    python -m experiments.segment --config smoke              # synthetic shapes, CPU, minutes
    python -m experiments.segment --config camvid-small       # CamVid at a small crop and width
    python -m experiments.segment --config camvid-paper       # the paper's widths (needs a GPU)
    python -m experiments.segment --config smoke --table2     # Table 2 measurements instead
    python -m experiments.segment --config camvid-small --run-name cv --chunk-epochs 2
    python -m experiments.segment --run-name cv --resume      # continue it (same config)
    python -m experiments.segment --checkpoint runs/cv        # Fig. 3-4, Sec. 4.8 trade-off

A run writes ``runs/<name>/``: config.json, metrics.csv (per model and epoch),
summary.json (parameters, val/test mIoU and per-class IoU), per-model
``<model>_final.json``, checkpoints (model and optimiser state after every epoch), and
PNGs with image | label | prediction in the dataset's palette (and SegNode's prediction
along its trajectory, Fig. 3).  ``--checkpoint RUN`` writes ``RUN/analysis/``:
trajectory.csv/.png and trajectory_predictions.png (mIoU of Head(z(t)) against t from
one dense-output solve, Fig. 3-4), sweep_tol.csv, sweep_t1.csv and sweep.png (mIoU
against the measured forward time when rtol = atol or the end time t1 change, with the
NFE; Sec. 4.8: "by sacrificing 3% of accuracy, the required computational time
decreases by 50%"), and summary.json.  Optimisers as in Sec. 4.1: SegNode SGD lr 0.1,
momentum 0.9, no weight decay; baseline AdamW lr 1e-4, weight decay 0.05; both with
the polynomial decay (power 0.9).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import get_config, names as config_names, print_list
from experiments.configs.segnode import DEFAULTS
from jaxode import cli as _cli
from jaxode.compile_log import compile_count
from jaxode.data import camvid, synthetic_seg
from jaxode.nn.hrnet import STEM_CHANNELS
from jaxode.models.segnode import (BaselineConfig, SegNodeConfig, build_model, count_params,
                                   with_solve)
from jaxode.ode import trainable
from jaxode.train import SegmentationTask, TrainConfig, fit, train_state
from jaxode.train.checkpoint import latest_checkpoint, load_newest_intact
from jaxode.train.loop import train_step
from jaxode.train.rundir import RunDir, write_json
from jaxode.train.seg_metrics import (iou_from_confusion, median_time, miou, pixel_accuracy,
                                      split_confusion)

MODELS = ("segnode", "baseline")

# Named configurations (`experiments.configs.segnode`), by name; the tests add their own.
CONFIGS = {name: get_config(name, "segment") for name in config_names("segment")}
_DEFAULTS = DEFAULTS


# ----------------------------------------------------------------------------- data


def _downscale(split, factor: int):
    """Plain decimation for quick CPU evaluation (labels by nearest neighbour)."""
    if factor == 1:
        return split
    return camvid.SegSplit(split.images[:, ::factor, ::factor], split.labels[:, ::factor, ::factor],
                           split.names)


def load_data(cfg):
    """(splits, num_classes, ignore_label, palette) for the config's dataset."""
    if cfg["data"] == "synthetic":
        n = cfg["n_eval"]
        splits = synthetic_seg.load_synthetic(cfg["n_train"], n, n, tuple(cfg["synthetic_size"]),
                                              cfg["seed"])
        return splits, synthetic_seg.NUM_CLASSES, synthetic_seg.IGNORE_LABEL, synthetic_seg.PALETTE
    splits = camvid.load_camvid(cfg.get("data_path"), cache_dir=cfg.get("cache_dir"))
    lim = cfg.get("eval_limit")
    for s in ("val", "test"):
        sp = splits[s]
        if lim:
            sp = camvid.SegSplit(sp.images[:lim], sp.labels[:lim], sp.names[:lim])
        splits[s] = _downscale(sp, cfg["eval_downscale"])
    return splits, camvid.NUM_CLASSES, camvid.IGNORE_LABEL, camvid.PALETTE


# ---------------------------------------------------------------------------- model


def model_config(name, cfg, num_classes):
    common = dict(num_classes=num_classes, widths=tuple(cfg["widths"]), blocks=cfg["blocks"],
                  stem_channels=cfg.get("stem_channels", STEM_CHANNELS))
    if name == "segnode":
        return SegNodeConfig(**common, field_modules=cfg["field_modules"], solver=cfg["solver"],
                             rtol=cfg["rtol"], atol=cfg["atol"],
                             num_steps=cfg.get("num_steps"))
    return BaselineConfig(**common, modules=cfg["baseline_modules"])


def make_optimizer(name, cfg, total_steps):
    """Sec. 4.1: SegNode SGD(0.1, momentum 0.9); baseline AdamW(1e-4, wd 0.05); poly 0.9."""
    lr = cfg["lr_segnode"] if name == "segnode" else cfg["lr_baseline"]
    sched = optax.polynomial_schedule(lr, 0.0, 0.9, max(total_steps, 1))
    if name == "segnode":
        return optax.sgd(sched, momentum=0.9), sched
    return optax.adamw(sched, weight_decay=cfg["weight_decay_baseline"]), sched


@functools.lru_cache(maxsize=8)
def _optimizer(name, lr, weight_decay, total):
    """`make_optimizer`, shared by runs of one process with the same settings (a
    resumed run reuses the compiled step)."""
    return make_optimizer(name, dict(lr_segnode=lr, lr_baseline=lr,
                                     weight_decay_baseline=weight_decay), total)


@eqx.filter_jit
def predict(model, images, ts=None):
    """uint8 (B, H, W, 3) -> (argmax classes (B, H, W) [or (B, T, H, W) with ts], the
    forward NFE of the solve, None for the baseline)."""
    logits, stats = model.batched(camvid.normalize(images), ts)
    return jnp.argmax(logits, axis=-3), (None if stats is None else stats.nfe)


def evaluate(model, split, num_classes, ignore_label, batch, ts=None):
    """Accumulated confusion matrix over a split (one per time in `ts` if given) and
    the predictions."""
    cm, preds, _ = split_confusion(lambda x: predict(model, x, ts), split.images,
                                   split.labels, num_classes, ignore_label, batch)
    return cm, preds


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


# ------------------------------------------------------------------------- training


def _final_path(run: RunDir, name: str) -> str:
    return os.path.join(run.path, f"{name}_final.json")


class _ModelRun:
    """The part of a run folder that one model trains in, as `jaxode.train.fit` uses
    it: checkpoints in ``checkpoints/<name>/``; its rows (in this experiment's column
    names) written to the run's metrics.csv after those of the models before it."""

    def __init__(self, run: RunDir, name: str, rows_before: list, to_row):
        self.path, self.run, self.name = run.path, run, name
        self.checkpoints = os.path.join(run.checkpoints, name)
        self.rows_before, self.to_row = rows_before, to_row

    def write_history(self, history):
        self.run.write_history(self.rows_before + [self.to_row(r) for r in history])


class _Batches:
    """Training batches of epoch e (1-based): a permutation fixed by (seed, e), and per
    example augmentation keys from the run's step counter (as in earlier runs)."""

    def __init__(self, split, bs, per_epoch, seed, key, epoch):
        self.split, self.bs, self.per_epoch, self.key, self.epoch = split, bs, per_epoch, key, epoch
        self.order = np.random.default_rng((seed, epoch)).permutation(len(split.images))

    def __len__(self):
        return self.per_epoch

    def __iter__(self):
        for b in range(self.per_epoch):
            idx = np.sort(self.order[b * self.bs:(b + 1) * self.bs])
            step_key = jax.random.fold_in(self.key, (self.epoch - 1) * self.per_epoch + b)
            yield {"image": self.split.images[idx], "label": self.split.labels[idx],
                   "aug_key": jax.random.split(step_key, len(idx))}


def train_one(name, cfg, splits, num_classes, ignore_label, palette, run: RunDir, key, *,
              resume: bool = False, chunk_epochs: int | None = None, rows_before=()):
    """Train one model with `jaxode.train.fit`; returns ``(summary, history)``.

    Every epoch ends with a checkpoint (``checkpoints/<name>/``).  With `resume`,
    training continues from the newest checkpoint (a model that already finished
    returns its saved summary).  With `chunk_epochs`, at most that many epochs are
    trained in this call; if the model is not finished then, the summary is None
    (continue later with `resume`).  The batch order of epoch e and the augmentation
    of step i depend only on (seed, e) and (key, i), so an interrupted and resumed
    run trains exactly as an uninterrupted one.
    """
    final = _final_path(run, name)
    if resume and os.path.exists(final):
        with open(final) as f:
            done = json.load(f)
        print(f"[{name}] finished earlier; its summary is {final}")
        return done, done["history"]
    k_model, k_train = jax.random.split(key)
    model = build_model(name, model_config(name, cfg, num_classes), key=k_model)
    n_params = count_params(model)
    train = splits["train"]
    bs = cfg["batch_size"]
    per_epoch = len(train.images) // bs
    if cfg.get("max_train_batches"):
        per_epoch = min(per_epoch, cfg["max_train_batches"])
    if per_epoch < 1:
        raise ValueError(f"batch_size {bs} is larger than the training set ({len(train.images)}).")
    opt, sched = _optimizer(name, cfg["lr_segnode"] if name == "segnode" else cfg["lr_baseline"],
                            cfg["weight_decay_baseline"], per_epoch * cfg["epochs"])

    def to_row(r):  # this experiment's metrics.csv columns
        row = dict(model=name, epoch=r["epoch"], train_loss=r["train_loss"],
                   val_miou=r["eval_miou"], val_pixel_acc=r["eval_pixel_acc"],
                   lr=float(sched(r["epoch"] * per_epoch)), epoch_time_s=r["train_time_s"])
        if name == "segnode":
            row.update(nfe_forward=r["train_nfe"], nfe_backward=r["train_nfe_backward"])
        return row

    model_run = _ModelRun(run, name, list(rows_before), to_row)
    done = (latest_checkpoint(model_run.checkpoints) or 0) if resume else 0
    epochs = cfg["epochs"] if chunk_epochs is None else min(cfg["epochs"], done + chunk_epochs)
    task = SegmentationTask(num_classes, ignore_label, tuple(cfg["crop"]), tuple(cfg["scale"]))
    config = TrainConfig(epochs=epochs, batch_size=bs, seed=cfg["seed"], data_parallel=False)
    val = splits["val"]
    print(f"[{name}] {n_params:,} parameters; {per_epoch} steps/epoch x {cfg['epochs']} epochs")
    result = fit(model, task,
                 lambda e: _Batches(train, bs, per_epoch, cfg["seed"], k_train, e + 1),
                 lambda: ({"image": val.images[i:i + cfg["eval_batch"]],
                           "label": val.labels[i:i + cfg["eval_batch"]]}
                          for i in range(0, len(val.images), cfg["eval_batch"])),
                 config=config, optimizer=opt, run=model_run, resume=resume,
                 log=lambda line: print(f"[{name}] {line}"))
    model, history = result.model, [to_row(r) for r in result.history]
    if len(history) < cfg["epochs"]:
        print(f"[{name}] stopped after epoch {len(history)} of {cfg['epochs']} "
              f"(--chunk-epochs {chunk_epochs}); continue with --resume")
        return None, history

    summary = dict(params=n_params, history=history)
    for split in ("val", "test"):
        t0 = time.time()
        cm, preds = evaluate(model, splits[split], num_classes, ignore_label, cfg["eval_batch"])
        summary[f"{split}_miou"] = miou(cm)
        summary[f"{split}_iou_per_class"] = [None if np.isnan(v) else float(v)
                                             for v in iou_from_confusion(cm)]
        summary[f"{split}_seconds_per_image"] = (time.time() - t0) / len(splits[split].images)
        draw_predictions(os.path.join(run.path, f"{name}_{split}_predictions.png"),
                         splits[split], preds, palette)
    if name == "segnode":  # Fig. 3-4: segmentation along the trajectory
        ts = jnp.linspace(0.0, float(model.ode.t1), 5)
        cms, preds_t = evaluate(model, splits["val"], num_classes, ignore_label,
                                cfg["eval_batch"], ts)
        summary["val_miou_along_t"] = {f"{float(t):.2f}": miou(c) for t, c in zip(ts, cms)}
        draw_trajectory_grid(os.path.join(run.path, "segnode_trajectory.png"),
                             splits["val"].images[:1], splits["val"].labels[:1], preds_t[:1],
                             np.asarray(ts), palette)
    write_json(final, summary)
    return summary, history


def load_trained(run_path: str, name: str = "segnode"):
    """``(model, cfg, data, epoch)``: a run's saved config, its data (as `load_data`
    gives it) and model `name` with the weights of its newest checkpoint."""
    with open(os.path.join(run_path, "config.json")) as f:
        cfg = json.load(f)
    data = load_data(cfg)
    model = build_model(name, model_config(name, cfg, data[1]), key=jax.random.PRNGKey(0))
    opt, _ = make_optimizer(name, cfg, 1)
    opt_state = opt.init(eqx.filter(model, trainable(model)))
    folder = os.path.join(run_path, "checkpoints", name)
    found = load_newest_intact(folder, lambda _: (model, opt_state))
    if found is None:
        raise FileNotFoundError(f"{run_path!r} holds no {name} checkpoint ({folder}); train "
                                f"it first (python -m experiments.segment --models {name}).")
    last, (model, _), _ = found  # a damaged newest checkpoint falls back to an older one
    return model, cfg, data, last


# ------------------------------------------------------------- Fig. 3-4, Sec. 4.8

def trajectory(model, split, num_classes, ignore_label, batch, ts, palette, out, show=3):
    """Fig. 3-4: mIoU of Head(z(t)) at each t in `ts` from one dense-output solve
    (`ODEBlock` with ts) per batch; writes trajectory.csv, trajectory.png (mIoU against
    t) and trajectory_predictions.png (`show` images, prediction at each t)."""
    ts = jnp.asarray(ts)
    cms, preds_t = evaluate(model, split, num_classes, ignore_label, batch, ts)
    rows = [dict(t=float(t), miou=miou(c), pixel_acc=pixel_accuracy(c))
            for t, c in zip(ts, cms)]
    _write_csv(os.path.join(out, "trajectory.csv"), rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                         split.labels[pick], preds_t[pick], np.asarray(ts), palette)
    return rows


def draw_trajectory_grid(path, images, labels, preds_t, ts, palette, max_columns=6):
    """Fig. 3 as a titled grid: per image, image | label | prediction at (up to
    `max_columns` of) the times `ts`, evenly chosen, first and last included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def solve_sweep(model, kind, values, split, num_classes, ignore_label, batch, repeats=5):
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
                                      num_classes, ignore_label, batch)
        t_fwd, _, (_, nfe) = median_time(predict, m, xb, repeats=repeats)
        rows.append(dict(value=float(v), miou=miou(cm), pixel_acc=pixel_accuracy(cm),
                         nfe_mean=float(np.mean(nfes)), nfe_timed_batch=int(nfe),
                         ms_per_image=1e3 * t_fwd / batch, compiles=compile_count() - c0))
        print(f"[sweep {kind}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in rows[-1].items()), flush=True)
    return rows


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def plot_sweeps(path, sweeps: dict, reference):
    """mIoU against the measured forward time per image (left) and against the NFE of
    the solve (right, the machine-independent cost), one line per sweep, points
    labelled with the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def analyse(args):
    """``--checkpoint RUN``: Fig. 3-4 and the Sec. 4.8 trade-off from a trained SegNode."""
    kinds = _cli.split_list(args.sweep)
    with _cli.data_errors_exit():
        model, cfg, (splits, num_classes, ignore_label, palette), epoch = load_trained(
            args.checkpoint)
    split = splits[args.split]
    batch = cfg["eval_batch"]
    t1, tol = float(model.ode.t1), float(model.ode.config.rtol)
    settings = dict(checkpoint=os.path.abspath(args.checkpoint), epoch=epoch, split=args.split,
                    images=len(split.images), batch=batch, repeats=args.repeats,
                    trained_t1=t1, trained_rtol=tol, trained_atol=float(model.ode.config.atol),
                    solver=cfg["solver"], t1_sweep_tol=args.t1_tol or tol,
                    device=str(jax.devices()[0]))
    out = RunDir(_analysis_path(args), dict(settings, sweep=kinds), tensorboard=False)
    results = dict(settings=settings)
    if args.times and max(args.times) > t1:
        _cli.stop(f"--times {','.join(map(str, args.times))} goes past the run's "
                         f"end time t1 = {t1:g}; give times in [0, {t1:g}].")
    if "trajectory" in kinds:
        ts = args.times or list(np.linspace(0.0, t1, 11))
        results["trajectory"] = trajectory(model, split, num_classes, ignore_label, batch, ts,
                                           palette, out.path)
        cm, _ = evaluate(model, split, num_classes, ignore_label, batch)  # plain forward
        results["plain_forward_miou"] = miou(cm)
    sweeps = {}
    for kind in ("tol", "t1"):
        if kind in kinds:
            values = (args.tols or [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4]) if kind == "tol" \
                else (args.t1s or [round(t1 * f, 6) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                              0.8, 0.9, 1.0)])
            base = model
            if kind == "t1" and args.t1_tol is not None:
                base = with_solve(model, rtol=args.t1_tol, atol=args.t1_tol)
            sweeps[kind] = solve_sweep(base, kind, values, split, num_classes, ignore_label,
                                       batch, args.repeats)
            _write_csv(os.path.join(out.path, f"sweep_{kind}.csv"), sweeps[kind])
    if sweeps:
        results.update(sweeps)
        plot_sweeps(os.path.join(out.path, "sweep.png"), sweeps,
                    dict(t1=t1, tol=tol, t1_tol=args.t1_tol or tol))
    out.summary(results)
    print(f"analysis folder: {out.path}")
    return results


# -------------------------------------------------------------------------- table 2


def _memory(compiled) -> int:
    """Peak bytes of a compiled program by XLA's buffer assignment: arguments + outputs
    + temporaries - aliased (donated) bytes."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def measure_table2(cfg, batch: int, budget_gb: float, timing: bool = True, key=None,
                   two_batches: bool = False):
    """Table 2 for both models at the config's widths and crop: parameters, training
    memory at `batch`, the largest batch within `budget_gb` (from the memory at batch
    `batch` and 2*`batch`, which is affine in the batch), memory to test one image at
    the crop size, training time per epoch (367 images) and testing time per image."""
    key = jax.random.PRNGKey(0) if key is None else key
    crop = tuple(cfg["crop"])
    rows = {}
    for name in MODELS:
        mcfg = model_config(name, cfg, 11)
        model = build_model(name, mcfg, key=key)
        opt, _ = make_optimizer(name, cfg, 1000)
        opt_state = train_state(model, TrainConfig(), opt)["opt_state"]
        task = SegmentationTask(11, 11, crop, (1.0, 1.0))
        # jax.jit over the model's arrays (equinox's filter_jit would treat the
        # ShapeDtypeStructs used for lowering as static constants)
        params, static = eqx.partition(model, eqx.is_array)

        def raw_step(d, o, i, l, k):  # the training step of `jaxode.train.fit`
            m, o2, _, loss, metrics, _ = train_step(
                eqx.combine(d, static), o, None, {"image": i, "label": l}, k,
                jnp.ones((), jnp.float32), task, opt, None)
            return eqx.filter(m, eqx.is_array), o2, loss, metrics["nfe"], metrics["nfe_backward"]

        raw_predict = jax.jit(lambda d, x: predict(eqx.combine(d, static), x))
        mem, args_bytes, compiled = {}, {}, {}
        for b in ((batch, 2 * batch) if two_batches else (batch,)):
            imgs = jax.ShapeDtypeStruct((b,) + crop + (3,), jnp.uint8)
            labs = jax.ShapeDtypeStruct((b,) + crop, jnp.uint8)
            t0 = time.time()
            compiled[b] = jax.jit(raw_step).lower(params, opt_state, imgs, labs, key).compile()
            mem[b] = _memory(compiled[b])
            args_bytes[b] = int(compiled[b].memory_analysis().argument_size_in_bytes)
            print(f"[{name}] train step batch {b}: {mem[b] / 2**30:.3f} GiB "
                  f"(compiled in {time.time() - t0:.0f} s)", flush=True)
        if two_batches:  # memory is affine in the batch: fit it through two points
            per_image = (mem[2 * batch] - mem[batch]) / batch
            fixed = mem[batch] - per_image * batch
        else:  # one point: the fixed part is the arguments (parameters, optimiser state)
            fixed = args_bytes[batch]
            per_image = (mem[batch] - fixed) / batch
        max_batch = int((budget_gb * 2**30 - fixed) // per_image) if per_image > 0 else None
        x1 = jax.ShapeDtypeStruct((1,) + crop + (3,), jnp.uint8)
        test_c = raw_predict.lower(params, x1).compile()
        row = dict(params=count_params(model), train_mem_gib=mem[batch] / 2**30,
                   train_mem_per_image_gib=per_image / 2**30,
                   max_batch=max_batch, test_mem_one_image_gib=_memory(test_c) / 2**30)
        if timing:
            imgs = jnp.zeros((batch,) + crop + (3,), jnp.uint8)
            labs = jnp.zeros((batch,) + crop, jnp.uint8)
            ts = []
            m, o = params, opt_state
            for _ in range(3):
                t0 = time.time()
                m, o, loss, nf, nb = compiled[batch](m, o, imgs, labs, key)
                jax.block_until_ready(loss)
                ts.append(time.time() - t0)
            row["train_step_s"] = float(np.median(ts))
            row["train_epoch_s"] = row["train_step_s"] * math.ceil(367 / batch)
            x = jnp.zeros((1,) + crop + (3,), jnp.uint8)
            tt = []
            for _ in range(3):
                t0 = time.time()
                jax.block_until_ready(test_c(params, x))
                tt.append(time.time() - t0)
            row["test_ms_per_image"] = 1e3 * float(np.median(tt))
            if name == "segnode":
                row["nfe_forward_train"] = int(nf)
                row["nfe_backward_train"] = float(nb)
        rows[name] = row
        print(f"[{name}] {json.dumps(row)}", flush=True)
    b, s = rows["baseline"], rows["segnode"]
    rows["ratios"] = dict(
        params_less=1 - s["params"] / b["params"],
        train_mem_less=1 - s["train_mem_gib"] / b["train_mem_gib"],
        test_mem_less=1 - s["test_mem_one_image_gib"] / b["test_mem_one_image_gib"],
    )
    return rows


# ------------------------------------------------------------------------------ CLI


_CONFIG_FLAGS = ("config", "epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
                 "field_modules", "solver", "num_steps", "rtol", "atol", "lr_segnode",
                 "lr_baseline", "max_train_batches", "eval_limit", "seed", "data_path",
                 "cache_dir")
SWEEPS = ("trajectory", "tol", "t1")


def parse_args(argv=None):
    p = _cli.ArgumentParser(
        prog="python -m experiments.segment",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and evaluate SegNode and the residual HRNet baseline (Khoshsirat & "
                    "Kambhamettu), measure their Table 2 costs (--table2), or analyse a trained "
                    "SegNode (--checkpoint RUN: Fig. 3-4 and the solve-time trade-off).",
        epilog="""modes:
  train (default)   runs/NAME/: config, metrics, checkpoints after every epoch, summary.
                    --chunk-epochs K stops each model after K more epochs; --resume
                    continues runs/NAME from its newest checkpoints with its saved config.
  --table2          parameters, memory (and times unless --no-timing) of both models.
  --checkpoint RUN  a trained run folder: --sweep trajectory (mIoU of Head(z(t)) at --times
                    from one dense-output solve, and the predictions drawn), tol (rtol = atol
                    = each of --tols) and t1 (end time = each of --t1s): mIoU, NFE and the
                    median forward time of a batch (no recompiles: the compile count is
                    recorded per setting); written to --out (default RUN/analysis).
examples:
  python -m experiments.segment --config camvid-small --run-name cv --chunk-epochs 2
  python -m experiments.segment --run-name cv --resume
  python -m experiments.segment --checkpoint runs/cv --sweep trajectory,tol,t1""")
    p.add_argument("--config", default=None, choices=sorted(CONFIGS),
                   help="named configuration (default: smoke, synthetic shapes on the CPU)")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of segnode,baseline (default: both; with "
                        "--resume: the run's models)")
    p.add_argument("--list", action="store_true", help="list the named configurations and exit")
    p.add_argument("--data-root", "--data-path", dest="data_path", default=None,
                   action=_cli.renamed("--data-path", "--data-root"),
                   help="CamVid zip or folder (default: $JAXODE_DATA/camvid-segnet.zip; "
                        "--data-path is the old name of this flag)")
    p.add_argument("--cache-dir", default=None, help="where decoded CamVid npz files are cached")
    p.add_argument("--run-name", default=None, help="run folder name under runs/")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/RUN-NAME from its newest checkpoints, with its saved "
                        "config (no configuration flags allowed)")
    p.add_argument("--chunk-epochs", type=int,
                   help="train each model at most this many more epochs in this call")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--widths", type=int, nargs=4, metavar="C")
    p.add_argument("--blocks", type=int, help="basic blocks per branch in each module")
    p.add_argument("--baseline-modules", type=int)
    p.add_argument("--field-modules", type=int, help="HRNet modules inside SegNode's field")
    p.add_argument("--solver", help="ODE solver (dopri5, tsit5, bosh3, euler, midpoint, rk4)")
    p.add_argument("--num-steps", type=int, help="steps of a fixed-step solver")
    p.add_argument("--rtol", type=float)
    p.add_argument("--atol", type=float)
    p.add_argument("--lr-segnode", type=float)
    p.add_argument("--lr-baseline", type=float)
    p.add_argument("--max-train-batches", type=int)
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N val/test images")
    p.add_argument("--seed", type=int)
    p.add_argument("--table2", action="store_true",
                   help="measure Table 2 (params, memory, time) instead of training")
    p.add_argument("--table2-batch", type=int, default=2)
    p.add_argument("--memory-budget-gb", type=float, default=32.0,
                   help="memory for the 'largest batch' column (paper: a 32 GB V100)")
    p.add_argument("--no-timing", action="store_true", help="Table 2: memory only, no runs")
    p.add_argument("--two-batches", action="store_true",
                   help="Table 2: fit memory vs batch from two compiles (slower)")
    g = p.add_argument_group("analysis of a trained SegNode (--checkpoint)")
    g.add_argument("--checkpoint", default=None, metavar="RUN",
                   help="a training run folder (runs/NAME) with a segnode checkpoint")
    g.add_argument("--sweep", default=",".join(SWEEPS),
                   help="comma-separated subset of trajectory,tol,t1 (default: all)")
    g.add_argument("--times", default=None,
                   help="trajectory times, comma-separated, increasing, in [0, t1] "
                        "(default: 11 points from 0 to t1)")
    g.add_argument("--tols", default=None,
                   help="rtol = atol values of the tol sweep (default 1e-1,3e-2,...,1e-4)")
    g.add_argument("--t1s", default=None,
                   help="end times of the t1 sweep (default 0.1 t1, 0.2 t1, ..., t1)")
    g.add_argument("--t1-tol", type=float, default=None,
                   help="rtol = atol during the t1 sweep (default: the run's own)")
    g.add_argument("--repeats", type=int, default=5,
                   help="timed runs per setting after a warm-up (the median is reported)")
    g.add_argument("--split", default="val", choices=("val", "test"),
                   help="split the analysis evaluates (default: val)")
    g.add_argument("--out", default=None, help="analysis folder (default: RUN/analysis)")
    args = p.parse_args(argv)
    if args.list:
        print_list("segment")
        raise SystemExit(0)
    check_args(p, args)
    return args


def _run_path(args) -> str:
    name = args.run_name or f"segment-{args.config or 'smoke'}" + ("-table2" if args.table2 else "")
    return os.path.join("runs", name)


def _analysis_path(args) -> str:
    return args.out or os.path.join(args.checkpoint, "analysis")


def _check_analysis_args(parser, args) -> None:
    given = [f for f in _CONFIG_FLAGS + ("models", "run_name") if getattr(args, f) is not None]
    given += [f for f in ("resume", "table2") if getattr(args, f)]
    if args.chunk_epochs is not None:
        given.append("chunk_epochs")
    if given:
        parser.error(f"argument {_cli.flag_name(given[0])}: not allowed with --checkpoint, which "
                     "analyses a trained run with its saved config; drop it.")
    cfg_path = os.path.join(args.checkpoint, "config.json")
    if not os.path.isfile(cfg_path):
        parser.error(f"argument --checkpoint: {args.checkpoint!r} is not a training run folder "
                     f"(no config.json); pass a folder written by python -m experiments.segment.")
    try:
        with open(cfg_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        parser.error(f"argument --checkpoint: {cfg_path} cannot be read ({e}); pass a folder "
                     "written by python -m experiments.segment.")
    if not isinstance(saved, dict) or "data" not in saved:
        parser.error(f"argument --checkpoint: {args.checkpoint!r} is not a segmentation run (its "
                     "config.json has no 'data' entry; e.g. a classify run); pass a "
                     "folder written by python -m experiments.segment.")
    _cli.check_list(parser, "sweep", args.sweep, choices=SWEEPS)
    for dest in ("tols", "t1s", "times"):
        vals = _cli.check_list(parser, dest, getattr(args, dest), kind=float, minimum=0.0)
        if vals is not None and dest != "times" and min(vals) <= 0:
            parser.error(f"argument {_cli.flag_name(dest)}: every value must be > 0, got "
                         f"{getattr(args, dest)!r}.")
        if vals is not None and dest == "times" and any(np.diff(vals) < 0):
            parser.error(f"argument --times: {args.times!r} must be increasing.")
        setattr(args, dest, vals)
    _cli.check_numbers(parser, args, positive=("repeats", "t1_tol"))
    _cli.check_new_run_dir(parser, "--out", _analysis_path(args))


def check_args(parser, args) -> None:
    """Refuse bad numbers, model / solver names, solver-step combinations, input paths
    and an occupied run folder (`experiments._cli`: usage + one sentence, exit status
    2), before any data is read or anything is compiled."""
    from jaxode.ode import ADAPTIVE_SOLVERS, SOLVERS

    if args.checkpoint is not None:
        _check_analysis_args(parser, args)
        return
    for dest in ("times", "tols", "t1s", "t1_tol", "out"):
        if getattr(args, dest) is not None:
            parser.error(f"argument {_cli.flag_name(dest)}: is for the analysis of a trained run; "
                         "add --checkpoint RUN or drop the flag.")
    _cli.check_args(
        parser, args,
        positive=("epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
                  "field_modules", "num_steps", "rtol", "lr_segnode", "lr_baseline",
                  "max_train_batches", "eval_limit", "table2_batch", "memory_budget_gb",
                  "chunk_epochs"),
        non_negative=("atol", "seed"), choices={"models": MODELS})
    _cli.check_existing(parser, "data_root", args.data_path)
    if args.resume:
        if args.table2:
            parser.error("argument --resume: continues a training run; drop --table2.")
        given = [f for f in _CONFIG_FLAGS if getattr(args, f) is not None]
        if given:
            parser.error(f"argument {_cli.flag_name(given[0])}: --resume continues the run "
                         "with its saved config (config.json); drop the flag.")
        path = _run_path(args)
        if not os.path.isfile(os.path.join(path, "config.json")):
            parser.error(f"argument --resume: {path!r} holds no run (no config.json); pass the "
                         "--run-name of an earlier training run, or drop --resume.")
        with open(os.path.join(path, "config.json")) as f:
            saved = json.load(f)
        if args.models is not None:
            extra = [m for m in _cli.split_list(args.models) if m not in saved.get("models", [])]
            if extra:
                parser.error(f"argument --models: {extra[0]!r} is not a model of the run "
                             f"{path!r} ({','.join(saved.get('models', []))}).")
        return
    solver = args.solver or CONFIGS[args.config or "smoke"].get("solver", _DEFAULTS["solver"])
    if solver not in SOLVERS:
        parser.error(f"argument --solver: unknown solver {solver!r}; choose from "
                     f"{', '.join(SOLVERS)}.")
    if args.num_steps is not None and solver in ADAPTIVE_SOLVERS:
        parser.error(f"argument --num-steps: is for the fixed-step solvers; solver {solver!r} "
                     "chooses its own steps (drop --num-steps or pass --solver euler).")
    if solver not in ADAPTIVE_SOLVERS and args.num_steps is None:
        parser.error(f"argument --solver: fixed-step solver {solver!r} needs --num-steps N.")
    if args.cache_dir is not None and os.path.exists(args.cache_dir) \
            and not os.path.isdir(args.cache_dir):
        parser.error(f"argument --cache-dir: {args.cache_dir!r} is a file; pass a folder.")
    _cli.check_new_run_dir(parser, "--run-name", _run_path(args),
                           also="" if args.table2 else ", or pass --resume to continue it")


def resolve_config(args) -> dict:
    cfg = dict(_DEFAULTS)
    config = args.config or "smoke"
    cfg.update(CONFIGS[config])
    for k in ("epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
              "field_modules", "solver", "num_steps", "rtol", "atol", "lr_segnode",
              "lr_baseline", "max_train_batches", "eval_limit", "seed", "data_path",
              "cache_dir"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    if cfg.get("num_steps") is not None and cfg["solver"] in ("dopri5", "tsit5", "bosh3"):
        raise ValueError(f"--num-steps is for fixed-step solvers; got solver {cfg['solver']!r}.")
    cfg["config_name"] = config
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if args.checkpoint is not None:
        return analyse(args)
    if args.resume:
        with open(os.path.join(_run_path(args), "config.json")) as f:
            cfg = json.load(f)
        saved_models = cfg.pop("models")
        cfg.pop("table2", None)
        models = _cli.split_list(args.models) if args.models else saved_models
    else:
        cfg = resolve_config(args)
        saved_models = models = _cli.split_list(args.models or "segnode,baseline")

    def open_run():
        config = None if args.resume else dict(cfg, models=models, table2=args.table2)
        return RunDir(_run_path(args), config, tensorboard=False)

    if args.table2:
        run = open_run()
        rows = measure_table2(cfg, args.table2_batch, args.memory_budget_gb, not args.no_timing,
                              two_batches=args.two_batches)
        rows["setting"] = dict(crop=cfg["crop"], widths=cfg["widths"], blocks=cfg["blocks"],
                               baseline_modules=cfg["baseline_modules"], batch=args.table2_batch,
                               budget_gb=args.memory_budget_gb, device=str(jax.devices()[0]),
                               solver=cfg["solver"], rtol=cfg["rtol"])
        print(run.summary(rows))
        return rows
    with _cli.data_errors_exit():
        splits, num_classes, ignore_label, palette = load_data(cfg)
    n_train = len(splits["train"].images)
    if n_train < cfg["batch_size"]:  # before the run folder exists: a fixed re-run can use it
        _cli.stop(f"--batch-size {cfg['batch_size']} is larger than the training "
                         f"set ({n_train} images); pass --batch-size {max(n_train, 1)} or less.")
    run = open_run()
    key = jax.random.PRNGKey(cfg["seed"])
    summary, history = {}, []
    for m in models:
        summary[m], h = train_one(m, cfg, splits, num_classes, ignore_label, palette, run,
                                  jax.random.fold_in(key, MODELS.index(m)), resume=args.resume,
                                  chunk_epochs=args.chunk_epochs, rows_before=history)
        history += h
        run.write_history(history)
    unfinished = [m for m in saved_models if not os.path.exists(_final_path(run, m))
                  and summary.get(m) is None]
    if unfinished:
        print(f"not finished: {', '.join(unfinished)}; continue with python -m "
              f"experiments.segment --run-name {os.path.basename(run.path)} --resume")
        return summary
    for m in saved_models:  # models finished in earlier calls
        if summary.get(m) is None:
            with open(_final_path(run, m)) as f:
                summary[m] = json.load(f)
    path = run.summary(summary)
    for m in saved_models:
        print(f"{m}: params {summary[m]['params']:,}, val mIoU {summary[m]['val_miou']:.4f}, "
              f"test mIoU {summary[m]['test_miou']:.4f}")
    print(f"run folder: {run.path} (summary: {path})")
    return summary


if __name__ == "__main__":
    main()
