"""Train and evaluate an image classifier: ODE-Nets (Chen et al. 2018; Carrara et al.)
and their residual baselines.

The recipe: config -> data -> model -> train (jaxode.train.fit) -> evaluation (test
error, parameters, solver steps per image mean +- std from one adaptive solve per
image, Fig. 1 of Carrara et al.: the test images needing most and fewest steps, and
an inference-time sweep over tolerances) -> run folder ``runs/<name>/``.

Examples::

    python -m experiments.classify --config smoke-digits          # ~2 min on a CPU
    python -m experiments.classify --config chen-mnist-odenet --data-root DATA
    python -m experiments.classify --config carrara-cifar10-odeonly --epochs 1
    python -m experiments.classify --config smoke-digits --resume  # continue a run
    python -m experiments.classify --list                          # named configs

An earlier run is never overwritten: run again without ``--name``, and a run folder
that already holds a run is kept as it is and the new run goes to ``NAME-2``
(``NAME-3``, ...; the message says which); an explicit ``--name`` whose folder holds a
run is refused (exit status 2) with advice to pass another ``--name`` or ``--resume``.
Bad flag values are refused the same way, before any data is read (`check_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from experiments.classify_figures import plot_tolerance_sweep, steps_figure
from experiments.configs import describe, get_config, names, print_list
from experiments.configs.classify import ClassifyConfig
from jaxode import cli
from jaxode.cli import MIN_TOL, parse_milestones, parse_regularizers, parse_tolerances
from jaxode.train.sweeps import tolerance_sweep


# ------------------------------------------------------------------------- pieces


def load_data(cfg: ClassifyConfig):
    """Train and test `Dataset`s (`jaxode.data.load_classification`)."""
    from jaxode.data import load_classification

    return load_classification(cfg.dataset, root=cfg.data_root, train_limit=cfg.train_limit,
                               test_limit=cfg.test_limit)


def build_model(cfg: ClassifyConfig, num_classes: int, in_channels: int, key):
    """The model named by `cfg.model`, its ODE block solved as `cfg` says
    (`jaxode.models.build_classifier`)."""
    from jaxode.models import build_classifier

    return build_classifier(cfg.to_dict(), num_classes, in_channels, key)


def build_task(cfg: ClassifyConfig, train, facts: dict | None = None):
    """Cross-entropy with the config's augmentation and (if `cfg.normalize`) the
    training set's per-channel mean/std (`facts`: `jaxode.train.runs.training_set_facts`)."""
    from jaxode.train import ClassificationTask
    from jaxode.train.runs import training_set_facts

    facts = facts or training_set_facts(cfg.to_dict(), train)
    return ClassificationTask(crop_padding=cfg.crop_padding, flip=cfg.flip,
                              color_jitter=cfg.color_jitter, mean=facts["mean"],
                              std=facts["std"])


def train_config(cfg: ClassifyConfig):
    from jaxode.train import TrainConfig

    return TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule,
        milestones=cfg.milestones, gamma=cfg.gamma, plateau_metric=cfg.plateau_metric,
        plateau_patience=cfg.plateau_patience, ema_decay=cfg.ema_decay, phases=cfg.phases,
        euler_steps=cfg.euler_steps, seed=cfg.seed, data_parallel=cfg.data_parallel,
        max_train_batches=cfg.max_train_batches, regularizers=dict(cfg.regularizers),
        steer=cfg.steer,
    )


# --------------------------------------------------------------------------- main


