"""Deep Continuous Networks (Tomen, Pintea & van Gemert, ICML 2021): experiment recipes.

Subcommands (each has ``--config smoke`` for a CPU check and ``--config paper``):

- ``classify``: CIFAR-10 classification (Tables 1 and 5) with any model of
  `jaxode.models.dcn.MODEL_NAMES`; writes the learned sigma of every SRF layer
  (Fig. 3a) and, for ``dcn_sigma_ji``, the sigma^ji histograms per block (Fig. 3b).
- ``small-data``: the small-data regime (Table 2): K images per class drawn with
  replacement from each class, several seeds, mean +- std; epochs and learning-rate
  milestones multiplied by a factor (supplement A.2).
- ``kernel-cost``: time per training step of the three kernel-support strategies of
  `jaxode.nn.srf` (exact-size grid, fixed maximal grid with masking, `lax.switch`).

Example::

    python -m experiments.dcn classify --model dcn_ode --config smoke --data-root ../shared/data
    python -m experiments.dcn classify --model dcn_ode --config paper
    python -m experiments.dcn small-data --model dcn_ode --per-class 20 --seeds 0,1,2
    python -m experiments.dcn kernel-cost --widths 16,32,64 --batch 8

Training uses the generic trainer (`jaxode.train.fit`).  Because that loop has no
per-step hook, the SRF kernels use fixed shapes: ``--support switch`` (paper config; the
exact-size kernel is chosen from sigma at run time inside the jitted step, so the
kernels follow sigma at every step exactly as in the reference code, but XLA's CPU
compile of the branches is slow), ``max`` (one masked 2R+1 grid) or ``margin``
(smoke config; per-layer masked grid r(sigma_init) + m: cheap, exact while sigma
grows by less than m/2).
A layer whose r(sigma) outgrows its grid is truncated there and listed in
``summary.json`` (``support_overflow``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from experiments import _cli

PAPER = dict(epochs=100, batch_size=128, lr=0.1, milestones=(40, 70), train_limit=None,
             test_limit=None, widths=(32, 64, 128), tol=1e-3, support="switch")
SMOKE = dict(epochs=1, batch_size=16, lr=0.1, milestones=(), train_limit=64, test_limit=64,
             widths=(8, 16, 32), tol=1e-2, support="margin")
CONFIGS = {"paper": PAPER, "smoke": SMOKE}


def _resolve(args) -> dict:
    cfg = dict(CONFIGS[args.config])
    for k in ("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol", "support"):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    if getattr(args, "widths", None):
        cfg["widths"] = tuple(int(w) for w in args.widths.split(","))
    # lr scales with the batch (0.1 x batch / 128), as in the reference code
    cfg["lr"] = cfg["lr"] * cfg["batch_size"] / 128
    return cfg


def _limit(ds, n, seed=0):
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ds.subset(np.sort(idx))


def _build(name, cfg, key, max_half_width, support="switch", margin=1):
    from jaxode.models.dcn import build_model
    from jaxode.nn.srf import refresh_support
    from jaxode.ode import SolveConfig

    model = build_model(name, key=key, widths=cfg["widths"],
                        config=SolveConfig(rtol=cfg["tol"], atol=cfg["tol"]))
    if support == "margin":  # per-layer grid r(sigma_init) + margin, masked
        return refresh_support(model, "exact", margin=margin)
    return refresh_support(model, support, max_half_width=max_half_width)


def learned_scales(model) -> dict:
    """sigma of every SRF layer, by position in the network (Fig. 3a / 3b)."""
    import jax

    from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter

    out = {}
    paths = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, (SRFConv2d, SRFConv2dPerFilter, MetaSRFConv2d)))[0]
    for path, leaf in paths:
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, SRFConv2d):
            out[name] = float(leaf.sigma)
        elif isinstance(leaf, SRFConv2dPerFilter):
            out[name] = np.asarray(leaf.sigma).ravel().tolist()
        elif isinstance(leaf, MetaSRFConv2d):
            out[name] = {"t": [0.0, 1.0, 2.0],
                         "sigma": [float(leaf.sigma_at(t)) for t in (0.0, 1.0, 2.0)]}
    return out


def _plot_scales(scales: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = {k: v for k, v in scales.items() if isinstance(v, float)}
    per = {k: v for k, v in scales.items() if isinstance(v, list)}
    if shared:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(range(len(shared)), list(shared.values()), "o-")
        ax.set_xticks(range(len(shared)))
        ax.set_xticklabels([k.replace(".", " ")[-28:] for k in shared], rotation=60, fontsize=6)
        ax.set_ylabel("learned sigma")
        fig.tight_layout()
        fig.savefig(path + "_sigma.png", dpi=120)
        plt.close(fig)
    if per:
        fig, ax = plt.subplots(figsize=(5, 3))
        for k, v in per.items():
            ax.hist(v, bins=40, histtype="step", label=k[-24:])
        ax.set_xlabel("learned sigma^ji")
        ax.set_ylabel("# filters")
        ax.legend(fontsize=5)
        fig.tight_layout()
        fig.savefig(path + "_sigma_ji.png", dpi=120)
        plt.close(fig)


def _train(name, cfg, train_set, test_set, run_path, seed, max_half_width, milestones,
           epochs, progress=True, support="switch", margin=1):
    import jax

    from jaxode.nn.srf import support_overflow
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit
    from jaxode.train.utils import count_params

    model = _build(name, cfg, jax.random.PRNGKey(seed), max_half_width, support, margin)
    tcfg = TrainConfig(epochs=epochs, batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=0.9, weight_decay=0.0,
                       lr_schedule="step" if milestones else "constant",
                       milestones=tuple(milestones), gamma=0.1, seed=seed, progress=progress,
                       data_parallel=False)
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
        config=tcfg, run=run, eval_batch_size=bs)
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
    _plot_scales(scales, os.path.join(run_path, "learned"))
    return summary


def _check_train_set(cfg, train, test) -> None:
    """Training drops the last partial batch and a classifier needs two classes: refuse
    a training set smaller than one batch or of one class, and an empty test set (here,
    before a run folder is made or a model built)."""
    n, classes = len(train), len(np.unique(train.labels))
    if n < cfg["batch_size"]:
        raise SystemExit(f"error: --batch-size {cfg['batch_size']} is larger than the "
                         f"training set ({n} images); pass --batch-size {max(n, 1)} or less, "
                         "or use more training images (--train-limit, --per-class).")
    if classes < 2:
        raise SystemExit(f"error: the training set {train.name!r} has {classes} class; a "
                         "classifier needs at least two (check --data-root).")
    if len(test) == 0:
        raise SystemExit(f"error: the test set {test.name!r} is empty; check --data-root and "
                         "--test-limit.")
    for ds in (train, test):  # the models are built for CIFAR-10: RGB, 10 classes
        if ds.image_shape[-1] != 3 or ds.num_classes > 10:
            raise SystemExit(f"error: {ds.name!r} has images {ds.image_shape} and "
                             f"{ds.num_classes} classes; these models take RGB (H, W, 3) "
                             "images of at most 10 classes (CIFAR-10 layout).")


def cmd_classify(args):
    from jaxode.data.load import load_dataset

    cfg = _resolve(args)
    with _cli.data_errors_exit():
        train = _limit(load_dataset("cifar10", "train", root=args.data_root), cfg["train_limit"])
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), cfg["test_limit"])
    _check_train_set(cfg, train, test)
    run_path = _classify_run_path(args)
    s = _train(args.model, cfg, train, test, run_path, args.seed, args.max_half_width,
               cfg["milestones"], cfg["epochs"], support=cfg["support"], margin=args.margin)
    print(json.dumps({k: v for k, v in s.items() if k != "learned_sigma"}, indent=2))


def small_data_subset(ds, per_class: int, seed: int):
    """`per_class` indices drawn with replacement from each class (reference code)."""
    empty = [c for c in range(ds.num_classes) if not np.any(ds.labels == c)]
    if empty:
        raise ValueError(f"{ds.name!r} has no images of class(es) {empty}, so it cannot give "
                         f"{per_class} per class; use the full CIFAR-10 training set.")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(ds.labels == c), per_class, replace=True)
                          for c in range(ds.num_classes)])
    return ds.subset(np.sort(idx), name=f"{ds.name}[{per_class}/class,seed {seed}]")


def cmd_small_data(args):
    from jaxode.data.load import load_dataset

    cfg = _resolve(args)
    with _cli.data_errors_exit():
        train_all = load_dataset("cifar10", "train", root=args.data_root)
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), cfg["test_limit"])
    factor = args.epoch_factor
    epochs = cfg["epochs"] * factor
    milestones = tuple(m * factor for m in cfg["milestones"])
    with _cli.data_errors_exit():
        subsets = [small_data_subset(train_all, args.per_class, seed) for seed in _seeds(args)]
    for train in subsets:
        _check_train_set(cfg, train, test)
    results = []
    for seed, run_path, train in zip(_seeds(args), _small_data_run_paths(args), subsets):
        results.append(_train(args.model, cfg, train, test, run_path, seed,
                              args.max_half_width, milestones, epochs,
                              support=cfg["support"], margin=args.margin))
    accs = np.array([r["best_eval_acc"] for r in results], float)
    print(json.dumps({"model": args.model, "per_class": args.per_class, "epochs": epochs,
                      "best_eval_acc_mean": float(accs.mean()),
                      "best_eval_acc_std": float(accs.std()), "seeds": args.seeds}, indent=2))


def cmd_kernel_cost(args):
    """Median time of one jitted training step (value and gradient) of a DCN-ODE for the
    three support strategies; also the compile time and the forward NFE."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxode.models.dcn import build_model
    from jaxode.nn.srf import refresh_support, srf_layers
    from jaxode.ode import SolveConfig

    widths = tuple(int(w) for w in args.widths.split(","))
    cfg = SolveConfig(rtol=args.tol, atol=args.tol)
    base = build_model(args.model, key=jax.random.PRNGKey(0), widths=widths, config=cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 3, 32, 32))
    y = jnp.arange(args.batch) % 10
    print("sigma per SRF layer:", [round(float(lay.sigma_range()[1]), 3) for lay in srf_layers(base)])
    print("exact half-widths:", [lay.grid_half_width for lay in srf_layers(base)])

    def loss(m):
        logits, aux = m(x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(args.batch), y]), aux

    step = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    rows = []
    for mode in ("exact", "max", "switch"):
        m = refresh_support(base, mode, max_half_width=None if mode == "exact" else args.max_half_width)
        t0 = time.perf_counter()
        (v, aux), _ = step(m)
        jax.block_until_ready(v)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            (v, aux), g = step(m)
            jax.block_until_ready((v, g))
            times.append(time.perf_counter() - t0)
        rows.append({"mode": mode, "loss": float(v), "nfe": float(aux["nfe"][0]),
                     "first_call_s": compile_s, "step_median_s": float(np.median(times)),
                     "step_times_s": [round(t, 3) for t in times]})
        print(json.dumps(rows[-1]))
    ref = rows[0]["step_median_s"]
    for r in rows:
        print(f"{r['mode']:>6}: {r['step_median_s']:.3f} s/step ({r['step_median_s'] / ref:.2f}x exact), "
              f"first call {r['first_call_s']:.1f} s, NFE {r['nfe']:.0f}, loss {r['loss']:.6f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"widths": widths, "batch": args.batch, "model": args.model,
                       "max_half_width": args.max_half_width, "rows": rows}, f, indent=2)


