"""Semantic segmentation with SegNode and its residual baseline (Khoshsirat &
Kambhamettu, "Semantic Segmentation using Neural ODEs": Sec. 3-4, Tables 1-2, Fig. 3-4).

    python -m experiments.segment --config smoke              # synthetic shapes, CPU, minutes
    python -m experiments.segment --config camvid-small       # CamVid at a small crop and width
    python -m experiments.segment --config camvid-paper       # the paper's widths (needs a GPU)
    python -m experiments.segment --config smoke --table2     # Table 2 measurements instead
    python -m experiments.segment --config camvid-small --name cv --chunk-epochs 2
    python -m experiments.segment --name cv --resume          # continue it (same config)
    python -m experiments.segment --checkpoint runs/cv        # Fig. 3-4, Sec. 4.8 trade-off

A run folder holds config.json, metrics.csv, summary.json, ``<model>_final.json``,
checkpoints after every epoch and the predictions drawn; the library parts are in
`jaxode.models.segnode_train` (Sec. 4.1), `segnode_analysis` and `segnode_cost`.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from experiments import configs
from experiments.configs.segnode import from_saved, model_config, optimizer, settings
from jaxode import cli as _cli
from jaxode.data import camvid
from jaxode.data.segmentation import load_segmentation
from jaxode.models import segnode_analysis as analysis
from jaxode.models.segnode import build_model, count_params
from jaxode.models.segnode_cost import measure_table2
from jaxode.models.segnode_train import MODELS, EpochBatches, ModelRun, metrics_row, restore
from jaxode.train import SegmentationTask, TrainConfig, fit
from jaxode.train.checkpoint import latest_checkpoint
from jaxode.train.rundir import RunDir, write_json

# Named configurations (`experiments.configs.segnode`), by name; the tests add their own.
CONFIGS = {name: configs.get_config(name, "segment") for name in configs.names("segment")}
# flags that set a setting of the config, and those that set one of its `solve`
SETTING_FLAGS = ("epochs", "batch_size", "crop", "widths", "blocks", "baseline_modules",
                 "field_modules", "lr_segnode", "lr_baseline", "max_train_batches",
                 "eval_limit", "seed", "data_root", "cache_dir")
SOLVE_FLAGS = ("solver", "num_steps", "rtol", "atol")


def resolve_config(args) -> dict:
    """The named config (default ``smoke``) with the flags given on top."""
    cfg = settings(CONFIGS[args.config or "smoke"])
    for k in SETTING_FLAGS + SOLVE_FLAGS:
        v = getattr(args, k)
        if v is not None:
            (cfg["solve"] if k in SOLVE_FLAGS else cfg)[k] = tuple(v) if isinstance(v, list) else v
    cfg["config_name"] = args.config or "smoke"
    return cfg


def load_data(cfg):
    """``(splits, labels)`` of the config's dataset (`jaxode.data.load_segmentation`)."""
    return load_segmentation(cfg["data"], root=cfg.get("data_root"), cache_dir=cfg.get("cache_dir"),
                             seed=cfg["seed"], n_train=cfg["n_train"], n_eval=cfg["n_eval"],
                             size=cfg["synthetic_size"], eval_limit=cfg.get("eval_limit"),
                             eval_downscale=cfg["eval_downscale"])