def run(cfg: ClassifyConfig, *, resume: bool = False, progress: bool = True, log=print,
        data=None, claimed: bool = False) -> dict:
    """Train and evaluate per `cfg`; returns the summary (also in summary.json).

    `data`: ``(train, test)`` already loaded (default: `load_data(cfg)`).  `claimed`:
    the caller holds the run folder (`jaxode.train.rundir.claim_run_dir`); otherwise a
    fresh run claims it here and refuses one that holds an earlier run."""
    from jaxode.train import (RunDir, count_params, dataset_batches, evaluate, fit,
                              ode_blocks, with_batch_mode)
    from jaxode.train.parallel import data_mesh
    from jaxode.train.rundir import claim_run_dir
    from jaxode.train.runs import training_set_facts

    t_start = time.perf_counter()
    path = os.path.join(cfg.runs_dir, cfg.name)
    if not resume and not claimed and not claim_run_dir(path):
        raise FileExistsError(
            f"run folder {path!r} already holds an earlier run (or another run claimed it), "
            "which a fresh run would overwrite; pass resume=True to continue it or choose "
            "another cfg.name / cfg.runs_dir.")
    train, test = load_data(cfg) if data is None else data
    h, w, c = train.image_shape
    log(f"data: {train!r}, {test!r}")
    model = build_model(cfg, train.num_classes, c, jax.random.PRNGKey(cfg.seed))
    n_params = count_params(model)
    log(f"model: {cfg.model}  parameters: {n_params:,}")
    facts = training_set_facts(cfg.to_dict(), train)  # what `load_run` needs to rebuild it
    task = build_task(cfg, train, facts)
    tcfg = train_config(cfg).replace(progress=progress)
    run_dir = RunDir(os.path.join(cfg.runs_dir, cfg.name),
                     {"classify": cfg.to_dict(), "train": tcfg.to_dict(), "data": facts,
                      "params": n_params, "devices": [str(d) for d in jax.local_devices()]})
    log(f"run folder: {run_dir.path}")

    def train_batches(epoch):
        return dataset_batches(train, cfg.batch_size, seed=(cfg.seed, epoch), shuffle=True,
                               drop_last=True)

    def test_batches():
        return dataset_batches(test, cfg.eval_batch_size, shuffle=False)

    result = fit(model, task, train_batches, test_batches, config=tcfg, run=run_dir,
                 resume=resume, eval_batch_size=cfg.eval_batch_size, log=log)
    final = result.eval_model
    mesh = data_mesh(cfg.data_parallel)
    has_ode = bool(ode_blocks(final))
    summary: dict = {"config": cfg.name, "model": cfg.model, "dataset": cfg.dataset,
                     "params": n_params, "epochs": result.epochs_done,
                     "history": result.history}
    if has_ode and cfg.per_sample_eval:
        final = with_batch_mode(final, "per_sample")
    t_eval = time.perf_counter()
    per_image = evaluate(final, task, test_batches(), batch_size=cfg.eval_batch_size,
                         mesh=mesh, progress=progress, desc="final eval")
    acc = float(np.mean(per_image["acc"]))
    summary.update(test_accuracy=acc, test_error=1.0 - acc,
                   eval_batch_mode="per_sample" if has_ode and cfg.per_sample_eval else "joint",
                   final_eval_time_s=time.perf_counter() - t_eval)
    if has_ode:
        steps, nfe = per_image["steps"], per_image["nfe"]
        summary.update(steps_mean=float(steps.mean()), steps_std=float(steps.std()),
                       steps_min=int(steps.min()), steps_max=int(steps.max()),
                       nfe_mean=float(nfe.mean()), nfe_std=float(nfe.std()))
        if cfg.per_sample_eval and cfg.fig_examples > 0:
            fig_path = os.path.join(run_dir.path, "fig1_steps.png")
            summary["fig1_indices"] = steps_figure(test, steps, fig_path, cfg.fig_examples)
            summary["fig1"] = fig_path
        if cfg.tol_sweep:
            summary["tol_sweep"] = tolerance_sweep(
                final, task, test_batches, cfg.tol_sweep, batch_size=cfg.eval_batch_size,
                mesh=mesh)
            plot_tolerance_sweep(summary["tol_sweep"], os.path.join(run_dir.path,
                                                                    "tol_sweep.png"))
    summary["total_time_s"] = time.perf_counter() - t_start
    np.save(os.path.join(run_dir.path, "test_steps_per_image.npy"), per_image["steps"])
    run_dir.summary(summary)
    run_dir.close()
    _report(summary, run_dir.path, log)
    return summary


