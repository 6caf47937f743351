"""Transfer experiment (Carrara et al., Sec. 4.3): how well do the intermediate features
z(t) of CIFAR-10-trained networks serve a new task, as a function of t?

Recipe: trained classifiers (``--checkpoint NAME=RUN_DIR``, or small ones trained here
with ``--quick-train``) -> Tiny-ImageNet-200 val at 32x32 -> per feature time t a linear
SVM, C by stratified k-fold CV (`jaxode.transfer_sweep`) -> optionally, at t*, a new
linear head and a whole-network fine-tune on one held-out split -> RUNS_DIR/NAME/:
results.csv, accuracy_vs_t.png, summary.json, config.json.  Example::

    python -m experiments.transfer --config smoke --quick-train
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments.configs import describe, get_config, names, print_list
from jaxode import cli

TINY_CLASSES, TINY_PER_CLASS = 200, 50  # Tiny-ImageNet-200's validation split
RESULT_FILES = ("config.json", "results.csv", "accuracy_vs_t.png", "summary.json")
QUICK_MODELS = {"resnet": "carrara-resnet", "resode": "carrara-resode",
                "odeonly": "carrara-odeonly"}


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="python -m experiments.transfer", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_flags(p, configs=names("transfer"), default_config="paper",
                      describe=lambda n: describe(n, "transfer"))
    a = p.add_argument
    a("--checkpoint", action="append", default=[], metavar="NAME=RUN_DIR",
      help="a trained classification run folder (repeatable)")
    a("--quick-train", action="store_true",
      help="first train small nets on a CIFAR-10 subset here (RUNS_DIR/NAME-quick-KIND)")
    a("--quick-models", default="resnet,resode,odeonly")
    a("--quick-channels", type=int, default=64,
      help="width of the quick models (at <= 32 GroupNorm normalises channels one by one)")
    a("--quick-tol", type=float, default=1e-3, help="ODE rtol = atol of quick models")
    a("--quick-train-size", type=int, default=2000)
    a("--quick-epochs", type=int, default=3)
    a("--quick-batch-size", type=int, default=50)
    a("--train-only", action="store_true",
      help="with --quick-train: stop after training and print the run folders")
    a("--cache-dir", default=None, help="decoded-image cache (default $JAXODE_CACHE)")
    a("--features-dir", default=None,
      help="cache of features and SVM results (default RUNS_DIR/NAME/features; shareable)")
    a("--image-size", type=int, default=32, help="Tiny-ImageNet is resized 64 -> this")
    a("--classes", type=int, default=None, help="use the first K classes (default all 200)")
    a("--per-class", type=int, default=None, help="images per class (default all 50)")
    a("--time-step", type=float, default=0.05, help="spacing of the ODE feature times on [0, 1]")
    a("--svm-time-step", type=float, default=None,
      help="SVM only at the feature times that are multiples of this (results are cached)")
    a("--folds", type=int, default=5)
    a("--svm-solver", choices=("sklearn", "newton"), default="sklearn",
      help="liblinear LinearSVC, or jaxode.svm's Newton solver (faster, same objective)")
    a("--Cs", default="0.01,0.1,1,10,100")
    a("--n-jobs", type=int, default=-1)
    a("--finetune-t", type=float, default=None,
      help="also compare fine-tunes with the SVM at this t on a held-out split")
    a("--finetune-epochs", type=int, default=100, help="epochs of the linear head")
    a("--finetune-mode", choices=("head", "full", "both"), default="head",
      help="a new linear head on the frozen features, the whole network cut at t*, or both")
    a("--full-epochs", type=int, default=3, help="epochs of the full fine-tune")
    a("--full-lr", type=float, default=0.01, help="lr of the full fine-tune (SGD 0.9, cosine)")
    a("--batch-size", type=int, default=250, help="feature-extraction batch")
    a("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list" in argv:
        print_list("transfer")
        raise SystemExit(0)
    config = p.parse_known_args(argv)[0].config  # the named config sets the flag defaults
    if config not in names("transfer"):
        p.error(f"argument --config: unknown config {config!r}; choose one of "
                f"{', '.join(names('transfer'))} (see --list).")
    p.set_defaults(name="transfer", **get_config(config, "transfer"))
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _check_args(parser, args):
    """Bad command lines end here, before any data is read or program compiled."""
    cli.check_args(parser, args,
                   positive=("quick_channels", "quick_tol", "quick_train_size", "quick_epochs",
                             "quick_batch_size", "image_size", "classes", "per_class",
                             "time_step", "svm_time_step", "finetune_epochs", "full_epochs",
                             "full_lr", "batch_size"),
                   at_least={"folds": 2}, choices={"quick_models": tuple(QUICK_MODELS)},
                   existing=("data_root",))
    for flag, value, most, what in (("--classes", args.classes, TINY_CLASSES, "classes"),
                                    ("--per-class", args.per_class, TINY_PER_CLASS,
                                     "validation images per class")):
        if value is not None and value > most:
            parser.error(f"argument {flag}: {value} is more than the {most} {what} of "
                         f"Tiny-ImageNet-200; pass {flag} {most} or fewer.")
    if args.time_step > 1:
        parser.error(f"argument --time-step: {args.time_step!r} leaves no time inside [0, 1] "
                     "but 0; pass a spacing in (0, 1], e.g. 0.05.")
    if args.finetune_t is not None and not 0.0 <= args.finetune_t <= 1.0:
        parser.error(f"argument --finetune-t: {args.finetune_t!r} is outside [0, 1]; feature "
                     "times run from 0 (block input) to 1 (block output); pass e.g. 0.5.")
    cli.check_list(parser, "Cs", args.Cs, kind=float, minimum=1e-12)
    for spec in args.checkpoint:
        name, sep, run_dir = spec.partition("=")
        if not sep or not name or not run_dir:
            parser.error(f"argument --checkpoint: expected NAME=RUN_DIR, got {spec!r}; "
                         "e.g. --checkpoint resode=runs/carrara-cifar10-resode.")
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            parser.error(f"argument --checkpoint: {run_dir!r} is not a run folder (no "
                         "config.json there); pass a folder written by experiments.classify "
                         "or by --quick-train.")
    if args.quick_train and not args.resume:  # fit() never deletes an earlier run's checkpoints
        for kind in cli.split_list(args.quick_models):
            cli.check_new_run_dir(parser, "--name", _quick_path(args, kind),
                                  also=", or pass --resume to continue it")
    if args.train_only and not args.quick_train:
        parser.error("argument --train-only: only meaningful with --quick-train.")
    if not args.checkpoint and not args.quick_train:
        parser.error("no models: give --checkpoint NAME=RUN_DIR (repeatable) or --quick-train.")


def _quick_path(args, kind):
    return os.path.join(args.runs_dir, f"{args.name}-quick-{kind}")


def _fit(model, task, train, eval_set, config, run, args, log):
    """`jaxode.train.fit` on a training and an evaluation `Dataset`."""
    from jaxode.train import dataset_batches, fit

    return fit(model, task,
               lambda e: dataset_batches(train, config.batch_size, seed=(args.seed, e),
                                         drop_last=True),
               lambda: dataset_batches(eval_set, 250, shuffle=False),
               config=config, run=run, resume=args.resume, log=log)


def quick_train(args, log=print):
    """Train small Carrara-style nets on a stratified CIFAR-10 subset (CPU-sized)."""
    import jax

    from jaxode.data import load_dataset
    from jaxode.data.augment import channel_stats
    from jaxode.models.classifiers import make_model
    from jaxode.train import ClassificationTask, RunDir, TrainConfig
    from jaxode.transfer import stratified_subset

    with cli.data_errors_exit():
        train, test = (load_dataset("cifar10", split, root=args.data_root,
                                    cache_dir=args.cache_dir) for split in ("train", "test"))
    idx = stratified_subset(train.labels, classes=None,
                            per_class=args.quick_train_size // 10, seed=args.seed)
    train = train.subset(idx, name=f"cifar10/train[{len(idx)}]")
    test = test.subset(stratified_subset(test.labels, classes=None, per_class=100, seed=0),
                       name="cifar10/test[1000]")
    mean, std = channel_stats(train.images)
    task = ClassificationTask(crop_padding=4, flip=True, mean=mean, std=std)
    models = {}
    for kind in cli.split_list(args.quick_models):
        kwargs = {"num_classes": 10, "channels": args.quick_channels, "dropout": 0.0,
                  **({"tol": args.quick_tol} if kind != "resnet" else {})}
        model = make_model(QUICK_MODELS[kind], key=jax.random.PRNGKey(0), **kwargs)
        config = TrainConfig(epochs=args.quick_epochs, batch_size=args.quick_batch_size,
                             lr=0.1, weight_decay=5e-4, lr_schedule="cosine", seed=args.seed,
                             progress=not args.no_progress)
        run = RunDir(_quick_path(args, kind),
                     {"model": QUICK_MODELS[kind], "model_kwargs": kwargs,
                      "train_size": len(train), "train": config.to_dict(),
                      "task": {"crop_padding": 4, "flip": True, "mean": mean, "std": std}})
        t0 = time.perf_counter()
        res = _fit(model, task, train, test, config, run, args, log)
        acc = res.history[-1].get("eval_acc")
        log(f"quick-train {kind}: CIFAR-10 test[1000] acc {acc:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
        models[kind] = {"model": res.eval_model, "cifar_acc": acc, "source": run.path,
                        "norm": (mean, std)}
    return models


def finetune_full(entry, images, y, n_classes, t, args, run_path, log):
    """Fine-tune the whole network cut at t (`jaxode.transfer.truncated_classifier`)
    with a new head, on the held-out split of the SVM comparison; own run folder."""
    import jax

    from jaxode import transfer as tr
    from jaxode.train import ClassificationTask, RunDir, TrainConfig
    from jaxode.transfer_sweep import heldout_datasets

    if tr.is_ode_model(entry["model"]) and t <= 0.0:
        log("full fine-tune skipped: at t* = 0 an ODE net has no ODE block left "
            "(choose --finetune-t > 0)")
        return {"full_skipped": "t* = 0"}
    train, val = heldout_datasets(images, y, n_classes, args.seed)
    model = tr.truncated_classifier(entry["model"], t, n_classes, key=jax.random.PRNGKey(args.seed))
    mean, std = (tuple(v) for v in entry["norm"]) if entry["norm"] is not None else (None, None)
    task = ClassificationTask(crop_padding=4, flip=True, mean=mean, std=std)
    config = TrainConfig(epochs=args.full_epochs, batch_size=min(50, len(train)),
                         lr=args.full_lr, weight_decay=1e-4, lr_schedule="cosine",
                         seed=args.seed, progress=not args.no_progress)
    run = RunDir(run_path, {"t": t, "source": entry["source"], "train": config.to_dict(),
                            "n_train": len(train), "n_val": len(val)})
    t0 = time.perf_counter()
    res = _fit(model, task, train, val, config, run, args, log)
    return {"full_val_accuracy": float(res.history[-1]["eval_acc"]),
            "full_train_accuracy": float(res.history[-1].get("train_acc", float("nan"))),
            "full_epochs": args.full_epochs, "full_lr": args.full_lr,
            "full_seconds": time.perf_counter() - t0, "full_run": run.path}


def main(argv=None, log=print):
    args = parse_args(argv)
    from tqdm.auto import tqdm

    from jaxode import transfer as tr
    from jaxode import transfer_sweep as sweep
    from jaxode.data.load import resolve_path
    from jaxode.data.tiny_imagenet import load_tiny_imagenet_val

    out = cli.run_path(args, args.name)
    data = None
    if not args.train_only:  # the target data first: a missing set stops before training
        with cli.data_errors_exit():
            path = resolve_path("tiny-imagenet", args.data_root,
                                ("tiny-imagenet-200-val.zip", "tiny-imagenet-200"))
            data = load_tiny_imagenet_val(path, image_size=args.image_size,
                                          cache_dir=args.cache_dir)
    with cli.data_errors_exit():
        models = sweep.load_source_runs(args.checkpoint)
    if args.quick_train:
        models.update(quick_train(args, log))
        if args.train_only:
            for nm, entry in models.items():
                log(f"trained {nm}: --checkpoint {nm}={entry['source']}")
            return {"trained": {nm: e["source"] for nm, e in models.items()}}
    os.makedirs(out, exist_ok=True)  # only now: a command that stops early writes nothing
    cli.keep_previous_results(out, RESULT_FILES, prefix="finetune-", log=log)
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
    svm = dict(Cs=Cs, folds=args.folds, seed=args.seed, n_jobs=args.n_jobs,
               solver=args.svm_solver)
    summary = {"reported": (f"mean {args.folds}-fold stratified CV accuracy at the best C "
                            f"of {Cs} (max over the grid: slightly optimistic)"),
               "svm_solver": args.svm_solver, "n_images": len(idx),
               "n_classes": n_classes, "image_size": args.image_size, "models": {}}
    feat_dir = args.features_dir or os.path.join(out, "features")
    ts = tuple(float(t) for t in np.round(np.arange(0.0, 1.0 + 1e-9, args.time_step), 6))
    rows = []
    for nm, entry in models.items():
        mine, info, feats, times = sweep.measure_model(
            feat_dir, nm, entry, images, y, ts, batch_size=args.batch_size, svm=svm,
            data_key=f"tiny-imagenet-val@{args.image_size}:{args.classes}:{args.per_class}:"
                     f"{args.seed}", step=args.svm_time_step, log=log,
            progress=lambda xs, nm=nm: tqdm(xs, desc=f"SVM {nm}", leave=False))
        rows += mine
        if args.finetune_t is not None:
            j = int(np.argmin(np.abs(times - args.finetune_t)))
            ft = sweep.finetune_compare(feats[:, j], y, n_classes, **svm, head_epochs=(
                args.finetune_epochs if args.finetune_mode in ("head", "both") else None))
            ft["t"] = float(times[j])
            if args.finetune_mode in ("full", "both"):
                ft.update(finetune_full(entry, images, y, n_classes, float(times[j]), args,
                                        os.path.join(out, f"finetune-{nm}"), log))
            info["finetune"] = ft
        summary["models"][nm] = info

    sweep.write_results(out, rows, summary, folds=args.folds)
    log(f"reported: {summary['reported']}")
    for nm, info in summary["models"].items():
        log(sweep.summary_line(nm, info))
    log(f"wrote {out}/results.csv, accuracy_vs_t.png, summary.json")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