def train_one(name, cfg, splits, labels, run: RunDir, key, *, resume=False, chunk_epochs=None,
              rows_before=(), progress=True):
    """Train model `name` with `jaxode.train.fit`: ``(summary, history)``, summary None
    while `chunk_epochs` leave it unfinished; `resume` continues its newest checkpoint."""
    final = os.path.join(run.path, f"{name}_final.json")
    if resume and os.path.exists(final):
        with open(final) as f:
            done = json.load(f)
        print(f"[{name}] finished earlier; its summary is {final}")
        return done, done["history"]
    k_model, k_train = jax.random.split(key)
    model = build_model(name, model_config(name, cfg, labels.num_classes), key=k_model)
    train, val, bs = splits["train"], splits["val"], cfg["batch_size"]
    per_epoch = min(len(train.images) // bs, cfg.get("max_train_batches") or len(train.images))
    opt, sched = optimizer(name, cfg, per_epoch * cfg["epochs"])
    to_row = lambda r: metrics_row(name, r, float(sched(r["epoch"] * per_epoch)))
    model_run = ModelRun(run, name, rows_before, to_row)
    done = (latest_checkpoint(model_run.checkpoints) or 0) if resume else 0
    epochs = cfg["epochs"] if chunk_epochs is None else min(cfg["epochs"], done + chunk_epochs)
    task = SegmentationTask(labels.num_classes, labels.ignore_label, tuple(cfg["crop"]),
                            tuple(cfg["scale"]))
    config = TrainConfig(epochs=epochs, batch_size=bs, seed=cfg["seed"], data_parallel=False,
                         progress=progress)
    eb = cfg["eval_batch"]
    print(f"[{name}] {count_params(model):,} parameters; {per_epoch} steps/epoch x "
          f"{cfg['epochs']} epochs")
    result = fit(model, task,
                 lambda e: EpochBatches(train, bs, per_epoch, cfg["seed"], k_train, e + 1),
                 lambda: ({"image": val.images[i:i + eb], "label": val.labels[i:i + eb]}
                          for i in range(0, len(val.images), eb)),
                 config=config, optimizer=opt, run=model_run, resume=resume,
                 log=lambda line: print(f"[{name}] {line}"))
    history = [to_row(r) for r in result.history]
    if len(history) < cfg["epochs"]:
        print(f"[{name}] stopped after epoch {len(history)} of {cfg['epochs']} "
              f"(--chunk-epochs {chunk_epochs}); continue with --resume")
        return None, history
    summary = dict(params=count_params(result.model), history=history,
                   **analysis.evaluate_trained(name, result.model, splits, labels, eb, run.path))
    write_json(final, summary)
    return summary, history


def load_trained(run_path: str, name: str = "segnode"):
    """``(model, cfg, (splits, labels), epoch)``: a run's settings, its data and model
    `name` with the weights of its newest intact checkpoint."""
    with open(os.path.join(run_path, "config.json")) as f:
        cfg = from_saved(json.load(f))
    data = load_data(cfg)
    mcfg = model_config(name, cfg, data[1].num_classes)
    model = build_model(name, mcfg, key=jax.random.PRNGKey(0))
    epoch, model = restore(os.path.join(run_path, "checkpoints", name), model,
                           optimizer(name, cfg, 1)[0])
    return model, cfg, data, epoch


def analyse(args):
    """``--checkpoint RUN``: Fig. 3-4 and the Sec. 4.8 trade-off from a trained SegNode."""
    with _cli.data_errors_exit():
        model, cfg, (splits, labels), epoch = load_trained(args.checkpoint)
    split, t1, tol = splits[args.split], float(model.ode.t1), float(model.ode.config.rtol)
    if args.times and max(args.times) > t1:
        _cli.stop(f"--times {','.join(map(str, args.times))} goes past the run's end time "
                  f"t1 = {t1:g}; give times in [0, {t1:g}].")
    settings_ = dict(checkpoint=os.path.abspath(args.checkpoint), epoch=epoch, split=args.split,
                     images=len(split.images), batch=cfg["eval_batch"], repeats=args.repeats,
                     trained_t1=t1, trained_rtol=tol, trained_atol=float(model.ode.config.atol),
                     solver=cfg["solve"]["solver"], t1_sweep_tol=args.t1_tol or tol,
                     device=str(jax.devices()[0]))
    kinds = _cli.split_list(args.sweep)
    out = RunDir(args.out, dict(settings_, sweep=kinds), tensorboard=False)
    results = analysis.analyse(model, split, labels, cfg["eval_batch"], out.path, kinds=kinds,
                               times=args.times, tols=args.tols, t1s=args.t1s,
                               t1_tol=args.t1_tol, repeats=args.repeats)
    out.summary(dict(settings=settings_, **results))
    print(f"analysis folder: {out.path}")
    return results


def table2(args, cfg):
    """``--table2``: Table 2 of both models at the config's widths and crop."""
    run = RunDir(args.path, dict(cfg, models=list(MODELS), table2=True), tensorboard=False)
    models = {m: (model_config(m, cfg, camvid.NUM_CLASSES), optimizer(m, cfg, 1000)[0])
              for m in MODELS}
    rows = measure_table2(models, cfg["crop"], args.table2_batch, args.memory_budget_gb,
                          timing=not args.no_timing, two_batches=args.two_batches)
    rows["setting"] = dict({k: cfg[k] for k in ("crop", "widths", "blocks", "baseline_modules")},
                           batch=args.table2_batch, budget_gb=args.memory_budget_gb,
                           device=str(jax.devices()[0]), **cfg["solve"])
    print(run.summary(rows))
    return rows


# ------------------------------------------------------------------------------ CLI


def parse_args(argv=None):
    p = _cli.ArgumentParser(
        prog="python -m experiments.segment", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and evaluate SegNode and the residual HRNet baseline (Khoshsirat & "
                    "Kambhamettu), measure their Table 2 costs (--table2), or analyse a trained "
                    "SegNode (--checkpoint RUN: Fig. 3-4 and the solve-time trade-off).",
        epilog="recipes:\n" + (__doc__ or "\n\n").split("\n\n")[1])
    _cli.add_run_flags(p, configs=configs.names("segment"), default_config=None,
                       describe=lambda n: configs.describe(n, "segment"), old_names=("--run-name",))
    a = p.add_argument
    a("--data-path", dest="data_root", help=argparse.SUPPRESS,
      action=_cli.renamed("--data-path", "--data-root"))  # the old name of --data-root
    a("--models", help="comma-separated subset of segnode,baseline (default: all of the run)")
    a("--cache-dir", help="where decoded CamVid arrays are cached")
    a("--chunk-epochs", type=int, help="train each model at most this many more epochs now")
    g = p.add_argument_group("settings of the config (not with --resume)")
    for flag in ("--epochs", "--batch-size", "--blocks", "--baseline-modules", "--field-modules",
                 "--num-steps", "--max-train-batches", "--eval-limit", "--seed"):
        g.add_argument(flag, type=int)
    for flag in ("--rtol", "--atol", "--lr-segnode", "--lr-baseline"):
        g.add_argument(flag, type=float)
    g.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--widths", type=int, nargs=4, metavar="C")
    g.add_argument("--solver", help="ODE solver (dopri5, tsit5, bosh3; euler, midpoint, rk4 "
                                    "with --num-steps)")
    g = p.add_argument_group("Table 2 (--table2: parameters, memory and times of both models)")
    g.add_argument("--table2", action="store_true")
    g.add_argument("--table2-batch", type=int, default=2)
    g.add_argument("--memory-budget-gb", type=float, default=32.0, help="paper: a 32 GB V100")
    g.add_argument("--no-timing", action="store_true", help="memory only")
    g.add_argument("--two-batches", action="store_true", help="memory from two batch sizes")
    g = p.add_argument_group("analysis of a trained SegNode (--checkpoint RUN)")
    g.add_argument("--checkpoint", metavar="RUN", help="a run folder with a segnode checkpoint")
    g.add_argument("--sweep", default=",".join(analysis.SWEEPS),
                   help="comma-separated subset of trajectory,tol,t1 (default: all)")
    g.add_argument("--times", help="trajectory times in [0, t1], increasing (default: 11)")
    g.add_argument("--tols", help="rtol = atol values of the tol sweep (default 1e-1 ... 1e-4)")
    g.add_argument("--t1s", help="end times of the t1 sweep (default 0.1 t1, ..., t1)")
    g.add_argument("--t1-tol", type=float, help="rtol = atol of the t1 sweep (default: trained)")
    g.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median)")
    g.add_argument("--split", default="val", choices=("val", "test"))
    g.add_argument("--out", help="analysis folder (default: RUN/analysis)")
    args = p.parse_args(argv)
    if args.list:
        configs.print_list("segment")
        raise SystemExit(0)
    check_args(p, args)
    return args


def read_saved(parser, flag: str, path: str) -> dict:
    """The settings of the segmentation run in `path` (`from_saved`), or exit status 2."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            saved = json.load(f)
    except FileNotFoundError:
        parser.error(f"argument {flag}: {path!r} holds no run (no config.json); pass the "
                     "--name of a run folder written by python -m experiments.segment.")
    except (OSError, ValueError) as e:
        parser.error(f"argument {flag}: {path}/config.json cannot be read ({e}); pass a run "
                     "folder written by python -m experiments.segment.")
    if not isinstance(saved, dict) or "models" not in saved:
        parser.error(f"argument {flag}: {path!r} is not a segmentation run (its config.json has "
                     "no 'models' entry; e.g. a classify run); pass a folder written by python "
                     "-m experiments.segment.")
    return from_saved(saved)


def _first_given(args, dests):
    return next((_cli.flag_name(d) for d in dests if getattr(args, d) not in (None, False)), None)


def _check_analysis_args(parser, args) -> None:
    flag = _first_given(args, ("config", "models", "name", "resume", "table2", "chunk_epochs")
                        + SETTING_FLAGS + SOLVE_FLAGS)
    if flag:
        parser.error(f"argument {flag}: not allowed with --checkpoint, which analyses a trained "
                     "run with its saved config; drop it.")
    read_saved(parser, "--checkpoint", args.checkpoint)
    _cli.check_list(parser, "sweep", args.sweep, choices=analysis.SWEEPS)
    for dest in ("tols", "t1s", "times"):
        vals = _cli.check_list(parser, dest, getattr(args, dest), kind=float, minimum=0.0)
        if vals is not None and dest != "times" and min(vals) <= 0:
            parser.error(f"argument {_cli.flag_name(dest)}: every value must be > 0, got "
                         f"{getattr(args, dest)!r}.")
        if vals is not None and dest == "times" and any(np.diff(vals) < 0):
            parser.error(f"argument --times: {args.times!r} must be increasing.")
        setattr(args, dest, vals)
    _cli.check_numbers(parser, args, positive=("repeats", "t1_tol"))
    args.out = args.out or os.path.join(args.checkpoint, "analysis")
    _cli.check_new_run_dir(parser, "--out", args.out)


def check_args(parser, args) -> None:
    """Refuse bad numbers, names, solver-step combinations, input paths and an occupied
    run folder (usage + one sentence, exit status 2) before any data is read."""
    from jaxode.ode import ADAPTIVE_SOLVERS, SOLVERS

    if args.checkpoint is not None:
        return _check_analysis_args(parser, args)
    flag = _first_given(args, ("times", "tols", "t1s", "t1_tol", "out"))
    if flag:
        parser.error(f"argument {flag}: is for the analysis of a trained run; add "
                     "--checkpoint RUN or drop the flag.")
    if args.config is not None and args.config not in CONFIGS:
        parser.error(f"argument --config: unknown config {args.config!r}; choose one of "
                     f"{', '.join(sorted(CONFIGS))} (see --list).")
    _cli.check_args(
        parser, args, positive=("epochs", "batch_size", "crop", "widths", "blocks",
                                "baseline_modules", "field_modules", "num_steps", "rtol",
                                "lr_segnode", "lr_baseline", "max_train_batches", "eval_limit",
                                "table2_batch", "memory_budget_gb", "chunk_epochs"),
        non_negative=("atol", "seed"), choices={"models": MODELS}, existing=("data_root",))
    path = args.path = _cli.run_path(
        args, f"segment-{args.config or 'smoke'}" + ("-table2" if args.table2 else ""))
    if args.resume:
        flag = "--table2" if args.table2 else _first_given(args, ("config",) + SETTING_FLAGS
                                                           + SOLVE_FLAGS)
        if flag:
            parser.error(f"argument {flag}: --resume continues the training run with its saved "
                         "config (config.json); drop the flag.")
        args.saved = read_saved(parser, "--resume", path)
        extra = [m for m in _cli.split_list(args.models or "") if m not in args.saved["models"]]
        if extra:
            parser.error(f"argument --models: {extra[0]!r} is not a model of the run {path!r} "
                         f"({','.join(args.saved['models'])}).")
        return
    solver = args.solver or settings(CONFIGS[args.config or "smoke"])["solve"]["solver"]
    if solver not in SOLVERS:
        parser.error(f"argument --solver: unknown solver {solver!r}; choose from "
                     f"{', '.join(SOLVERS)}.")
    if (args.num_steps is None) != (solver in ADAPTIVE_SOLVERS):
        flag = "--num-steps" if args.num_steps is not None else "--solver"
        parser.error(f"argument {flag}: solver {solver!r} " + (
            "chooses its own steps (drop --num-steps or pass --solver euler)."
            if solver in ADAPTIVE_SOLVERS else "is a fixed-step solver and needs --num-steps N."))
    if args.cache_dir is not None and os.path.isfile(args.cache_dir):
        parser.error(f"argument --cache-dir: {args.cache_dir!r} is a file; pass a folder.")
    _cli.check_new_run_dir(parser, "--name", path,
                           also="" if args.table2 else ", or pass --resume to continue it")


def main(argv=None):
    args = parse_args(argv)
    if args.checkpoint is not None:
        return analyse(args)
    path = args.path
    if args.resume:
        cfg = args.saved
        saved_models = cfg.pop("models")
        models = _cli.split_list(args.models) if args.models else saved_models
    else:
        cfg = resolve_config(args)
        saved_models = models = _cli.split_list(args.models or ",".join(MODELS))
    if args.table2:
        return table2(args, cfg)
    with _cli.data_errors_exit():
        splits, labels = load_data(cfg)
    n_train = len(splits["train"].images)
    if n_train < cfg["batch_size"]:  # before the run folder exists: a fixed re-run can use it
        _cli.stop(f"--batch-size {cfg['batch_size']} is larger than the training set "
                  f"({n_train} images); pass --batch-size {max(n_train, 1)} or less.")
    run = RunDir(path, None if args.resume else dict(cfg, models=models, table2=False),
                 tensorboard=False)
    key = jax.random.PRNGKey(cfg["seed"])
    summary, history = {}, []
    for m in models:
        summary[m], h = train_one(m, cfg, splits, labels, run, jax.random.fold_in(
            key, MODELS.index(m)), resume=args.resume, chunk_epochs=args.chunk_epochs,
            rows_before=history, progress=not args.no_progress)
        history += h
        run.write_history(history, final=True)  # once per model: draw the plots
    for m in saved_models:  # models finished in earlier calls
        final = os.path.join(run.path, f"{m}_final.json")
        if summary.get(m) is None and os.path.exists(final):
            with open(final) as f:
                summary[m] = json.load(f)
    unfinished = [m for m in saved_models if summary.get(m) is None]
    if unfinished:
        print(f"not finished: {', '.join(unfinished)}; continue with python -m "
              f"experiments.segment --name {os.path.basename(run.path)} --resume")
        return summary
    for m in saved_models:
        print(f"{m}: params {summary[m]['params']:,}, val mIoU {summary[m]['val_miou']:.4f}, "
              f"test mIoU {summary[m]['test_miou']:.4f}")
    print(f"run folder: {run.path} (summary: {run.summary(summary)})")
    return summary


if __name__ == "__main__":
    main()
