"""Transfer experiment (Carrara et al., Sec. 4.3): how well do the intermediate features
z(t) of CIFAR-10-trained networks serve a new task, as a function of t?

Recipe::

    trained classifiers (checkpoints of `experiments.classify`, or small ones trained
    here with --quick-train) -> Tiny-ImageNet-200 val (64x64, resized to 32x32)
    -> pooled features at t = 0, 0.05, ..., 1 (ODE nets, one dense-output solve) or
       the last seven residual blocks (Residual Net), cached on disk
    -> per t: standardise + LinearSVC, C in {0.01, 0.1, 1, 10, 100} by 5-fold stratified
       CV (the reported number is the mean CV accuracy at the best C)
    -> optional fine-tune comparison at t*: new linear head (optax SGD) vs SVM, both
       scored on the same held-out stratified split
    -> runs/<name>/: results.csv, accuracy_vs_t.png, summary.json, config.json

Examples::

    python -m experiments.transfer --quick-train --classes 50 --per-class 30
    python -m experiments.transfer --checkpoint resode=runs/cifar-resode \\
        --checkpoint resnet=runs/cifar-resnet --data-root /path/to/data
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np


def parse_args(argv=None):
    from jaxode.cli import ArgumentParser

    p = ArgumentParser(prog="python -m experiments.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a trained classification run folder (repeatable)")
    p.add_argument("--quick-train", action="store_true",
                   help="train small Residual / Res-ODE / ODE-only nets on a CIFAR-10 subset "
                        "on this machine first (when no checkpoints exist)")
    p.add_argument("--quick-models", default="resnet,resode,odeonly")
    p.add_argument("--quick-channels", type=int, default=64,
                   help="width of the quick models (GroupNorm uses 32 groups: at <= 32 "
                        "channels every group is one channel, and the pooled features "
                        "lose most of their information)")
    p.add_argument("--quick-tol", type=float, default=1e-3, help="ODE rtol = atol of quick models")
    p.add_argument("--quick-train-size", type=int, default=2000)
    p.add_argument("--quick-epochs", type=int, default=3)
    p.add_argument("--quick-batch-size", type=int, default=50)
    p.add_argument("--train-only", action="store_true",
                   help="with --quick-train: stop after training and print the run folders "
                        "(pass them later as --checkpoint NAME=RUN_DIR)")
    p.add_argument("--data-root", default=None,
                   help="folder with tiny-imagenet-200-val.zip and cifar10-jpeg.zip "
                        "(default $JAXODE_DATA)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default $JAXODE_CACHE)")
    p.add_argument("--features-dir", default=None,
                   help="cache of features and SVM results (default RUNS_DIR/NAME/features); "
                        "point two runs at one folder to share it")
    p.add_argument("--image-size", type=int, default=32,
                   help="Tiny-ImageNet images are resized 64 -> this (default 32, to match "
                        "the CIFAR-10 input size)")
    p.add_argument("--classes", type=int, default=None, help="use the first K classes (default all 200)")
    p.add_argument("--per-class", type=int, default=None, help="images per class (default all 50)")
    p.add_argument("--time-step", type=float, default=0.05,
                   help="spacing of the ODE feature times on [0, 1] (default 0.05: 21 times)")
    p.add_argument("--svm-time-step", type=float, default=None,
                   help="run the SVM only at the ODE feature times that are multiples of "
                        "this (default: every feature time); results are cached, so a later "
                        "run with a finer step adds only the missing times")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--svm-solver", choices=("sklearn", "newton"), default="sklearn",
                   help="'sklearn': liblinear LinearSVC in GridSearchCV (default); 'newton': "
                        "jaxode.svm, the same objective for all classes at once, warm-started "
                        "along the C grid (2x to 10x faster on a 2-core CPU, measured in "
                        "docs/results/transfer.md; tested against liblinear)")
    p.add_argument("--Cs", default="0.01,0.1,1,10,100")
    p.add_argument("--n-jobs", type=int, default=-1)
    p.add_argument("--finetune-t", type=float, default=None,
                   help="also train a linear head on the frozen features at this t and "
                        "compare with the SVM on a held-out split")
    p.add_argument("--finetune-epochs", type=int, default=100,
                   help="epochs of the linear head on frozen features")
    p.add_argument("--finetune-mode", choices=("head", "full", "both"), default="head",
                   help="at --finetune-t: 'head' trains a new linear head on the frozen "
                        "features; 'full' fine-tunes the whole network cut at t* with a new "
                        "GN-ReLU-pool-linear head (SGD, crop + flip); 'both' does both. All "
                        "are scored on the same held-out split as the SVM")
    p.add_argument("--full-epochs", type=int, default=3, help="epochs of the full fine-tune")
    p.add_argument("--full-lr", type=float, default=0.01,
                   help="learning rate of the full fine-tune (SGD momentum 0.9, cosine)")
    p.add_argument("--batch-size", type=int, default=250, help="feature-extraction batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="transfer")
    p.add_argument("--runs-dir", default="runs")
    from experiments import configs

    args = configs.parse(p, "transfer", argv, default="paper")
    _check_args(p, args)
    return args


def _check_args(parser, args):
    """Bad command lines end here, before any data is read or program compiled."""
    from jaxode.cli import check_args, check_list

    check_args(parser, args,
               positive=("quick_channels", "quick_tol", "quick_train_size", "quick_epochs",
                         "quick_batch_size", "image_size", "classes", "per_class",
                         "time_step", "svm_time_step", "finetune_epochs", "full_epochs", "full_lr",
                         "batch_size"),
               at_least={"folds": 2},
               choices={"quick_models": tuple(QUICK_MODELS)},
               existing=("data_root",))
    # Tiny-ImageNet-200's validation split: 200 classes of 50 images (the data are
    # read after training, so these limits are checked here, before any work).
    if args.classes is not None and args.classes > TINY_CLASSES:
        parser.error(f"argument --classes: {args.classes} is more than the {TINY_CLASSES} "
                     f"classes of Tiny-ImageNet-200; pass --classes {TINY_CLASSES} or fewer.")
    if args.per_class is not None and args.per_class > TINY_PER_CLASS:
        parser.error(f"argument --per-class: {args.per_class} is more than the "
                     f"{TINY_PER_CLASS} validation images per class of Tiny-ImageNet-200; "
                     f"pass --per-class {TINY_PER_CLASS} or fewer.")
    if args.time_step > 1:
        parser.error(f"argument --time-step: {args.time_step!r} leaves no time inside [0, 1] "
                     "but 0; pass a spacing in (0, 1], e.g. 0.05.")
    if args.finetune_t is not None and not 0.0 <= args.finetune_t <= 1.0:
        parser.error(f"argument --finetune-t: {args.finetune_t!r} is outside [0, 1]; feature "
                     "times run from 0 (block input) to 1 (block output); pass e.g. 0.5.")
    check_list(parser, "Cs", args.Cs, kind=float, minimum=1e-12)
    for spec in args.checkpoint:
        name, sep, run_dir = spec.partition("=")
        if not sep or not name or not run_dir:
            parser.error(f"argument --checkpoint: expected NAME=RUN_DIR, got {spec!r}; "
                         "e.g. --checkpoint resode=runs/carrara-cifar10-resode.")
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            parser.error(f"argument --checkpoint: {run_dir!r} is not a run folder (no "
                         "config.json there); pass a folder written by experiments.classify "
                         "or by --quick-train.")
    if args.quick_train:  # fit() never deletes an earlier run's checkpoints
        from jaxode.cli import check_new_run_dir, split_list

        for kind in split_list(args.quick_models):
            check_new_run_dir(parser, "--name",
                              os.path.join(args.runs_dir, f"{args.name}-quick-{kind}"))
    if args.train_only and not args.quick_train:
        parser.error("argument --train-only: only meaningful with --quick-train.")
    if not args.checkpoint and not args.quick_train:
        parser.error("no models: give --checkpoint NAME=RUN_DIR (repeatable) or --quick-train.")


# ----------------------------------------------------------------------------- models


TINY_CLASSES, TINY_PER_CLASS = 200, 50
RESULT_FILES = ("config.json", "results.csv", "accuracy_vs_t.png", "summary.json")
QUICK_MODELS = {"resnet": "carrara-resnet", "resode": "carrara-resode",
                "odeonly": "carrara-odeonly"}


def _quick_factory(kind: str, channels: int, tol: float):
    import jax

    from jaxode.models.classifiers import make_model

    if kind not in QUICK_MODELS:
        raise ValueError(f"--quick-models: unknown model {kind!r}; use resnet, resode, odeonly.")
    kwargs = {"num_classes": 10, "channels": channels, "dropout": 0.0}
    if kind != "resnet":
        kwargs["tol"] = tol
    return make_model(QUICK_MODELS[kind], key=jax.random.PRNGKey(0), **kwargs), kwargs


def quick_train(args, log=print):
    """Train small Carrara-style nets on a stratified CIFAR-10 subset (CPU-sized)."""
    from jaxode.cli import data_errors_exit
    from jaxode.data import load_dataset
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit
    from jaxode.transfer import stratified_subset

    with data_errors_exit():
        train = load_dataset("cifar10", "train", root=args.data_root, cache_dir=args.cache_dir)
        test = load_dataset("cifar10", "test", root=args.data_root, cache_dir=args.cache_dir)
    idx = stratified_subset(train.labels, classes=None,
                            per_class=args.quick_train_size // 10, seed=args.seed)
    train = train.subset(idx, name=f"cifar10/train[{len(idx)}]")
    test = test.subset(stratified_subset(test.labels, classes=None, per_class=100, seed=0),
                       name="cifar10/test[1000]")
    from jaxode.data.augment import channel_stats

    mean, std = channel_stats(train.images)
    task = ClassificationTask(crop_padding=4, flip=True, mean=mean, std=std)
    models = {}
    for kind in args.quick_models.split(","):
        kind = kind.strip()
        model, kwargs = _quick_factory(kind, args.quick_channels, args.quick_tol)
        config = TrainConfig(epochs=args.quick_epochs, batch_size=args.quick_batch_size,
                             lr=0.1, weight_decay=5e-4, lr_schedule="cosine", seed=args.seed)
        run = RunDir(os.path.join(args.runs_dir, f"{args.name}-quick-{kind}"),
                     {"model": QUICK_MODELS[kind], "model_kwargs": kwargs,
                      "train_size": len(train), "train": config.to_dict(),
                      "task": {"crop_padding": 4, "flip": True, "mean": mean, "std": std}})
        t0 = time.perf_counter()
        res = fit(model, task,
                  lambda e: dataset_batches(train, args.quick_batch_size, seed=(args.seed, e),
                                            drop_last=True),
                  lambda: dataset_batches(test, 250, shuffle=False),
                  config=config, run=run, log=log)
        acc = res.history[-1].get("eval_acc")
        log(f"quick-train {kind}: CIFAR-10 test[1000] acc {acc:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
        models[kind] = {"model": res.eval_model, "cifar_acc": acc, "source": run.path,
                        "norm": (mean, std)}
    return models


# ----------------------------------------------------------------------------- main


def main(argv=None, log=print):
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from experiments.transfer_finetune import finetune_compare, finetune_full
    from jaxode import transfer as tr
    from jaxode.cli import data_errors_exit, keep_previous_results, stop
    from jaxode.data.load import resolve_path
    from jaxode.data.tiny_imagenet import load_tiny_imagenet_val
    from jaxode.train import load_run

    out = os.path.join(args.runs_dir, args.name)
    data = None
    if not args.train_only:  # the target data first: a missing set stops before training
        with data_errors_exit():
            path = resolve_path("tiny-imagenet", args.data_root,
                                ("tiny-imagenet-200-val.zip", "tiny-imagenet-200"))
            data = load_tiny_imagenet_val(path, image_size=args.image_size,
                                          cache_dir=args.cache_dir)
    models = {}
    for spec in args.checkpoint:
        nm, run_dir = spec.split("=", 1)
        with data_errors_exit():
            trained = load_run(run_dir)
        model, norm = trained.model, trained.norm
        channels = getattr(model, "in_channels", 3)
        if channels != 3:
            stop(f"--checkpoint {nm}={run_dir}: that model was trained on {channels}-channel "
                 "(grey) images, but Tiny-ImageNet is RGB; pass a run trained on RGB images "
                 "(e.g. CIFAR-10, --config carrara-cifar10-*) or use --quick-train.")
        models[nm] = {"model": model, "cifar_acc": None, "source": run_dir, "norm": norm}
    if args.quick_train:
        models.update(quick_train(args, log))
        if args.train_only:
            for nm, entry in models.items():
                log(f"trained {nm}: --checkpoint {nm}={entry['source']}")
            return {"trained": {nm: e["source"] for nm, e in models.items()}}
    os.makedirs(out, exist_ok=True)  # only now: a command that stops early writes nothing
    keep_previous_results(out, RESULT_FILES, prefix="finetune-", log=log)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(vars(args), f, indent=2)

    log(f"Tiny-ImageNet-200 val: {len(data)} images, resized 64 -> {args.image_size} "
        f"(Pillow bilinear, antialiased; --image-size)")
    idx = tr.stratified_subset(data.labels, classes=args.classes, per_class=args.per_class,
                               seed=args.seed)
    images = data.images[idx]
    _, y = np.unique(data.labels[idx], return_inverse=True)
    n_classes = int(y.max()) + 1
    log(f"subset: {len(idx)} images, {n_classes} classes "
        f"({len(idx) // n_classes} per class), seed {args.seed}")
    Cs = tuple(float(c) for c in args.Cs.split(","))
    rows = []
    summary = {"reported": (f"mean {args.folds}-fold stratified CV accuracy at the best C "
                            f"of {Cs} (max over the grid: slightly optimistic)"),
               "svm_solver": args.svm_solver,
               "n_images": int(len(idx)), "n_classes": n_classes,
               "image_size": args.image_size, "models": {}}
    feat_dir = args.features_dir or os.path.join(out, "features")
    for nm, entry in models.items():
        model = entry["model"]
        t_start = time.perf_counter()
        ts = tuple(float(t) for t in np.round(np.arange(0.0, 1.0 + 1e-9, args.time_step), 6))
        feats = tr.cached_features(
            feat_dir, model, images, ts=ts,
            data_key=f"tiny-imagenet-val@{args.image_size}:{args.classes}:{args.per_class}:{args.seed}",
            batch_size=args.batch_size, desc=f"features {nm}",
            mean=None if entry["norm"] is None else tuple(entry["norm"][0]),
            std=None if entry["norm"] is None else tuple(entry["norm"][1]))
        t_feat = time.perf_counter() - t_start
        times = tr.feature_times(model, ts)
        kind = "ode" if tr.is_ode_model(model) else "resnet"
        log(f"{nm}: features {feats.shape} in {t_feat:.0f} s")
        accs, svm_ts = [], _svm_indices(times, kind, args.svm_time_step)
        for j in tqdm(svm_ts, desc=f"SVM {nm}", leave=False):
            r = tr.cached_svm_cv(feat_dir, feats[:, j], y, Cs=Cs, folds=args.folds,
                                 seed=args.seed, n_jobs=args.n_jobs, solver=args.svm_solver)
            accs.append(r["cv_accuracy"])
            rows.append({"model": nm, "kind": kind, "index": j, "t": float(times[j]),
                         "cv_accuracy": r["cv_accuracy"], "cv_std": r["cv_std"],
                         "best_C": r["best_C"], "dual": r["dual"],
                         "n_features": feats.shape[2]})
            log(f"  {nm} t={times[j]:.2f}: CV acc {r['cv_accuracy']:.4f} ± {r['cv_std']:.4f} (C={r['best_C']:g})")
        k_best = int(np.argmax(accs))
        best = svm_ts[k_best]
        info = {"kind": kind, "source": entry["source"], "cifar10_acc": entry["cifar_acc"],
                "best_t": float(times[best]), "best_cv_accuracy": float(accs[k_best]),
                "cv_accuracy_at_t1": float(accs[-1]), "feature_seconds": t_feat,
                "n_features": int(feats.shape[2])}
        if args.finetune_t is not None:
            j = int(np.argmin(np.abs(times - args.finetune_t)))
            ft = finetune_compare(tr, feats[:, j], y, n_classes, Cs, args)
            ft["t"] = float(times[j])
            if args.finetune_mode in ("full", "both"):
                ft.update(finetune_full(tr, entry, images, y, n_classes, float(times[j]),
                                        args, os.path.join(out, f"finetune-{nm}"), log))
            info["finetune"] = ft
        summary["models"][nm] = info

    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for nm in models:
        r = [row for row in rows if row["model"] == nm]
        ax.errorbar([x["t"] for x in r], [x["cv_accuracy"] for x in r],
                    yerr=[x["cv_std"] for x in r], marker="o", ms=3, capsize=2, label=nm)
    ax.set_xlabel("t (ResNet: last seven blocks spread over [0, 1])")
    ax.set_ylabel(f"{args.folds}-fold CV accuracy (best C)")
    ax.set_title(f"Tiny-ImageNet-200 val: {len(idx)} images, {n_classes} classes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_t.png"), dpi=110)
    plt.close(fig)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(f"reported: {summary['reported']}")
    for nm, info in summary["models"].items():
        line = f"{nm}: best t = {info['best_t']:.2f} (CV acc {info['best_cv_accuracy']:.4f}); t=1: {info['cv_accuracy_at_t1']:.4f}"
        if "finetune" in info:
            ft = info["finetune"]
            line += f"; at t*={ft['t']:.2f} held-out acc: SVM {ft['svm_val_accuracy']:.4f}"
            if "head_val_accuracy" in ft:
                line += f", linear head {ft['head_val_accuracy']:.4f}"
            if "full_val_accuracy" in ft:
                line += f", full fine-tune {ft['full_val_accuracy']:.4f}"
        log(line)
    log(f"wrote {out}/results.csv, accuracy_vs_t.png, summary.json")
    return summary


def _svm_indices(times, kind, step):
    """Indices of the feature times the SVM is run at: all for the Residual Net and
    when `step` is None, else the ODE times that are multiples of `step`, and t = 1."""
    last = len(times) - 1
    if kind != "ode" or step is None:
        return list(range(len(times)))
    picked = [j for j, t in enumerate(times) if abs(t / step - round(t / step)) < 1e-6]
    return picked if last in picked else picked + [last]


if __name__ == "__main__":
    main(sys.argv[1:])
