"""Train and evaluate an image classifier: ODE-Nets (Chen et al. 2018; Carrara et al.)
and their residual baselines.  The recipe: config -> data -> model -> `jaxode.train.fit`
-> `jaxode.train.steps.evaluate_steps` (test error, solver steps per image, Carrara et
al. Fig. 1, inference tolerance sweep) -> run folder ``runs/<name>/``.

Examples::

    python -m experiments.classify --config smoke-digits          # ~4 min on a 2-core CPU
    python -m experiments.classify --config chen-mnist-odenet --data-root DATA
    python -m experiments.classify --config smoke-digits --resume  # continue a run
    python -m experiments.classify --list                          # named configs

An earlier run is never overwritten: a default run folder that holds a run is kept and
the new run goes to ``NAME-2`` (``NAME-3``, ...); an explicit ``--name`` whose folder
holds a run is refused (exit status 2), as are bad flag values, before any data is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from experiments.configs import describe, get_config, names, print_list
from experiments.configs.classify import ClassifyConfig
from jaxode import cli
from jaxode.cli import MIN_TOL, parse_milestones, parse_regularizers, parse_tolerances
from jaxode.ode import REGULARIZERS
from jaxode.train.steps import evaluate_steps, sweep_lines


def load_data(cfg: ClassifyConfig):
    """Train and test `Dataset`s (`jaxode.data.load_classification`)."""
    from jaxode.data import load_classification

    return load_classification(cfg.dataset, root=cfg.data_root, train_limit=cfg.train_limit,
                               test_limit=cfg.test_limit)


def run(cfg: ClassifyConfig, *, resume: bool = False, progress: bool = True, log=print,
        data=None, claimed: bool = False) -> dict:
    """Train and evaluate per `cfg`; returns the summary (also in summary.json).

    `data`: ``(train, test)`` already loaded (default: `load_data(cfg)`).  `claimed`:
    the caller holds the run folder (`jaxode.train.rundir.claim_run_dir`); otherwise a
    fresh run claims it here and refuses one that holds an earlier run."""
    from jaxode.train import RunDir, count_params, dataset_batches, fit
    from jaxode.train.parallel import data_mesh
    from jaxode.train.phases import seconds_per_epoch
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
    log(f"data: {train!r}, {test!r}")
    in_channels = train.image_shape[-1]
    model = cfg.build_model(train.num_classes, in_channels, jax.random.PRNGKey(cfg.seed))
    n_params = count_params(model)
    log(f"model: {cfg.model}  parameters: {n_params:,}")
    facts = training_set_facts(cfg.to_dict(), train)  # what `load_run` needs to rebuild it
    task = cfg.task(facts["mean"], facts["std"])
    tcfg = cfg.train_config().replace(progress=progress)
    run_dir = RunDir(path,
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
    evaluation, per_image = evaluate_steps(
        result.eval_model, task, test, run_dir.path, batch_size=cfg.eval_batch_size,
        per_sample=cfg.per_sample_eval, examples=cfg.fig_examples, tols=cfg.tol_sweep,
        mesh=data_mesh(cfg.data_parallel), progress=progress)
    np.save(os.path.join(run_dir.path, "test_steps_per_image.npy"), per_image["steps"])
    summary = {"config": cfg.name, "model": cfg.model, "dataset": cfg.dataset,
               "params": n_params, "epochs": result.epochs_done, "history": result.history,
               "final_eval_time_s": evaluation.pop("eval_time_s"), **evaluation,
               "seconds_per_epoch": seconds_per_epoch(result.history)}
    summary["total_time_s"] = time.perf_counter() - t_start
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
    for phase, t in s.get("seconds_per_epoch", {}).items():
        log(f"training s/epoch, {phase}: {t['epochs']} epochs, first {t['first (incl. compile)']:.0f}"
            f" (incl. compile), last {t['last']:.0f}")
    for line in sweep_lines(s.get("tol_sweep", [])):
        log(line)
    log(f"time: {s['total_time_s']:.0f} s")
    log(f"run folder: {path}")


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m experiments.classify",
        description=(
            "Train an image classifier (ODE-Net or ResNet) and evaluate it: test error, "
            "parameter count, solver steps per image (mean +- std, one adaptive solve per "
            "image), Fig. 1 of Carrara et al. and an inference-time tolerance sweep. "
            "Start from a named --config; any other flag overrides one of its fields. "
            "Results go to RUNS_DIR/NAME/ (config.json, metrics.csv, PNG plots, "
            "summary.json, checkpoints). A --resume must repeat the run's flags: only more "
            "--epochs, --tol-sweep, --no-per-sample and --no-progress may change."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_flags(p, configs=names(), default_config="smoke-digits", describe=describe,
                      old_names=("--run-name",))
    a = p.add_argument
    a("--model", help="carrara-resnet, carrara-resode, carrara-odeonly, chen-odenet, chen-resnet, "
                      "node-ew")
    a("--channels", type=int, help="width of the ODE block / residual blocks (GroupNorm with "
                                   "32 groups: at most 32 or a multiple of 32)")
    a("--dropout", type=float, help="dropout before the final linear layer, in [0, 1)")
    a("--dataset", help="digits, mnist, cifar10, folder:PATH or tfds:NAME")
    a("--train-limit", type=int, help="use only the first N training images")
    a("--test-limit", type=int, help="use only the first N test images")
    for flag in ("--epochs", "--batch-size", "--eval-batch-size"):
        a(flag, type=int)
    a("--lr", type=float, help="initial learning rate (SGD with momentum)")
    a("--weight-decay", type=float)
    a("--lr-schedule", choices=("constant", "step", "cosine", "plateau"))
    a("--milestones", help="epochs of the step schedule, e.g. 60,100,140")
    a("--ema", type=float, dest="ema_decay", help="EMA decay of the weights used to evaluate")
    a("--g-lr-scale", type=float,
      help="NODE-EW: learning-rate factor of theta_1, the weight dynamics' parameters")
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
           f"jacobian=0.01 ({', '.join(REGULARIZERS)}; local_error needs --adjoint "
           "checkpoint or direct)")
    a("--taylor-order", type=int,
      help="K of the taylor regulariser int ||d^K z/dt^K||^2 dt (TayNODE; default 2)")
    a("--steer", type=float,
      help="STEER: draw the ODE block's end time from U(t1 - B, t1 + B) at each training step")
    a("--tol-sweep", help="inference tolerances, e.g. 1e-1,1e-2,1e-3 ('' = none)")
    a("--no-per-sample", action="store_true",
      help="final evaluation with one joint solve per batch (faster, no per-image steps)")
    a("--max-train-batches", type=int, help="cap on batches per epoch (quick checks)")
    a("--seed", type=int)
    a("--no-data-parallel", action="store_true", help="use one device only")
    return p


# Flags given as text and the parser of each (its ValueError is the flag's error).
PARSED = {"milestones": parse_milestones, "regularizers": parse_regularizers,
          "tol_sweep": parse_tolerances}


def config_from_args(args) -> ClassifyConfig:
    """The named --config with every flag given on the command line as an override."""
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifyConfig)
               if getattr(args, f.name, None) is not None}
    changes.update({k: parse(changes[k]) for k, parse in PARSED.items() if k in changes})
    if args.no_per_sample:
        changes["per_sample_eval"] = False
    if args.no_data_parallel:
        changes["data_parallel"] = False
    return get_config(args.config).replace(**changes)


# Settings a --resume may change: more epochs, and what only the final evaluation uses.
SAFE_ON_RESUME = ("epochs", "tol_sweep", "per_sample_eval", "fig_examples")


def check_resume(parser, cfg: ClassifyConfig) -> None:
    """A --resume must find its run and use that run's settings (`SAFE_ON_RESUME`
    excepted; more epochs are allowed): `jaxode.cli.check_resume`."""
    cli.check_resume(parser, os.path.join(cfg.runs_dir, cfg.name), "classify", cfg.to_dict(),
                     free=[k for k in SAFE_ON_RESUME if k != "epochs"], may_grow=("epochs",),
                     may_change="more --epochs, --tol-sweep, --no-per-sample and --no-progress",
                     defaults=ClassifyConfig().to_dict())


def check_args(parser, args) -> None:
    """Refuse bad flag values before any data is read or anything is compiled
    (`jaxode.cli.check_args`: usage + one sentence, exit status 2)."""
    from jaxode.models import MODELS
    from jaxode.ode import SOLVERS
    from jaxode.train.phases import parse_schedule

    cli.check_args(parser, args,
                   positive=("channels", "epochs", "batch_size", "eval_batch_size", "lr", "tol",
                             "euler_steps", "max_train_batches", "max_steps", "steer",
                             "taylor_order"),
                   non_negative=("dropout", "weight_decay", "g_lr_scale", "train_limit",
                                 "test_limit", "seed"),
                   parsers={**PARSED, "dataset": cli.dataset_spec}, existing=("data_root",))
    if args.phases is not None:
        try:
            parse_schedule(args.phases)
        except ValueError as e:
            parser.error(f"argument --schedule: {e}")
    cli.check_widths(parser, "channels", args.channels)
    for flag, value, ok, advice in (
            ("--dropout", args.dropout, lambda v: v < 1, "a probability in [0, 1), e.g. 0.5"),
            ("--ema", args.ema_decay, lambda v: 0 < v < 1, "a decay in (0, 1), e.g. 0.999"),
            ("--tol", args.tol, lambda v: v >= MIN_TOL,
             f"at least {MIN_TOL:g} (float32 solves cannot meet less), e.g. 1e-3")):
        if value is not None and not ok(value):
            parser.error(f"argument {flag}: {value!r} is out of range; pass {advice}.")
    for flag, value, allowed in (("--solver", args.solver, SOLVERS),
                                 ("--model", args.model, MODELS),
                                 ("--config", args.config, names())):
        if value is not None and value not in allowed:
            parser.error(f"argument {flag}: unknown {flag[2:]} {value!r}; choose one of "
                         f"{', '.join(allowed)}{' (see --list)' if flag == '--config' else ''}.")


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
    try:
        cfg.check_model()
    except ValueError as e:
        parser.error(f"argument --model: {e}")
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
