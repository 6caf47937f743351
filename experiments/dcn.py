"""Deep Continuous Networks (Tomen, Pintea & van Gemert, ICML 2021): experiment recipes.

Training subcommands (named configs of `experiments.configs.dcn`, ``--list``):
``classify`` (CIFAR-10, Tables 1, 5; learned sigma, Fig. 3a, 3b), ``small-data`` (K
images per class, several seeds, Table 2) and ``reconstruct`` (the A.4 encoder-decoder,
Table 3).  Analyses: ``small-data-table`` (Table 2 from finished runs) and the probes
``contrast`` (Fig. 5) and ``completion`` (Fig. 3c, 4) in `experiments.dcn_figures`.
Example: ``python -m experiments.dcn classify --model dcn_ode --config smoke``.

Training goes through `jaxode.train.fit`; the default ``--support separable`` applies the
N-jet filters as 1-D passes whose shapes do not depend on the learned sigma (exact, no
recompilation; the other strategies: `docs/dcn_kernel_size.md`).  A layer whose
r(sigma) outgrows its grid is listed in ``summary.json`` (``support_overflow``).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments import dcn_figures
from experiments.configs import describe, get_config, names, print_list
from jaxode import cli

#: the config group (`experiments.configs.dcn`) of each training subcommand
GROUPS = {"classify": "dcn", "small-data": "dcn-small-data", "reconstruct": "dcn-reconstruct"}
OVERRIDES = ("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol", "support",
             "solver", "num_steps", "per_class", "seeds", "epoch_factor")


def _resolve(args) -> dict:
    """The named config with the flags given on the command line; lr scaled by batch/128."""
    cfg = get_config(args.config, GROUPS[args.cmd])
    cfg.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None})
    if args.widths:
        cfg["widths"] = tuple(int(w) for w in args.widths.split(","))
    cfg["lr"] = cfg["lr"] * cfg["batch_size"] / 128  # as in the reference code
    return cfg


def _build(name, cfg, key, args):
    from jaxode.models.dcn import build_model, with_support
    from jaxode.ode import SolveConfig

    model = build_model(name, key=key, widths=cfg["widths"],
                        config=SolveConfig(solver=cfg.get("solver") or "dopri5", rtol=cfg["tol"],
                                           atol=cfg["tol"], num_steps=cfg.get("num_steps")))
    return with_support(model, cfg["support"], args.max_half_width, args.margin)


def _fit(model, task, cfg, train, test, run_path, seed, args, about: dict):
    """`jaxode.train.fit` with the paper's SGD into the run folder `run_path`, whose
    config.json holds `about`, `cfg` and the trainer's settings."""
    from jaxode.models.dcn_runs import paper_train_config
    from jaxode.train import RunDir, dataset_batches, fit

    tcfg = paper_train_config(cfg, seed=seed, progress=not args.no_progress,
                              eval_every=args.eval_every)
    run = RunDir(run_path, {**about, "seed": seed, **cfg, "train": tcfg.to_dict()})
    bs = cfg["batch_size"]
    return fit(model, task,
               train_batches=lambda e: dataset_batches(train, bs, seed=(seed, e), shuffle=True,
                                                       drop_last=True),
               eval_batches=lambda: dataset_batches(test, bs, shuffle=False),
               config=tcfg, run=run, eval_batch_size=bs, resume=args.resume)


def _train(name, cfg, train, test, run_path, seed, args) -> dict:
    """Train classifier `name` on `train`; write summary.json and the learned scales."""
    import jax

    from jaxode.models.dcn import learned_scales
    from jaxode.models.dcn_plots import plot_scales
    from jaxode.models.dcn_runs import write_summary
    from jaxode.train import ClassificationTask

    model = _build(name, cfg, jax.random.PRNGKey(seed), args)
    task = ClassificationTask(crop_padding=4, flip=True)  # no input normalisation
    about = {"model": name, "max_half_width": args.max_half_width, "margin": args.margin}
    result = _fit(model, task, cfg, train, test, run_path, seed, args, about)
    accs = [r["eval_acc"] for r in result.history if r.get("eval_acc") is not None]
    scales = learned_scales(result.model)
    summary = write_summary(run_path, result, {
        "model": name, "seed": seed, "final_eval_acc": accs[-1] if accs else None,
        "best_eval_acc": max(accs) if accs else None,
        "final_eval_nfe": result.history[-1].get("eval_nfe"), "epochs": cfg["epochs"],
        "learned_sigma": scales}, train, test)
    plot_scales(scales, os.path.join(run_path, "learned"))
    return summary


def _data(args, cfg, seeds=None):
    """``([train], test)`` of CIFAR-10 limited as `cfg` says -- or, given `seeds`, one
    training set of ``cfg["per_class"]`` images per class for each seed -- each refused
    (exit 2) when a DCN classifier cannot train on it, before a run folder exists."""
    from jaxode.data.load import load_dataset
    from jaxode.models.dcn_runs import check_training_data

    with cli.data_errors_exit():
        train, test = (load_dataset("cifar10", split, root=args.data_root)
                       for split in ("train", "test"))
        test = test.sample(cfg["test_limit"])
        trains = ([train.sample(cfg["train_limit"])] if seeds is None
                  else [train.per_class(cfg["per_class"], seed) for seed in seeds])
        for train in trains:
            check_training_data(train, test, cfg["batch_size"])
    return trains, test