def _classify_run_path(args) -> str:
    return args.run or os.path.join("runs", f"dcn-{args.model}-{args.config}-s{args.seed}")


def _seeds(args) -> list[int]:
    return [int(s) for s in _cli.split_list(args.seeds)]


def _small_data_run_paths(args) -> list[str]:
    return [os.path.join(args.run or "runs", f"dcn-small-{args.model}-{args.per_class}-s{seed}")
            for seed in _seeds(args)]


def check_args(parser, args) -> None:
    """Refuse bad numbers, lists, paths and occupied run folders of any subcommand
    (`experiments._cli`: usage + one sentence, exit status 2), before data or JAX."""
    _cli.check_widths(parser, "widths",
                      _cli.check_list(parser, "widths", args.widths, kind=int, minimum=1))
    if args.cmd == "kernel-cost":
        _cli.check_args(parser, args, positive=("batch", "tol", "max_half_width", "repeats"))
        _cli.check_new_file(parser, "--out", args.out)
        return
    _cli.check_args(parser, args,
                    positive=("epochs", "batch_size", "lr", "train_limit", "test_limit", "tol",
                              "max_half_width", "per_class", "epoch_factor"),
                    non_negative=("margin", "seed"), existing=("data_root",))
    if args.cmd == "classify":
        _cli.check_new_run_dir(parser, "--run", _classify_run_path(args))
        return
    _cli.check_list(parser, "seeds", args.seeds, kind=int, minimum=0)
    for path in _small_data_run_paths(args):
        _cli.check_new_run_dir(parser, "--run", path)


