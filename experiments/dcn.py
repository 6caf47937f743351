"""Deep Continuous Networks (Tomen, Pintea & van Gemert, ICML 2021): experiment recipes.

Subcommands (each has ``--config smoke`` for a CPU check and ``--config paper``):

- ``classify``: CIFAR-10 classification (Tables 1 and 5) with any model of
  `jaxode.models.dcn.MODEL_NAMES`; writes the learned sigma of every SRF layer
  (Fig. 3a) and, for ``dcn_sigma_ji``, the sigma^ji histograms per block (Fig. 3b).
- ``small-data``: the small-data regime (Table 2): K images per class drawn with
  replacement from each class, several seeds, mean +- std; epochs and learning-rate
  milestones multiplied by a factor (supplement A.2).
- ``small-data-table``: Table 2 (mean +- std over seeds) from finished small-data runs.
- ``contrast``: accuracy and forward NFE (per ODE block, total) of trained runs under
  input contrast c, naive and with the integration time scaled by c (Fig. 5).
- ``completion``: accuracy with a zero centre square of growing size (Fig. 3c) and the
  intact-vs-masked feature difference D(t) inside ODE block 1 (eq. 4, Fig. 4).
- ``reconstruct``: the A.4 encoder-decoder trained with MSE on CIFAR-10 (Table 3).

The settings are the named configs of `experiments.configs.dcn` (``--list``); the
probes' math is in `jaxode.models.dcn_probes`, their figures in
`experiments.dcn_figures`; the cost of the kernel-support strategies is measured by
``python -m benchmarks.dcn_kernel_cost``.

Example::

    python -m experiments.dcn classify --model dcn_ode --config smoke --data-root ../shared/data
    python -m experiments.dcn classify --model dcn_ode --config paper
    python -m experiments.dcn small-data --model dcn_ode --per-class 20 --seeds 0,1,2
    python -m experiments.dcn contrast --checkpoint runs/dcn-dcn_ode-paper-s0 --out runs/contrast
    python -m experiments.dcn completion --checkpoint runs/dcn-dcn_ode-paper-s0 --out runs/compl
    python -m experiments.dcn reconstruct --checkpoint runs/dcn-dcn_ode-paper-s0 --config paper

Training uses the generic trainer (`jaxode.train.fit`), whose jitted step needs fixed
shapes while sigma is learned.  The default ``--support separable`` applies the N-jet
filters as 1-D passes along the width and height (the basis is separable), whose
shapes do not depend on sigma: exactly the reference's filters at every step, no
recompilation, and the fastest strategy (`docs/dcn_kernel_size.md`).  The others:
``switch`` (the exact-size kernel chosen from sigma at run time; XLA's CPU compile of
the branches is slow), ``max`` (one masked 2R+1 grid) and ``margin`` (per-layer masked
grid r(sigma_init) + m, exact while sigma grows by less than m/2).
A layer whose r(sigma) outgrows its grid is truncated there and listed in
``summary.json`` (``support_overflow``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from experiments import dcn_figures
from experiments.configs import get_config, names, print_list
from jaxode import cli


def _resolve(args) -> dict:
    cfg = get_config(args.config, "dcn")
    for k in ("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol", "support",
              "solver", "num_steps"):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    if getattr(args, "widths", None):
        cfg["widths"] = tuple(int(w) for w in args.widths.split(","))
    # lr scales with the batch (0.1 x batch / 128), as in the reference code
    cfg["lr"] = cfg["lr"] * cfg["batch_size"] / 128
    return cfg


def _build(name, cfg, key, max_half_width, support="separable", margin=1):
    from jaxode.models.dcn import build_model, with_support
    from jaxode.ode import SolveConfig

    solver = cfg.get("solver", "dopri5")  # a fixed-step solver (--num-steps) for quick checks
    model = build_model(name, key=key, widths=cfg["widths"],
                        config=SolveConfig(solver=solver, rtol=cfg["tol"], atol=cfg["tol"],
                                           num_steps=cfg.get("num_steps")))
    return with_support(model, support, max_half_width, margin)


def _train(name, cfg, train_set, test_set, run_path, seed, max_half_width, milestones,
           epochs, progress=True, support="separable", margin=1, eval_every=1, resume=False):
    import jax

    from jaxode.models.dcn import learned_scales
    from jaxode.nn.srf import support_overflow
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit
    from jaxode.train.utils import count_params

    model = _build(name, cfg, jax.random.PRNGKey(seed), max_half_width, support, margin)
    tcfg = TrainConfig(epochs=epochs, batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=0.9, weight_decay=0.0,
                       lr_schedule="step" if milestones else "constant",
                       milestones=tuple(milestones), gamma=0.1, seed=seed, progress=progress,
                       data_parallel=False, eval_every=eval_every)
    task = ClassificationTask(crop_padding=4, flip=True)  # no input normalisation
    run = RunDir(run_path, {"model": name, "seed": seed, "max_half_width": max_half_width,
                            "support": support, "margin": margin,
                            **{k: v for k, v in cfg.items()}, "train": dataclasses.asdict(tcfg)})
    bs = cfg["batch_size"]
    result = fit(
        model, task,
        train_batches=lambda e: dataset_batches(train_set, bs, seed=(seed, e), shuffle=True,
                                                drop_last=True),
        eval_batches=lambda: dataset_batches(test_set, bs, shuffle=False),
        config=tcfg, run=run, eval_batch_size=bs, resume=resume)
    accs = [r.get("eval_acc") for r in result.history if r.get("eval_acc") is not None]
    scales = learned_scales(result.model)
    summary = {"model": name, "params": count_params(result.model), "seed": seed,
               "final_eval_acc": accs[-1] if accs else None,
               "best_eval_acc": max(accs) if accs else None,
               "final_eval_nfe": result.history[-1].get("eval_nfe"),
               "epochs": epochs, "train_images": len(train_set), "test_images": len(test_set),
               "support_overflow": support_overflow(result.model), "learned_sigma": scales}
    with open(os.path.join(run_path, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    dcn_figures.plot_scales(scales, os.path.join(run_path, "learned"))
    return summary


def _check_train_set(cfg, train, test) -> None:
    """Training drops the last partial batch and a classifier needs two classes: refuse
    a training set smaller than one batch or of one class, and an empty test set (here,
    before a run folder is made or a model built)."""
    n, classes = len(train), len(np.unique(train.labels))
    if n < cfg["batch_size"]:
        cli.stop(f"--batch-size {cfg['batch_size']} is larger than the "
                         f"training set ({n} images); pass --batch-size {max(n, 1)} or less, "
                         "or use more training images (--train-limit, --per-class).")
    if classes < 2:
        cli.stop(f"the training set {train.name!r} has {classes} class; a "
                         "classifier needs at least two (check --data-root).")
    if len(test) == 0:
        cli.stop(f"the test set {test.name!r} is empty; check --data-root and "
                         "--test-limit.")
    for ds in (train, test):  # the models are built for CIFAR-10: RGB, 10 classes
        if ds.image_shape[-1] != 3 or ds.num_classes > 10:
            cli.stop(f"{ds.name!r} has images {ds.image_shape} and "
                             f"{ds.num_classes} classes; these models take RGB (H, W, 3) "
                             "images of at most 10 classes (CIFAR-10 layout).")


def cmd_classify(args):
    from jaxode.data.load import load_dataset

    cfg = _resolve(args)
    with cli.data_errors_exit():
        train = load_dataset("cifar10", "train", root=args.data_root).sample(cfg["train_limit"])
        test = load_dataset("cifar10", "test", root=args.data_root).sample(cfg["test_limit"])
    _check_train_set(cfg, train, test)
    run_path = _classify_run_path(args)
    s = _train(args.model, cfg, train, test, run_path, args.seed, args.max_half_width,
               cfg["milestones"], cfg["epochs"], support=cfg["support"], margin=args.margin,
               eval_every=args.eval_every, resume=args.resume)
    print(json.dumps({k: v for k, v in s.items() if k != "learned_sigma"}, indent=2))


def cmd_small_data(args):
    from jaxode.data.load import load_dataset

    cfg = _resolve(args)
    with cli.data_errors_exit():
        train_all = load_dataset("cifar10", "train", root=args.data_root)
        test = load_dataset("cifar10", "test", root=args.data_root).sample(cfg["test_limit"])
    factor = args.epoch_factor
    epochs = cfg["epochs"] * factor
    milestones = tuple(m * factor for m in cfg["milestones"])
    with cli.data_errors_exit():
        subsets = [train_all.per_class(args.per_class, seed) for seed in _seeds(args)]
    for train in subsets:
        _check_train_set(cfg, train, test)
    results = []
    for seed, run_path, train in zip(_seeds(args), _small_data_run_paths(args), subsets):
        results.append(_train(args.model, cfg, train, test, run_path, seed,
                              args.max_half_width, milestones, epochs,
                              support=cfg["support"], margin=args.margin,
                              eval_every=args.eval_every))
    accs = np.array([r["best_eval_acc"] for r in results], float)
    print(json.dumps({"model": args.model, "per_class": args.per_class, "epochs": epochs,
                      "best_eval_acc_mean": float(accs.mean()),
                      "best_eval_acc_std": float(accs.std()), "seeds": args.seeds}, indent=2))


def cmd_small_data_table(args):
    """Table 2 (mean +- std over seeds per model and size) from finished small-data runs."""
    from experiments import dcn_table

    dcn_table.write(args.runs, args.out or os.path.join(args.runs, "table2"))


# ------------------------------------------------------------- probes of trained runs


def cmd_reconstruct(args):
    """Table 3: train the A.4 encoder-decoder (`DCNAutoencoder`) with MSE against the
    centre 28x28 crop; report test MSE; draw example reconstructions."""
    import jax

    from jaxode.data.load import load_dataset
    from jaxode.models.dcn import build_autoencoder, with_support
    from jaxode.models.dcn_probes import ReconstructionTask
    from jaxode.nn.srf import support_overflow
    from jaxode.ode import SolveConfig
    from jaxode.train import RunDir, TrainConfig, dataset_batches, fit
    from jaxode.train import load_run as read_run
    from jaxode.train.utils import count_params

    cfg = _resolve(args)
    if args.config == "paper" and args.epochs is None:  # reference code: 50 epochs, 25/40
        cfg["epochs"], cfg["milestones"] = 50, (25, 40)
    with cli.data_errors_exit():
        train = load_dataset("cifar10", "train", root=args.data_root).sample(cfg["train_limit"])
        test = load_dataset("cifar10", "test", root=args.data_root).sample(cfg["test_limit"])
        if args.checkpoint:  # the encoder's solver as trained: rtol = atol = its tol
            enc = read_run(args.checkpoint)
            encoder, enc_cfg = enc.model, enc.config
            cfg["widths"], cfg["tol"] = enc_cfg["widths"], enc_cfg["tol"]
            name = enc_cfg["model"]
        else:
            encoder, name = None, args.model
    _check_train_set(cfg, train, test)
    solve = SolveConfig(rtol=cfg["tol"], atol=cfg["tol"])
    if encoder is None:
        encoder = _build(name, cfg, jax.random.PRNGKey(args.seed), args.max_half_width,
                         cfg["support"], args.margin)
    ae = build_autoencoder(encoder, key=jax.random.PRNGKey(args.seed + 1), config=solve)
    ae = with_support(ae, cfg["support"], args.max_half_width, args.margin)
    tcfg = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=0.9, weight_decay=0.0,
                       lr_schedule="step" if cfg["milestones"] else "constant",
                       milestones=tuple(cfg["milestones"]), gamma=0.1, seed=args.seed,
                       data_parallel=False, eval_every=args.eval_every)
    run_path = args.run or os.path.join("runs", f"dcn-reconstruct-{name}-{args.config}")
    run = RunDir(run_path, {"model": name, "encoder_checkpoint": args.checkpoint,
                            "seed": args.seed, **cfg, "train": dataclasses.asdict(tcfg)})
    task = ReconstructionTask()
    bs = cfg["batch_size"]
    result = fit(ae, task,
                 train_batches=lambda e: dataset_batches(train, bs, seed=(args.seed, e),
                                                         shuffle=True, drop_last=True),
                 eval_batches=lambda: dataset_batches(test, bs, shuffle=False),
                 config=tcfg, run=run, eval_batch_size=bs)
    last = result.history[-1]  # the final epoch's evaluation on the whole test set
    summary = {"model": name, "params": count_params(result.model),
               "encoder_checkpoint": args.checkpoint, "epochs": cfg["epochs"],
               "train_images": len(train), "test_images": len(test),
               "test_mse": last["eval_loss"], "test_nfe": last.get("eval_nfe"),
               "support_overflow": support_overflow(result.model)}
    with open(os.path.join(run_path, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    dcn_figures.plot_reconstructions(result.model, test,
                                     os.path.join(run_path, "reconstructions.png"), name)
    print(json.dumps(summary, indent=2))


def _classify_run_path(args) -> str:
    return args.run or os.path.join("runs", f"dcn-{args.model}-{args.config}-s{args.seed}")


def _seeds(args) -> list[int]:
    return [int(s) for s in cli.split_list(args.seeds)]


def _small_data_run_paths(args) -> list[str]:
    return [os.path.join(args.run or "runs", f"dcn-small-{args.model}-{args.per_class}-s{seed}")
            for seed in _seeds(args)]


def check_args(parser, args) -> None:
    """Refuse bad numbers, lists, paths and occupied run folders of any subcommand
    (`experiments._cli`: usage + one sentence, exit status 2), before data or JAX."""
    if hasattr(args, "widths"):
        cli.check_widths(parser, "widths",
                          cli.check_list(parser, "widths", args.widths, kind=int, minimum=1))
    if args.cmd == "small-data-table":
        if not os.path.isdir(args.runs):
            parser.error(f"argument runs: {args.runs!r} is not a folder; pass the --run "
                         "folder of your small-data runs.")
        out = args.out or os.path.join(args.runs, "table2")
        for ext in (".md", ".json", ".png"):
            cli.check_new_file(parser, "--out", out + ext)
        return
    if args.cmd in ("contrast", "completion"):
        dcn_figures.check_args(parser, args)
        return
    cli.check_args(parser, args,
                    positive=("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol",
                              "max_half_width", "per_class", "epoch_factor", "eval_every"),
                    non_negative=("margin", "seed"), existing=("data_root",))
    if args.cmd == "classify":
        if (args.solver in ("euler", "rk4")) != (args.num_steps is not None):
            parser.error("arguments --solver/--num-steps: a fixed-step --solver (euler, rk4) "
                         "needs --num-steps N, and --num-steps needs one of them.")
        if args.num_steps is not None and args.num_steps < 1:
            parser.error(f"argument --num-steps: must be >= 1, got {args.num_steps}.")
        if args.resume:  # continue the run there (a fresh start where it holds no checkpoint)
            if os.path.isfile(_classify_run_path(args)):
                parser.error(f"argument --run: {_classify_run_path(args)!r} is a file; pass "
                             "the run folder to continue.")
        else:
            cli.check_new_run_dir(parser, "--run", _classify_run_path(args),
                                   also=", or pass --resume to continue it")
        return
    if args.cmd == "reconstruct":
        cli.check_existing(parser, "checkpoint", args.checkpoint, "run folder")
        cli.check_new_run_dir(parser, "--run", args.run or os.path.join(
            "runs", f"dcn-reconstruct-{args.model}-{args.config}"))
        return
    cli.check_list(parser, "seeds", args.seeds, kind=int, minimum=0)
    for path in _small_data_run_paths(args):
        cli.check_new_run_dir(parser, "--run", path)


def main(argv=None):
    from jaxode.models.dcn import MODEL_NAMES

    p = cli.ArgumentParser(prog="python -m experiments.dcn", description=__doc__.split("\n")[0])
    p.add_argument("--list", action="store_true", help="list the named configurations and exit")
    if "--list" in (sys.argv[1:] if argv is None else argv):
        print_list("dcn")
        return 0
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q):
        q.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
        q.add_argument("--config", default="smoke", choices=names("dcn"),
                       help="named configuration (experiments.configs.dcn; default smoke)")
        q.add_argument("--data-root", default=None, help="dataset folder (default $JAXODE_DATA)")
        q.add_argument("--run", default=None, help="run folder (default runs/dcn-...)")
        q.add_argument("--epochs", type=int)
        q.add_argument("--batch-size", type=int)
        q.add_argument("--lr", type=float, help="lr at batch 128 (scaled by batch/128)")
        q.add_argument("--train-limit", type=int)
        q.add_argument("--test-limit", type=int)
        q.add_argument("--tol", type=float)
        q.add_argument("--widths", help="e.g. 32,64,128")
        q.add_argument("--max-half-width", type=int, default=8,
                       help="largest kernel half-width of the switch/max support (17x17)")
        q.add_argument("--support", default=None,
                       choices=("separable", "switch", "max", "margin"),
                       help="kernel support strategy (docs/dcn_kernel_size.md; default "
                            "separable: the N-jet filters applied as 1-D passes, exact for "
                            "any sigma, fixed shapes, fastest); 'switch' = exact-size "
                            "kernel chosen at run time, 'max' = one masked 2R+1 grid, "
                            "'margin' = per-layer masked grid r(sigma_init) + --margin")
        q.add_argument("--margin", type=int, default=2)
        q.add_argument("--eval-every", type=int, default=1,
                       help="evaluate on the test set every N epochs (and after the last)")

    q = sub.add_parser("classify", help="CIFAR-10 classification (Tables 1, 5; Fig. 3)")
    common(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--solver", choices=("dopri5", "euler", "rk4"), default=None,
                   help="ODE solver (default dopri5, the paper's; euler / rk4 need --num-steps "
                        "and serve quick checks such as the GPU campaign's dry run)")
    q.add_argument("--num-steps", type=int, default=None,
                   help="steps of a fixed-step --solver on each block's interval")
    q.add_argument("--resume", action="store_true",
                   help="continue the run in --run from its newest checkpoint up to --epochs "
                        "(the learning-rate milestones stay at their epochs), e.g. in chunks")
    q.set_defaults(fn=cmd_classify)
    q = sub.add_parser("small-data", help="small-data regime (Table 2)")
    common(q)
    q.add_argument("--per-class", type=int, default=20)
    q.add_argument("--seeds", default="0,1,2")
    q.add_argument("--epoch-factor", type=int, default=1,
                   help="multiply epochs and milestones (A.2; e.g. 40 for 20 images)")
    q.set_defaults(fn=cmd_small_data)
    q = sub.add_parser("small-data-table",
                       help="Table 2 from finished small-data runs (mean +- std over seeds)")
    q.add_argument("runs", help="the --run folder given to small-data (one sub-folder per run)")
    q.add_argument("--out", default=None,
                   help="output path without extension (default RUNS/table2): .md, .json, .png")
    q.set_defaults(fn=cmd_small_data_table)
    dcn_figures.add_commands(sub)
    q = sub.add_parser("reconstruct", help="CIFAR-10 reconstruction with MSE (Table 3)",
                       description="Train the A.4 encoder-decoder (DCNAutoencoder) with MSE "
                       "against the centre 28x28 crop; the encoder is a trained classifier "
                       "(--checkpoint) or, without it, a fresh --model.")
    common(q)
    q.add_argument("--checkpoint", default=None,
                   help="run folder of a trained classifier to use as the encoder")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(fn=cmd_reconstruct)
    args = p.parse_args(argv)
    check_args(p, args)
    args.fn(args)


if __name__ == "__main__":
    main()
