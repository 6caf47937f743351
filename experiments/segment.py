"""Semantic segmentation with SegNode and its residual baseline (Khoshsirat &
Kambhamettu, "Semantic Segmentation using Neural ODEs": Sec. 3-4, Tables 1-2, Fig. 3-4).

Recipes::

    python -m experiments.segment --config smoke              # synthetic shapes, CPU, minutes
    python -m experiments.segment --config camvid-small       # CamVid at a small crop and width
    python -m experiments.segment --config camvid-paper       # the paper's widths (needs a GPU)
    python -m experiments.segment --config smoke --table2     # Table 2 measurements instead

A run writes ``runs/<name>/``: config.json, metrics.csv (per model and epoch),
summary.json (parameters, val/test mIoU and per-class IoU), checkpoints, and PNGs
with image | label | prediction in the dataset's palette (and SegNode's prediction
along its trajectory, Fig. 3).  Optimisers as in Sec. 4.1: SegNode SGD lr 0.1,
momentum 0.9, no weight decay; baseline AdamW lr 1e-4, weight decay 0.05; both with
the polynomial decay (power 0.9).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli
from jaxode.data import camvid, synthetic_seg
from jaxode.models.segnode import (BaselineConfig, SegNodeConfig, build_model, count_params)
from jaxode.ode import backward_nfe, trainable
from jaxode.train.checkpoint import save_checkpoint
from jaxode.train.rundir import RunDir
from jaxode.train.seg_metrics import (confusion_matrix, cross_entropy, iou_from_confusion,
                                      miou, pixel_accuracy)

MODELS = ("segnode", "baseline")

# Named configurations: the paper's settings and small ones for a CPU.
CONFIGS = {
    "smoke": dict(data="synthetic", widths=(4, 8, 16, 32), blocks=1, baseline_modules=2,
                  crop=(48, 48), scale=(0.75, 1.5), batch_size=8, epochs=3,
                  synthetic_size=(64, 64), n_train=64, n_eval=16, eval_batch=8,
                  rtol=1e-2, atol=1e-2, lr_segnode=0.1, lr_baseline=1e-3,
                  max_train_batches=None, eval_limit=None),
    "camvid-small": dict(data="camvid", widths=(8, 16, 32, 64), blocks=1, baseline_modules=2,
                         crop=(96, 128), scale=(0.25, 0.5), batch_size=4, epochs=1,
                         eval_downscale=4, eval_batch=4, rtol=1e-2, atol=1e-2,
                         lr_segnode=0.1, lr_baseline=1e-3, max_train_batches=40,
                         eval_limit=24),
    "camvid-paper": dict(data="camvid", widths=(48, 96, 192, 384), blocks=4,
                         baseline_modules=6, crop=(360, 480), scale=(0.5, 2.0),
                         batch_size=16, epochs=484, eval_downscale=1, eval_batch=4,
                         rtol=1e-3, atol=1e-3, lr_segnode=0.1, lr_baseline=1e-4,
                         max_train_batches=None, eval_limit=None),
}
_DEFAULTS = dict(solver="dopri5", field_modules=1, seed=0, eval_downscale=1,
                 synthetic_size=(64, 64), n_train=64, n_eval=16, weight_decay_baseline=0.05)


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
    common = dict(num_classes=num_classes, widths=tuple(cfg["widths"]), blocks=cfg["blocks"])
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


def make_train_step(opt, crop, scale, ignore_label):
    """One jitted step: device augmentation, forward, loss, gradient, update."""

    @eqx.filter_jit
    def step(model, opt_state, images, labels, key):
        keys = jax.random.split(key, images.shape[0])
        x, y = jax.vmap(lambda k, i, l: camvid.augment(k, i, l, crop, scale,
                                                       ignore_label=ignore_label))(keys, images, labels)
        x = camvid.normalize(x)

        def loss_fn(m):
            logits, stats = m.batched(x)
            return cross_entropy(logits, y, ignore_label), stats

        (loss, stats), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        spec = trainable(model)
        updates, opt_state = opt.update(eqx.filter(grads, spec), opt_state,
                                        eqx.filter(model, spec))
        model = eqx.apply_updates(model, updates)
        nfe_f = stats.nfe if stats is not None else jnp.zeros((), jnp.int32)
        return model, opt_state, loss, nfe_f, backward_nfe(grads)

    return step


@eqx.filter_jit
def predict(model, images, ts=None):
    """uint8 (B, H, W, 3) -> argmax classes (B, H, W) [or (B, T, H, W) with ts]."""
    logits, _ = model.batched(camvid.normalize(images), ts)
    return jnp.argmax(logits, axis=-3)


def evaluate(model, split, num_classes, ignore_label, batch, ts=None):
    """Accumulated confusion matrix over a split (one per time in `ts` if given)."""
    n = len(split.images)
    cms = None
    preds_out = []
    for start in range(0, n, batch):
        imgs = split.images[start:start + batch]
        labs = split.labels[start:start + batch]
        pad = batch - len(imgs)
        if pad:  # keep one compiled shape: pad with copies whose labels are all ignored
            imgs = np.concatenate([imgs, np.repeat(imgs[:1], pad, 0)])
            labs = np.concatenate([labs, np.full((pad,) + labs.shape[1:], ignore_label, labs.dtype)])
        preds = predict(model, jnp.asarray(imgs), ts)
        if ts is None:
            cm = confusion_matrix(labs, preds, num_classes, ignore_label)[None]
        else:
            cm = jnp.stack([confusion_matrix(labs, preds[:, k], num_classes, ignore_label)
                            for k in range(len(ts))])
        cms = cm if cms is None else cms + cm
        preds_out.append(np.asarray(preds[: batch - pad]))
    cms = np.asarray(cms)
    return (cms[0] if ts is None else cms), np.concatenate(preds_out)


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


def draw_trajectory(path, image, label, preds_t, ts, palette):
    """Fig. 3: image | label | prediction at each time t."""
    from PIL import Image

    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    parts = [image, gap, camvid.colorize(label, palette)]
    for k in range(len(ts)):
        parts += [gap, camvid.colorize(preds_t[k], palette)]
    Image.fromarray(np.concatenate(parts, axis=1)).save(path)


# ------------------------------------------------------------------------- training


def train_one(name, cfg, splits, num_classes, ignore_label, palette, run: RunDir, key):
    """Train one model; returns its summary dict."""
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
    total = per_epoch * cfg["epochs"]
    opt, sched = make_optimizer(name, cfg, total)
    opt_state = opt.init(eqx.filter(model, trainable(model)))
    step = make_train_step(opt, tuple(cfg["crop"]), tuple(cfg["scale"]), ignore_label)
    rng = np.random.default_rng(cfg["seed"])
    history, it = [], 0
    print(f"[{name}] {n_params:,} parameters; {per_epoch} steps/epoch x {cfg['epochs']} epochs")
    for epoch in range(1, cfg["epochs"] + 1):
        order = rng.permutation(len(train.images))
        losses, nfe_f, nfe_b, t0 = [], [], [], time.time()
        for b in tqdm(range(per_epoch), desc=f"{name} epoch {epoch}", leave=False):
            idx = np.sort(order[b * bs:(b + 1) * bs])
            k_train, k = jax.random.split(k_train)
            model, opt_state, loss, nf, nb = step(model, opt_state, jnp.asarray(train.images[idx]),
                                                  jnp.asarray(train.labels[idx]), k)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"[{name}] loss became {loss} at epoch {epoch}, step {b}; lower the learning "
                    "rate (--lr-segnode / --lr-baseline).")
            losses.append(loss)
            nfe_f.append(int(nf))
            nfe_b.append(float(nb))
            it += 1
        epoch_time = time.time() - t0
        cm, _ = evaluate(model, splits["val"], num_classes, ignore_label, cfg["eval_batch"])
        row = dict(model=name, epoch=epoch, train_loss=float(np.mean(losses)),
                   val_miou=miou(cm), val_pixel_acc=pixel_accuracy(cm),
                   lr=float(sched(it)), epoch_time_s=epoch_time)
        if name == "segnode":
            row.update(nfe_forward=float(np.mean(nfe_f)), nfe_backward=float(np.mean(nfe_b)))
        history.append(row)
        print(f"[{name}] epoch {epoch}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        save_checkpoint(os.path.join(run.checkpoints, name), epoch, model, {"epoch": epoch})

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
        draw_trajectory(os.path.join(run.path, "segnode_trajectory.png"), splits["val"].images[0],
                        splits["val"].labels[0], preds_t[0], ts, palette)
    return summary, history


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
        opt_state = opt.init(eqx.filter(model, trainable(model)))
        step = make_train_step(opt, crop, (1.0, 1.0), 11)
        # jax.jit over the model's arrays (equinox's filter_jit would treat the
        # ShapeDtypeStructs used for lowering as static constants)
        params, static = eqx.partition(model, eqx.is_array)

        def raw_step(d, o, i, l, k):
            m, o2, loss, nf, nb = step(eqx.combine(d, static), o, i, l, k)
            return eqx.filter(m, eqx.is_array), o2, loss, nf, nb

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m experiments.segment",
        description="Train and evaluate SegNode and the residual HRNet baseline (Khoshsirat & "
                    "Kambhamettu), or measure their Table 2 costs (--table2).")
    p.add_argument("--config", default="smoke", choices=sorted(CONFIGS),
                   help="named configuration (default: smoke, synthetic shapes on the CPU)")
    p.add_argument("--models", default="segnode,baseline",
                   help="comma-separated subset of segnode,baseline")
    p.add_argument("--data-path", default=None,
                   help="CamVid zip or folder (default: $JAXODE_DATA/camvid-segnet.zip)")
    p.add_argument("--cache-dir", default=None, help="where decoded CamVid npz files are cached")
    p.add_argument("--run-name", default=None, help="run folder name under runs/")
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
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def _run_path(args) -> str:
    name = args.run_name or f"segment-{args.config}" + ("-table2" if args.table2 else "")
    return os.path.join("runs", name)


def check_args(parser, args) -> None:
    """Refuse bad numbers, model / solver names, solver-step combinations, input paths
    and an occupied run folder (`experiments._cli`: usage + one sentence, exit status
    2), before any data is read or anything is compiled."""
    from jaxode.ode import ADAPTIVE_SOLVERS, SOLVERS

    _cli.check_args(
        parser, args,
        positive=("epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
                  "field_modules", "num_steps", "rtol", "lr_segnode", "lr_baseline",
                  "max_train_batches", "eval_limit", "table2_batch", "memory_budget_gb"),
        non_negative=("atol", "seed"), choices={"models": MODELS},
        existing=("data_path",))
    solver = args.solver or CONFIGS[args.config].get("solver", _DEFAULTS["solver"])
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
    _cli.check_new_run_dir(parser, "--run-name", _run_path(args))


def resolve_config(args) -> dict:
    cfg = dict(_DEFAULTS)
    cfg.update(CONFIGS[args.config])
    for k in ("epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
              "field_modules", "solver", "num_steps", "rtol", "atol", "lr_segnode",
              "lr_baseline", "max_train_batches", "eval_limit", "seed", "data_path",
              "cache_dir"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    if cfg.get("num_steps") is not None and cfg["solver"] in ("dopri5", "tsit5", "bosh3"):
        raise ValueError(f"--num-steps is for fixed-step solvers; got solver {cfg['solver']!r}.")
    cfg["config_name"] = args.config
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config(args)
    models = _cli.split_list(args.models)

    def open_run():
        return RunDir(_run_path(args), dict(cfg, models=models, table2=args.table2),
                      tensorboard=False)

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
        raise SystemExit(f"error: --batch-size {cfg['batch_size']} is larger than the training "
                         f"set ({n_train} images); pass --batch-size {max(n_train, 1)} or less.")
    run = open_run()
    key = jax.random.PRNGKey(cfg["seed"])
    summary, history = {}, []
    for m in models:
        summary[m], h = train_one(m, cfg, splits, num_classes, ignore_label, palette, run,
                                  jax.random.fold_in(key, MODELS.index(m)))
        history += h
        run.write_history(history)
    path = run.summary(summary)
    for m in models:
        print(f"{m}: params {summary[m]['params']:,}, val mIoU {summary[m]['val_miou']:.4f}, "
              f"test mIoU {summary[m]['test_miou']:.4f}")
    print(f"run folder: {run.path} (summary: {path})")
    return summary


if __name__ == "__main__":
    main()