def cmd_classify(args):
    cfg = _resolve(args)
    (train,), test = _data(args, cfg)
    s = _train(args.model, cfg, train, test, _run_paths(args)[0], args.seed, args)
    print(json.dumps({k: v for k, v in s.items() if k != "learned_sigma"}, indent=2))


def cmd_small_data(args):
    cfg = _resolve(args)
    cfg["epochs"] *= cfg["epoch_factor"]
    cfg["milestones"] = tuple(m * cfg["epoch_factor"] for m in cfg["milestones"])
    seeds = _seeds(cfg)
    subsets, test = _data(args, cfg, seeds)
    accs = np.array([_train(args.model, cfg, train, test, path, seed, args)["best_eval_acc"]
                     for seed, path, train in zip(seeds, _run_paths(args), subsets)], float)
    print(json.dumps({"model": args.model, "per_class": cfg["per_class"], "epochs": cfg["epochs"],
                      "best_eval_acc_mean": float(accs.mean()),
                      "best_eval_acc_std": float(accs.std()), "seeds": cfg["seeds"]}, indent=2))


def cmd_small_data_table(args):
    """Table 2 (mean +- std over seeds per model and size) from finished small-data runs."""
    from jaxode.models.dcn_analysis import small_data_markdown, small_data_report

    out = args.out or os.path.join(args.runs, "table2")
    try:
        rows, unfinished = small_data_report(args.runs, out)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for run in unfinished:
        print(f"skipped (not finished): {run}")
    print(small_data_markdown(rows))


def cmd_reconstruct(args):
    """Table 3: train the A.4 encoder-decoder (`DCNAutoencoder`) with MSE against the
    centre 28x28 crop; report test MSE; draw example reconstructions."""
    import jax

    from jaxode.models.dcn import build_autoencoder, with_support
    from jaxode.models.dcn_plots import plot_reconstructions
    from jaxode.models.dcn_probes import ReconstructionTask
    from jaxode.models.dcn_runs import write_summary
    from jaxode.ode import SolveConfig
    from jaxode.train import load_run

    cfg = _resolve(args)
    (train,), test = _data(args, cfg)
    if args.checkpoint:  # the encoder's solver as trained: rtol = atol = its tol
        with cli.data_errors_exit():
            enc = load_run(args.checkpoint)
        encoder, name = enc.model, enc.config["model"]
        cfg["widths"], cfg["tol"] = enc.config["widths"], enc.config["tol"]
    else:
        encoder, name = _build(args.model, cfg, jax.random.PRNGKey(args.seed), args), args.model
    ae = build_autoencoder(encoder, key=jax.random.PRNGKey(args.seed + 1),
                           config=SolveConfig(rtol=cfg["tol"], atol=cfg["tol"]))
    ae = with_support(ae, cfg["support"], args.max_half_width, args.margin)
    run_path = _run_paths(args)[0]
    result = _fit(ae, ReconstructionTask(), cfg, train, test, run_path, args.seed, args,
                  {"model": name, "encoder_checkpoint": args.checkpoint})
    last = result.history[-1]  # the final epoch's evaluation on the whole test set
    summary = write_summary(run_path, result, {
        "model": name, "encoder_checkpoint": args.checkpoint, "epochs": cfg["epochs"],
        "test_mse": last["eval_loss"], "test_nfe": last.get("eval_nfe")}, train, test)
    plot_reconstructions(result.model, test, os.path.join(run_path, "reconstructions.png"), name)
    print(json.dumps(summary, indent=2))


def _seeds(cfg) -> list[int]:
    return [int(s) for s in cli.split_list(str(cfg["seeds"]))]


def _run_paths(args) -> list[str]:
    """The run folders of a training subcommand: RUNS_DIR/NAME (`jaxode.cli.run_path`);
    for small-data, one sub-folder per seed of RUNS_DIR/NAME (default: of RUNS_DIR)."""
    if args.cmd == "classify":
        return [cli.run_path(args, f"dcn-{args.model}-{args.config}-s{args.seed}")]
    if args.cmd == "reconstruct":
        return [cli.run_path(args, f"dcn-reconstruct-{args.model}-{args.config}")]
    cfg = _resolve(args)
    parent = cli.run_path(args, "") if args.name else args.runs_dir
    return [os.path.join(parent, f"dcn-small-{args.model}-{cfg['per_class']}-s{seed}")
            for seed in _seeds(cfg)]


