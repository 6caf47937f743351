"""NODE-EW vs the fixed-weight ODE-Net on an MNIST subset (He, Xie, Lin 2019, Sec. 4.2,
Table 1): {NODE-EW, ODE-Net} x {Euler-then-adjoint, pure adjoint}.

Each of the four runs is the classify config ``node-ew-mnist`` (``--model node-ew`` or
``chen-odenet``, same key: same down-sampling, theta_0 and head) with this command's
flags, built and trained as `experiments.classify` does, plus theta_1's own learning
rate (``--g-lr-scale``).  ``euler-then-adjoint`` follows ``--schedule`` (Sec. 3.2.2),
``pure-adjoint`` as many epochs of dopri5 + adjoint.  Summary: test / training
accuracy, NFE, s/epoch of each phase.  Full MNIST: classify (results/README.md), e.g.

    python -m experiments.classify --config node-ew-mnist --name mnist-node-ew
    python -m experiments.node_ew_mnist --config cpu        # 1,024 images, 4 epochs
    python -m experiments.node_ew_mnist --config smoke      # digits, minutes

The smoke run repeats every pixel of the 8x8 digits 3x3 times: Chen's down-sampling
then leaves 5x5 maps (MNIST: 6x6); at 1x1 the adjoint solve runs out of steps.
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from jaxode.train.phases import parse_schedule, seconds_per_epoch, total_epochs

MODELS = {"node-ew": "node-ew", "odenet": "chen-odenet"}
STRATEGIES = ("euler-then-adjoint", "pure-adjoint")


def upsample(ds, k: int):
    """`ds` with every pixel repeated k x k times (nearest neighbour, exact)."""
    from jaxode.data import Dataset

    images = ds.images.repeat(k, axis=1).repeat(k, axis=2)
    return Dataset(images, ds.labels, ds.num_classes, ds.class_names, f"{ds.name}x{k}")


def train_one(cfg, data, args, folder):
    """One run: classify's model, task and TrainConfig (+ `--g-lr-scale`) -> `fit`."""
    from experiments import classify
    from jaxode.train import RunDir, count_params, dataset_batches, fit

    train, test = data
    model = classify.build_model(cfg, train.num_classes, train.image_shape[-1],
                                 jax.random.PRNGKey(cfg.seed))
    tcfg = classify.train_config(cfg).replace(g_lr_scale=args.g_lr_scale, eval_every=cfg.epochs,
                                              keep_checkpoints=1, progress=not args.no_progress)
    result = fit(model, classify.build_task(cfg, train),
                 lambda e: dataset_batches(train, cfg.batch_size, seed=(cfg.seed, e),
                                           drop_last=True),
                 lambda: dataset_batches(test, cfg.eval_batch_size, shuffle=False),
                 config=tcfg, run=RunDir(folder, {"classify": cfg.to_dict(), **vars(args)}))
    last = result.history[-1]
    return {"epochs": len(result.history), "test_acc": last.get("eval_acc"),
            "train_acc_last_epoch": last.get("train_acc"),
            "seconds_per_epoch": seconds_per_epoch(result.history),
            "mean_nfe_forward_last_epoch": last.get("train_nfe"),
            "mean_nfe_backward_last_epoch": last.get("train_nfe_backward"),
            "params": count_params(model)}


def main(argv=None):
    from experiments.configs import get_config
    from experiments.configs.node_ew import parse_run_flags
    from jaxode import cli
    from jaxode.data import load_classification

    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--dataset", default="mnist")
    a("--train-limit", type=int, help="first N training images (0: all)")
    a("--test-limit", type=int, help="first N test images (0: all)")
    a("--schedule", help="phases of euler-then-adjoint, e.g. euler:2,adjoint:2")
    a("--euler-steps", type=int, default=10)
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.05)
    a("--tol", type=float, default=1e-3)
    a("--g-lr-scale", type=float, default=0.01,
      help="learning-rate factor of theta_1, g's parameters (1: one rate for all, with which "
           "NODE-EW's forward NFE grew to ~156 per solve in 2 epochs on MNIST)")
    a("--dynamics", default="elementwise", choices=("elementwise", "lowrank"))
    a("--models", default=",".join(MODELS))
    a("--strategies", default=",".join(STRATEGIES))
    a("--seed", type=int, default=0)
    a("--smoke", action="store_true", help="the smoke config (same as --config smoke)")
    args = parse_run_flags(p, "node_ew_mnist", argv, default="cpu")
    cli.check_args(p, args, positive=("euler_steps", "batch_size", "lr", "tol"),
                   non_negative=("train_limit", "test_limit", "seed", "g_lr_scale"),
                   choices={"models": MODELS, "strategies": STRATEGIES},
                   parsers={"schedule": parse_schedule, "dataset": cli.dataset_spec},
                   existing=("data_root",))
    if args.smoke:  # after the checks: a bad value given with --smoke is still refused
        args.dataset, args.train_limit, args.test_limit = "digits", 256, 128
        args.schedule, args.batch_size = "euler:1,adjoint:1", 64
    epochs = total_epochs(parse_schedule(args.schedule))
    base = get_config("node-ew-mnist").replace(
        dataset=args.dataset, data_root=args.data_root, train_limit=args.train_limit or None,
        test_limit=args.test_limit or None, epochs=epochs, batch_size=args.batch_size,
        lr=args.lr, lr_schedule="constant", milestones=(), crop_padding=0, tol=args.tol,
        euler_steps=args.euler_steps, seed=args.seed)
    with cli.data_errors_exit():
        data = load_classification(base.dataset, root=base.data_root,
                                   train_limit=base.train_limit, test_limit=base.test_limit)
    data = tuple(upsample(ds, 3) for ds in data) if args.smoke else data
    summary = {"args": vars(args)}
    for name in cli.split_list(args.models):
        for strategy in cli.split_list(args.strategies):
            cfg = base.replace(model=MODELS[name], phases=args.schedule if strategy == STRATEGIES[0]
                               else None, model_kwargs=(("dynamics", args.dynamics),)
                               if name == "node-ew" else ())
            summary[f"{name}/{strategy}"] = s = train_one(
                cfg, data, args, os.path.join(args.run, f"{name}_{strategy}"))
            print(f"{name}/{strategy}", json.dumps(s))
            with open(os.path.join(args.run, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1, default=float)
    return summary


if __name__ == "__main__":
    main()
