"""NODE-EW vs the fixed-weight ODE-Net on MNIST (He, Xie, Lin 2019, Sec. 4.2, Table 1).

Four runs with the generic trainer (`jaxode.train.fit`): {NODE-EW, ODE-Net} x {pure
adjoint, Euler-then-adjoint}.  The Euler-then-adjoint runs use `--schedule`
(``euler:N,adjoint:M``: N epochs through `--euler-steps` fixed Euler steps with
backprop, then M epochs of dopri5 + backsolve adjoint; Sec. 3.2.2); the pure-adjoint
runs train N + M epochs with dopri5 + adjoint.  Both models share the down-sampling,
theta_0 and head initialisation (same key).  Reports test / train accuracy and seconds
per epoch of each phase (the first epoch of a phase includes compilation; the
summary also gives the last epoch of each phase).

The paper trains 160 epochs (80 + 80) on all of MNIST on a GPU; on a CPU use a subset:

    python -m experiments.node_ew_mnist --train-limit 1024 --test-limit 1000 \\
        --schedule euler:2,adjoint:2 --out runs/node_ew_mnist
    python -m experiments.node_ew_mnist --smoke          # digits, 24x24, minutes

The smoke run repeats every pixel of the 8x8 digits 3x3 times (24x24 images), so that
Chen's down-sampling leaves 5x5 feature maps, like MNIST's 6x6.  On the 8x8 images it
leaves 1x1 maps: GroupNorm then normalises 2 values per group, which makes the field
a near step function of z (slope up to 1/sqrt(eps)), and the pure-adjoint backward
solve, which integrates that field backwards in time, ran out of its 4,096 steps at
the first gradient (fixed-weight ODE-Net and NODE-EW alike).  Images that leave maps
smaller than `MIN_MAP` are refused (1x1 was measured to fail; 2x2 and 3x3 were not
tried; 5x5 and 6x6 train).
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from jaxode.models.node_ew import chen_odenet, node_ew_mnist
from jaxode.ode import SolveConfig
from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit
from jaxode.train.phases import parse_schedule, total_epochs
from jaxode.train.utils import count_params


MIN_MAP = 4  # smallest feature-map side accepted (see the module docstring)


def chen_map_size(side: int) -> int:
    """Side of the maps Chen's down-sampling leaves from `side` x `side` images (conv3x3
    valid, then two conv4x4 / stride 2 / padding 1: 28 -> 26 -> 13 -> 6)."""
    side -= 2
    for _ in range(2):
        side = (side - 2) // 2 + 1
    return side


def upsample(ds, k: int):
    """`ds` with every pixel repeated k x k times (nearest-neighbour, exact)."""
    from jaxode.data import Dataset

    images = ds.images.repeat(k, axis=1).repeat(k, axis=2)
    return Dataset(images, ds.labels, ds.num_classes, ds.class_names, f"{ds.name}x{k}")


def _summarise(history, phases):
    out = {"epochs": len(history)}
    last = history[-1]
    out["test_acc"] = last.get("eval_acc")
    out["train_acc_last_epoch"] = last.get("train_acc")
    by_phase: dict[str, list[float]] = {}
    for row in history:
        by_phase.setdefault(row.get("phase", "adjoint"), []).append(row["train_time_s"])
    out["seconds_per_epoch"] = {k: {"first (incl. compile)": v[0], "last": v[-1]}
                                for k, v in by_phase.items()}
    out["mean_nfe_forward_last_epoch"] = last.get("train_nfe")
    out["mean_nfe_backward_last_epoch"] = last.get("train_nfe_backward")
    return out


def main(argv=None):
    from jaxode.cli import ArgumentParser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/node_ew_mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default=None, help="default: $JAXODE_DATA")
    p.add_argument("--train-limit", type=int, default=1024)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--schedule", default="euler:2,adjoint:2")
    p.add_argument("--euler-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--g-lr-scale", type=float, default=0.01,
                   help="learning-rate factor for theta_1, the parameters of the weight "
                        "dynamics g (default 0.01, the rate that kept the NODE-EW flows "
                        "stable; 1 = one rate for all, with which NODE-EW's forward NFE "
                        "grew to ~156 per solve in 2 epochs on MNIST)")
    p.add_argument("--dynamics", default="elementwise", choices=("elementwise", "lowrank"))
    p.add_argument("--models", default="node-ew,odenet")
    p.add_argument("--strategies", default="euler-then-adjoint,pure-adjoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    from experiments import configs

    args = configs.parse(p, "node_ew_mnist", argv, default="cpu")
    from jaxode.cli import check_args, dataset_spec  # issue 9: bad arguments stop here

    check_args(p, args, positive=("euler_steps", "batch_size", "lr", "tol"),
               non_negative=("train_limit", "test_limit", "seed", "g_lr_scale"),
               choices={"models": ("node-ew", "odenet"),
                        "strategies": ("euler-then-adjoint", "pure-adjoint")},
               parsers={"schedule": parse_schedule, "dataset": dataset_spec},
               existing=("data_root",), new_run_dirs=("out",))
    if args.smoke:  # after the checks: a bad value given with --smoke is still refused
        args.dataset, args.train_limit, args.test_limit = "digits", 256, 128
        args.schedule, args.batch_size = "euler:1,adjoint:1", 64
    phases = parse_schedule(args.schedule)
    epochs = total_epochs(phases)

    from jaxode.cli import data_errors_exit, stop
    from jaxode.data import load_dataset

    with data_errors_exit():
        train = load_dataset(args.dataset, "train", root=args.data_root)
        test = load_dataset(args.dataset, "test", root=args.data_root)
    train = train.subset(slice(0, args.train_limit)) if args.train_limit else train
    test = test.subset(slice(0, args.test_limit)) if args.test_limit else test
    if len(train) < args.batch_size or len(test) == 0:
        stop(f"{train.name!r} has {len(train)} training and {len(test)} test images; a run "
             f"needs at least --batch-size ({args.batch_size}) training images and one test "
             "image: lower --batch-size or raise --train-limit / --test-limit.")
    if args.smoke:
        train, test = upsample(train, 3), upsample(test, 3)
    side = min(train.image_shape[:2])
    if chen_map_size(side) < MIN_MAP:
        stop(f"{train.name!r} has {side}x{side} images, which Chen's down-sampling turns into "
             f"{max(chen_map_size(side), 0)}x{max(chen_map_size(side), 0)} feature maps; "
             f"under {MIN_MAP}x{MIN_MAP} (at 1x1 the adjoint solve runs out of steps). "
             "Use images of at least 20x20 (e.g. --dataset mnist), or --smoke for digits.")
    if train.image_shape[-1] != test.image_shape[-1]:
        stop(f"the training images have {train.image_shape[-1]} channel(s) and the test "
             f"images {test.image_shape[-1]}; use a dataset whose splits agree.")
    os.makedirs(args.out, exist_ok=True)
    task = ClassificationTask()
    key = jax.random.PRNGKey(args.seed)
    solve = SolveConfig(rtol=args.tol, atol=args.tol)
    in_channels = train.image_shape[-1]  # 1 for MNIST and digits
    builders = {
        "node-ew": lambda: node_ew_mnist(in_channels=in_channels, dynamics=args.dynamics,
                                         solve=solve, key=key),
        "odenet": lambda: chen_odenet(in_channels=in_channels, solve=solve, key=key),
    }
    summary = {"args": vars(args)}
    for name in [m.strip() for m in args.models.split(",")]:
        for strategy in [s.strip() for s in args.strategies.split(",")]:
            model = builders[name]()
            sched = args.schedule if strategy == "euler-then-adjoint" else None
            cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                              phases=sched, euler_steps=args.euler_steps, seed=args.seed,
                              g_lr_scale=args.g_lr_scale,
                              eval_every=epochs, keep_checkpoints=1)
            run = RunDir(os.path.join(args.out, f"{name}_{strategy}"),
                         {"model": name, "strategy": strategy, **vars(args)})
            result = fit(model, task,
                         train_batches=lambda e: dataset_batches(train, args.batch_size,
                                                                 seed=(args.seed, e),
                                                                 drop_last=True),
                         eval_batches=lambda: dataset_batches(test, 250, shuffle=False),
                         config=cfg, run=run)
            s = _summarise(result.history, phases)
            s["params"] = count_params(model)
            summary[f"{name}/{strategy}"] = s
            print(f"{name}/{strategy}", json.dumps(s))
            with open(os.path.join(args.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1, default=float)
    return summary


if __name__ == "__main__":
    main()