def check_args(parser, args) -> None:
    """Refuse bad numbers, lists, paths and occupied run folders of any subcommand
    (usage + one sentence, exit status 2), before data or JAX."""
    if args.cmd == "small-data-table":
        if not os.path.isdir(args.runs):
            parser.error(f"argument runs: {args.runs!r} is not a folder; pass the --name "
                         "folder of your small-data runs.")
        out = args.out or os.path.join(args.runs, "table2")
        for ext in (".md", ".json", ".png"):
            cli.check_new_file(parser, "--out", out + ext)
        return
    if args.cmd in ("contrast", "completion"):
        return dcn_figures.check_args(parser, args)
    if args.config not in names(GROUPS[args.cmd]):
        parser.error(f"argument --config: unknown config {args.config!r}; choose one of "
                     f"{', '.join(names(GROUPS[args.cmd]))} (see --list).")
    if args.widths is not None:
        cli.check_widths(parser, "widths",
                         cli.check_list(parser, "widths", args.widths, kind=int, minimum=1))
    cli.check_args(parser, args,
                   positive=("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol",
                             "max_half_width", "per_class", "epoch_factor", "eval_every"),
                   non_negative=("margin", "seed"), existing=("data_root",))
    if (args.solver in ("euler", "rk4")) != (args.num_steps is not None):
        parser.error("arguments --solver/--num-steps: a fixed-step --solver (euler, rk4) "
                     "needs --num-steps N, and --num-steps needs one of them.")
    if args.num_steps is not None and args.num_steps < 1:
        parser.error(f"argument --num-steps: must be >= 1, got {args.num_steps}.")
    if args.cmd == "reconstruct":
        cli.check_existing(parser, "checkpoint", args.checkpoint, "run folder")
    if args.cmd == "small-data" and args.seeds is not None:
        cli.check_list(parser, "seeds", args.seeds, kind=int, minimum=0)
    for path in _run_paths(args):
        if not args.resume:
            cli.check_new_run_dir(parser, "--name", path, also=", or pass --resume to continue it")
        elif os.path.isfile(path):
            parser.error(f"argument --name: {path!r} is a file; pass the run folder to continue.")


def _training_parser(sub, cmd, help, description=None):
    """A training subcommand: the shared run flags (`jaxode.cli.add_run_flags`; ``--run``
    is a deprecated alias of ``--name``) and the DCN model and training overrides."""
    from jaxode.models.dcn import MODEL_NAMES

    group = GROUPS[cmd]
    q = sub.add_parser(cmd, help=help, description=description)
    cli.add_run_flags(q, configs=names(group), default_config="smoke",
                      describe=lambda n: describe(n, group), old_names=("--run",))
    q.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
    q.add_argument("--seed", type=int, default=0)
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--train-limit", int),
                       ("--test-limit", int), ("--tol", float)):
        q.add_argument(flag, type=kind, help="overrides the config's value")
    q.add_argument("--lr", type=float, help="lr at batch 128 (scaled by batch/128)")
    q.add_argument("--widths", help="channels of the three stages, e.g. 32,64,128")
    q.add_argument("--support", choices=("separable", "switch", "max", "margin"),
                   help="SRF kernel support (default separable; docs/dcn_kernel_size.md)")
    q.add_argument("--max-half-width", type=int, default=8,
                   help="largest kernel half-width R of the switch/max support (17x17)")
    q.add_argument("--margin", type=int, default=2)
    q.add_argument("--solver", choices=("dopri5", "euler", "rk4"),
                   help="ODE solver (default dopri5; euler / rk4 need --num-steps)")
    q.add_argument("--num-steps", type=int, help="steps of a fixed-step --solver per block")
    q.add_argument("--eval-every", type=int, default=1,
                   help="evaluate on the test set every N epochs (and after the last)")
    return q


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--list" in argv:
        for group in GROUPS.values():
            print(f"[{group}]")
            print_list(group)
        return 0
    p = cli.ArgumentParser(prog="python -m experiments.dcn", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    _training_parser(sub, "classify", "CIFAR-10 classification (Tables 1, 5; Fig. 3)"
                     ).set_defaults(fn=cmd_classify)
    q = _training_parser(sub, "small-data", "small-data regime (Table 2)")
    q.add_argument("--per-class", type=int, help="training images per class")
    q.add_argument("--seeds", help="comma list of seeds, one run each")
    q.add_argument("--epoch-factor", type=int,
                   help="multiply epochs and milestones (A.2; e.g. 10 for 52 images/class)")
    q.set_defaults(fn=cmd_small_data)
    q = sub.add_parser("small-data-table",
                       help="Table 2 from finished small-data runs (mean +- std over seeds)")
    q.add_argument("runs", help="the folder of the small-data runs (one sub-folder per run)")
    q.add_argument("--out", help="output path without extension (default RUNS/table2): "
                                 ".md, .json, .png")
    q.set_defaults(fn=cmd_small_data_table)
    dcn_figures.add_commands(sub)
    q = _training_parser(sub, "reconstruct", "CIFAR-10 reconstruction with MSE (Table 3)",
                         "Train the A.4 encoder-decoder (DCNAutoencoder) with MSE against the "
                         "centre 28x28 crop; the encoder is a trained classifier "
                         "(--checkpoint) or, without it, a fresh --model.")
    q.add_argument("--checkpoint", help="run folder of a trained classifier to use as the encoder")
    q.set_defaults(fn=cmd_reconstruct)
    args = p.parse_args(argv)
    check_args(p, args)
    args.fn(args)


if __name__ == "__main__":
    main()