def _report(s: dict, path: str, log) -> None:
    log("-" * 60)
    log(f"test error: {100 * s['test_error']:.2f}%   (accuracy {100 * s['test_accuracy']:.2f}%)")
    log(f"parameters: {s['params']:,}")
    if "steps_mean" in s:
        log(f"solver steps per image ({s['eval_batch_mode']}): {s['steps_mean']:.2f} +- "
            f"{s['steps_std']:.2f} (min {s['steps_min']}, max {s['steps_max']}); "
            f"NFE {s['nfe_mean']:.1f} +- {s['nfe_std']:.1f}")
    for r in s.get("tol_sweep", []):
        if "error" in r:
            log(f"  tol {r['tol']:.0e}: failed ({r['error']})")
        else:
            log(f"  tol {r['tol']:.0e}: acc {100 * r['acc']:.2f}%  NFE {r['nfe_mean']:.1f}")
    log(f"time: {s['total_time_s']:.0f} s")
    log(f"run folder: {path}")


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m experiments.classify",
        description=(
            "Train an image classifier (ODE-Net or ResNet) and evaluate it: test error, "
            "parameter count, solver steps per image (mean +- std, one adaptive solve per "
            "image), Fig. 1 of Carrara et al. and an inference-time tolerance sweep. "
            "Start from a named --config; any other flag overrides one of its fields. "
            "Results go to RUNS_DIR/NAME/ (config.json, metrics.csv, PNG plots, "
            "summary.json, checkpoints)."),
        epilog="Configs: " + "; ".join(f"{n} ({describe(n)})" for n in names()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--config", default="smoke-digits", help="named configuration (default: smoke-digits)")
    a("--list", action="store_true", help="list the named configurations and exit")
    a("--model", help="carrara-resnet, carrara-resode, carrara-odeonly, chen-odenet, chen-resnet")
    a("--channels", type=int,
      help="width of the ODE block / residual blocks (GroupNorm with 32 groups: at most "
           "32 or a multiple of 32)")
    a("--dropout", type=float, help="dropout before the final linear layer, in [0, 1)")
    a("--dataset", help="digits, mnist, cifar10, folder:PATH or tfds:NAME")
    a("--data-root", help="where the dataset files are (default: $JAXODE_DATA)")
    a("--train-limit", type=int, help="use only the first N training images")
    a("--test-limit", type=int, help="use only the first N test images")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--eval-batch-size", type=int)
    a("--lr", type=float, help="initial learning rate (SGD with momentum)")
    a("--weight-decay", type=float)
    a("--lr-schedule", choices=("constant", "step", "cosine", "plateau"))
    a("--milestones", help="epochs of the step schedule, e.g. 60,100,140")
    a("--ema", type=float, dest="ema_decay", help="EMA decay of the weights used to evaluate")
    a("--solver", help="dopri5, tsit5, bosh3 (adaptive) or euler, midpoint, rk4")
    a("--tol", type=float, help="rtol = atol of the adaptive solver in training (>= 1e-6)")
    a("--max-steps", type=int, help="step budget of one ODE solve (default 4096)")
    a("--adjoint", choices=("backsolve", "checkpoint", "direct"),
      help="gradient of the ODE block: continuous adjoint (default) or backprop")
    a("--schedule", dest="phases",
      help="solver phases per epoch, e.g. euler:5,adjoint:10 (NODE-EW style)")
    a("--euler-steps", type=int, help="steps of the fixed-step phase/solver")
    a("--regularizers", "--reg", dest="regularizers",
      help="regularisers of the dynamics and their loss weights, e.g. kinetic=0.01,"
           "jacobian=0.01 (kinetic, jacobian, local_error; local_error needs --adjoint "
           "checkpoint or direct)")
    a("--steer", type=float,
      help="STEER: draw the ODE block's end time from U(t1 - B, t1 + B) at each training step")
    a("--tol-sweep", help="inference tolerances, e.g. 1e-1,1e-2,1e-3 ('' = none)")
    a("--no-per-sample", action="store_true",
      help="final evaluation with one joint solve per batch (faster, no per-image steps)")
    a("--max-train-batches", type=int, help="cap on batches per epoch (quick checks)")
    a("--seed", type=int)
    a("--name", "--run-name", dest="name",
      help="run folder name (default: the config's; if that folder already holds a run, "
           "it is kept and this run goes to NAME-2, NAME-3, ...).  A --name whose folder "
           "holds a run is refused: pass another --name, or --resume")
    a("--runs-dir", help="parent folder of run folders (default: runs)")
    a("--resume", action="store_true",
      help="continue the run in RUNS_DIR/NAME from its newest intact checkpoint (NAME: "
           "--name or the config's; a numbered run needs --name NAME-2 etc.).  Pass the "
           "run's original flags: only more --epochs, --tol-sweep, --no-per-sample and "
           "--no-progress may change; other differences are refused and listed")
    a("--no-data-parallel", action="store_true", help="use one device only")
    a("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> ClassifyConfig:
    cfg = get_config(args.config)
    changes = {}
    for f in dataclasses.fields(ClassifyConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in ("milestones", "tol_sweep"):
            changes[f.name] = v
    if args.milestones is not None:
        changes["milestones"] = parse_milestones(args.milestones)
    if args.regularizers is not None:
        changes["regularizers"] = parse_regularizers(args.regularizers)
    if args.tol_sweep is not None:
        changes["tol_sweep"] = parse_tolerances(args.tol_sweep)
    if args.no_per_sample:
        changes["per_sample_eval"] = False
    if args.no_data_parallel:
        changes["data_parallel"] = False
    return cfg.replace(**changes)


# Flags a --resume may change: more epochs, and what only the final evaluation uses.
# (--no-progress is not part of the run's config at all.)
SAFE_ON_RESUME = ("epochs", "tol_sweep", "per_sample_eval", "fig_examples")


def check_resume(parser, cfg: ClassifyConfig) -> None:
    """A --resume must find its run and use that run's settings (`SAFE_ON_RESUME`
    excepted; more epochs are allowed): `jaxode.cli.check_resume`."""
    cli.check_resume(parser, os.path.join(cfg.runs_dir, cfg.name), "classify", cfg.to_dict(),
                     free=[k for k in SAFE_ON_RESUME if k != "epochs"], may_grow=("epochs",),
                     may_change="more --epochs, --tol-sweep, --no-per-sample and --no-progress")


def check_args(parser, args) -> None:
    """Refuse bad flag values before any data is read or anything is compiled
    (`experiments._cli`: usage + one sentence, exit status 2).  Names that the pipeline
    already checks with a clear ValueError (--config, --model, --dataset) and the data
    limits' "0 examples" check stay where they are."""
    from jaxode.ode import SOLVERS
    from jaxode.train.phases import parse_schedule

    cli.check_args(parser, args,
                    positive=("channels", "epochs", "batch_size", "eval_batch_size", "lr",
                              "tol", "euler_steps", "max_train_batches", "max_steps"),
                    non_negative=("dropout", "weight_decay", "train_limit", "test_limit",
                                  "seed"),
                    parsers={"milestones": parse_milestones, "tol_sweep": parse_tolerances,
                             "regularizers": parse_regularizers})
    if args.steer is not None and not 0 < args.steer < float("inf"):
        parser.error(f"argument --steer: expected a positive number, got {args.steer!r}.")
    cli.check_widths(parser, "channels", args.channels)
    if args.dropout is not None and not args.dropout < 1:
        parser.error(f"argument --dropout: expected a probability in [0, 1), got "
                     f"{args.dropout!r}; pass e.g. 0.5.")
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        parser.error(f"argument --ema: expected a decay in (0, 1), got {args.ema_decay!r}; "
                     "pass e.g. 0.999.")
    if args.phases is not None:
        try:
            parse_schedule(args.phases)
        except ValueError as e:
            parser.error(f"argument --schedule: {e}")
    if args.tol is not None and args.tol < MIN_TOL:
        parser.error(f"argument --tol: {args.tol!r} is below {MIN_TOL:g}, which float32 "
                     f"solves cannot meet; pass e.g. --tol 1e-3.")
    from jaxode.models import MODELS

    for flag, value, allowed in (("--solver", args.solver, SOLVERS), ("--model", args.model, MODELS),
                                 ("--config", args.config, names())):
        if value is not None and value not in allowed:
            parser.error(f"argument {flag}: unknown {flag[2:]} {value!r}; choose one of "
                         f"{', '.join(allowed)}{' (see --list)' if flag == '--config' else ''}.")
    if args.dataset is not None:
        try:
            cli.dataset_spec(args.dataset)
        except ValueError as e:
            parser.error(f"argument --dataset: {e}")
    for dest in ("data_root",):
        cli.check_existing(parser, dest, getattr(args, dest))


def check_config(parser, cfg: ClassifyConfig) -> None:
    """Checks of the resolved config (a --config with overriding flags): the config's
    model settings must suit the chosen model (smoke-digits' 3x3 stem is made for the
    ODE nets; carrara-resnet has no stem_kernel)."""
    import inspect

    from jaxode.models import MODELS

    accepted = inspect.signature(MODELS[cfg.model]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return
    extra = [k for k, _ in cfg.model_kwargs if k not in accepted]
    if extra:
        suits = [m for m in MODELS
                 if all(k in inspect.signature(MODELS[m]).parameters for k, _ in cfg.model_kwargs)]
        models = " or ".join(suits) or "of the config"
        parser.error(f"argument --model: config {cfg.name!r} sets {', '.join(extra)}, which "
                     f"{cfg.model} does not take; use --model {models} with this config, or "
                     "a --config made for that model (see --list).")


def choose_run_folder(parser, args, cfg: ClassifyConfig, log=print):
    """The run folder of this command line, claimed before any data is read: on
    ``--resume`` RUNS_DIR/NAME as given; otherwise `jaxode.cli.claim_run_folder` (an
    explicit ``--name`` must be new, a default name that holds a run moves on to
    NAME-2, ...).  Returns ``(cfg with the chosen name, the claimed folder or None)``;
    `main` releases the folder if the run stops before writing into it."""
    path = os.path.join(cfg.runs_dir, cfg.name)
    if args.resume:
        return cfg, None
    created = cli.claim_run_folder(parser, path, explicit=args.name is not None, log=log)
    return cfg.replace(name=cfg.name + created[len(path):]), created


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print_list("classify")
        return 0
    check_args(parser, args)
    cfg = config_from_args(args)
    if args.resume:
        check_resume(parser, cfg)
    check_config(parser, cfg)
    cfg, created = choose_run_folder(parser, args, cfg)
    from jaxode.train.rundir import release_run_dir

    try:
        with cli.data_errors_exit():
            data = load_data(cfg)
        run(cfg, resume=args.resume, progress=not args.no_progress, data=data, claimed=True)
    except BaseException:
        if created is not None:
            release_run_dir(created)  # only if the run wrote nothing there
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