def main(argv=None):
    from jaxode.models.dcn import MODEL_NAMES

    p = argparse.ArgumentParser(prog="python -m experiments.dcn", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q):
        q.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
        q.add_argument("--config", default="smoke", choices=tuple(CONFIGS))
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
        q.add_argument("--support", default=None, choices=("switch", "max", "margin"),
                       help="kernel support strategy (docs/dcn_kernel_size.md; default: "
                            "switch for --config paper, margin for smoke); 'margin' = "
                            "per-layer r(sigma_init) + --margin, fastest to compile")
        q.add_argument("--margin", type=int, default=2)

    q = sub.add_parser("classify", help="CIFAR-10 classification (Tables 1, 5; Fig. 3)")
    common(q)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(fn=cmd_classify)
    q = sub.add_parser("small-data", help="small-data regime (Table 2)")
    common(q)
    q.add_argument("--per-class", type=int, default=20)
    q.add_argument("--seeds", default="0,1,2")
    q.add_argument("--epoch-factor", type=int, default=1,
                   help="multiply epochs and milestones (A.2; e.g. 40 for 20 images)")
    q.set_defaults(fn=cmd_small_data)
    q = sub.add_parser("kernel-cost", help="cost of the kernel-support strategies")
    q.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
    q.add_argument("--widths", default="16,32,64")
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--tol", type=float, default=1e-3)
    q.add_argument("--max-half-width", type=int, default=8)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--out", default=None)
    q.set_defaults(fn=cmd_kernel_cost)
    args = p.parse_args(argv)
    check_args(p, args)
    args.fn(args)


if __name__ == "__main__":
    main()
