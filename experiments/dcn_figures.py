"""The figures of the DCN experiments (Tomen, Pintea & van Gemert, ICML 2021): the
probes of trained runs -- input contrast (Fig. 5) and pattern completion (Fig. 3c,
Fig. 4) -- and the plots of learned scales (Fig. 3a, 3b) and reconstructions (Table 3).

The probes' math is in `jaxode.models.dcn_probes` (`probe_pass` runs one compiled
program over a test set); this module runs them over trained runs and draws.  Called
by ``python -m experiments.dcn contrast|completion``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from jaxode import cli


def load_run(run_dir: str, tol: float | None = None, max_steps: int | None = None):
    """``(model, config)`` of a `classify` / `small-data` run folder for the probes
    (`jaxode.train.load_run`: the newest checkpoint's weights, every SRF grid at the
    exact size of its learned sigma), with every ODE block's solver set to
    ``on_max_steps="flag"`` (a probe that drives a solver to its step limit records it
    instead of stopping) and, if given, rtol = atol = `tol` and the step limit
    `max_steps` per solve.  ``config["epoch"]`` is the checkpoint read."""
    from jaxode.models.dcn import MODEL_NAMES
    from jaxode.train import load_run as read_run
    from jaxode.train.utils import with_solve_config

    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; --checkpoint takes the run folder of a "
                                "'classify' or 'small-data' run.")
    with open(path) as f:
        model_name = json.load(f).get("model")
    if model_name not in MODEL_NAMES:
        raise ValueError(f"{path} names no DCN model ('model': {model_name!r}); "
                         "--checkpoint takes a run folder of experiments.dcn.")
    run = read_run(run_dir)
    changes = {"on_max_steps": "flag"}
    if tol is not None:
        changes.update(rtol=tol, atol=tol)
    if max_steps is not None:
        changes["max_steps"] = max_steps
    return with_solve_config(run.model, **changes), dict(run.config, epoch=run.epoch)


def _load_probe_inputs(args):
    """Models of every --checkpoint (label = model name, numbered if repeated) and the
    (limited) CIFAR-10 test split."""
    from jaxode.data.load import load_dataset

    with cli.data_errors_exit():
        test = load_dataset("cifar10", "test", root=args.data_root).sample(args.test_limit,
                                                                           seed=args.seed)
        models = {}
        for run_dir in args.checkpoint:
            model, cfg = load_run(run_dir, tol=args.tol, max_steps=args.max_steps)
            label = cfg["model"]
            k = 2
            while label in models:
                label, k = f"{cfg['model']}-{k}", k + 1
            models[label] = (model, run_dir, cfg)
    if len(test) == 0:
        cli.stop("the test set is empty; check --data-root and --test-limit.")
    return models, test


def check_args(parser, args) -> None:
    """Refuse bad arguments of ``contrast`` / ``completion`` before any data or JAX."""
    cli.check_args(parser, args, positive=("batch_size", "test_limit", "tol", "times",
                                           "d_images", "max_steps"),
                   non_negative=("seed", "d_mask_size"), existing=("data_root",),
                   new_run_dirs=("out",))
    for run_dir in args.checkpoint:
        cli.check_existing(parser, "checkpoint", run_dir, "run folder")
    if args.cmd == "contrast":
        cli.check_list(parser, "contrasts", args.contrasts, kind=float, minimum=0)
        if any(float(c) == 0 for c in cli.split_list(args.contrasts)):
            parser.error(f"argument --contrasts: {args.contrasts!r} holds a zero; an "
                         "input of contrast 0 is blank and T = 0 integrates nothing; "
                         "give values > 0.")
        from jaxode.models.dcn_probes import CONTRAST_MODES

        cli.check_list(parser, "modes", args.modes, choices=CONTRAST_MODES)
    else:
        sizes = cli.check_list(parser, "mask_sizes", args.mask_sizes, kind=int, minimum=0)
        if max(sizes + [args.d_mask_size]) > 32:
            parser.error("argument --mask-sizes/--d-mask-size: a mask larger than the "
                         "32x32 image; give sizes <= 32.")


def add_commands(sub) -> None:
    """The ``contrast`` and ``completion`` subcommands of ``python -m experiments.dcn``."""

    def probe(q, what):
        q.add_argument("--checkpoint", action="append", required=True,
                       help="run folder of a 'classify' / 'small-data' run (repeat the flag "
                            "to compare models in one figure)")
        q.add_argument("--data-root", default=None, help="dataset folder (default $JAXODE_DATA)")
        q.add_argument("--out", required=True, help=f"new folder for {what}")
        q.add_argument("--test-limit", type=int, default=None,
                       help="random subset of the test split (default: all 10,000)")
        q.add_argument("--seed", type=int, default=0, help="seed of the test subset")
        q.add_argument("--batch-size", type=int, default=100)
        q.add_argument("--tol", type=float, default=None,
                       help="rtol = atol of every ODE block (default: the run's)")
        q.add_argument("--max-steps", type=int, default=256,
                       help="step limit of one solve; a batch that hits it is counted in "
                            "max_steps_batches, not stopped (small c can make solves stiff)")

    q = sub.add_parser("contrast", help="accuracy and NFE under input contrast c (Fig. 5)",
                       description="Accuracy and forward NFE (per ODE block and total, per "
                       "batch) of trained models for inputs c * H (Sec. 3.3): 'naive' (input "
                       "only), 'block1' (ODE block 1 integrated over [0, c T]) and 'all' "
                       "(every block over [0, c T_i], inputs of blocks 2.. times c). One "
                       "compiled program per model serves all c and modes.")
    probe(q, "contrast.json and contrast.png")
    q.add_argument("--contrasts", default=",".join(f"{c:.4g}" for c in np.logspace(-3, 0.7, 30)),
                   help="comma list of c > 0 (default: the paper's 30 log-spaced values "
                        "1e-3 ... 10^0.7)")
    q.add_argument("--modes", default="naive,block1,all",
                   help="comma list of naive, block1, all")
    q.set_defaults(fn=lambda a: cmd_contrast(a, *_load_probe_inputs(a)))
    q = sub.add_parser("completion", help="pattern completion: masked accuracy, D(t) (Fig. 3c, 4)",
                       description="Accuracy with an n x n zero square at the image centre "
                       "(Fig. 3c), and D(t) = sum|h(t) - h_masked(t)| / sum|h(t)| inside ODE "
                       "block 1 (eq. 4), mean and std over images, with example feature maps "
                       "(Fig. 4).")
    probe(q, "completion.json and the figures")
    q.add_argument("--mask-sizes", default="0,4,6,8,10,12,14",
                   help="comma list of n (0 = intact)")
    q.add_argument("--d-mask-size", type=int, default=6,
                   help="mask size for D(t) (A.5 shows 6x6; the reference code uses 14)")
    q.add_argument("--d-images", type=int, default=1000,
                   help="test images averaged in D(t) (paper: 1000)")
    q.add_argument("--times", type=int, default=21, help="times t in [0, T] for D(t)")
    q.set_defaults(fn=lambda a: cmd_completion(a, *_load_probe_inputs(a)))


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scales(scales: dict, path: str):
    """Learned sigma per SRF layer (``PATH_sigma.png``) and the sigma^ji histograms
    (``PATH_sigma_ji.png``) of `jaxode.models.dcn.learned_scales`."""
    plt = _figure()
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




def cmd_contrast(args, models, test):
    """Fig. 5: accuracy and forward NFE (per ODE block and total, per batch) under input
    contrast c, naive and with scaled integration times (`jaxode.models.dcn_probes`)."""
    from tqdm.auto import tqdm

    from jaxode.models.dcn_probes import PROBE_TRACES, contrast_scales, probe_pass

    contrasts = [float(c) for c in cli.split_list(args.contrasts)]
    modes = cli.split_list(args.modes)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for label, (model, run_dir, cfg) in models.items():
        n_traces, n_blocks = len(PROBE_TRACES), len(model.blocks)
        todo = [(m, c) for m in modes for c in contrasts]
        for mode, c in tqdm(todo, desc=f"contrast {label}"):
            acc, nfe, hit = probe_pass(model, test, args.batch_size, c,
                                        *contrast_scales(c, mode, n_blocks))
            rows.append({"model": label, "run": run_dir, "mode": mode, "c": c, "acc": acc,
                         **{f"nfe_block{i + 1}": float(v) for i, v in enumerate(nfe)},
                         "nfe_total": float(nfe.sum()), "max_steps_batches": hit})
        compiles = len(PROBE_TRACES) - n_traces
        for r in rows:
            if r["model"] == label:
                r["compiles"] = compiles
        print(f"{label}: {len(todo)} (mode, c) settings, {compiles} compile(s)")
    out = {"test_images": len(test), "batch_size": args.batch_size, "tol": args.tol,
           "seconds": time.perf_counter() - t_start, "rows": rows}
    with open(os.path.join(args.out, "contrast.json"), "w") as f:
        json.dump(out, f, indent=2)
    _plot_contrast(rows, os.path.join(args.out, "contrast.png"))
    for r in rows:
        print(f"{r['model']:>14} {r['mode']:>6} c={r['c']:<8.4g} acc {100 * r['acc']:5.1f}%  "
              f"NFE block1 {r['nfe_block1']:6.1f}  total {r['nfe_total']:6.1f}")


def _plot_contrast(rows, path):
    plt = _figure()
    fig, axes = plt.subplots(3, 1, figsize=(5.5, 8), sharex=True)
    keys = sorted({(r["model"], r["mode"]) for r in rows})
    for model, mode in keys:
        rs = sorted((r for r in rows if r["model"] == model and r["mode"] == mode),
                    key=lambda r: r["c"])
        c = [r["c"] for r in rs]
        style = {"naive": "-", "block1": "--", "all": ":"}[mode]
        lab = f"{model} ({mode})"
        axes[0].plot(c, [100 * r["acc"] for r in rs], style, marker=".", label=lab)
        axes[1].plot(c, [r["nfe_block1"] for r in rs], style, marker=".", label=lab)
        axes[2].plot(c, [r["nfe_total"] for r in rs], style, marker=".", label=lab)
    axes[0].set_ylabel("test accuracy [%]")
    axes[1].set_ylabel("NFE, ODE block 1")
    axes[2].set_ylabel("NFE, all ODE blocks")
    axes[2].set_xlabel("contrast c")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)




def cmd_completion(args, models, test):
    """Fig. 3c and Fig. 4: accuracy with a zero centre square of growing size, and
    D(t) inside block 1 (eq. 4) for intact vs masked images, with example maps."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from jaxode.models.dcn_probes import (block1_trajectory, centre_mask, feature_difference,
                                          probe_batches, probe_pass)

    sizes = [int(n) for n in cli.split_list(args.mask_sizes)]
    os.makedirs(args.out, exist_ok=True)

    @eqx.filter_jit
    def trajectories(model, x, n, ts):
        both, _ = block1_trajectory(model, jnp.concatenate([x, centre_mask(x, n)]), ts)
        h, hm = both[: x.shape[0]], both[x.shape[0]:]
        return feature_difference(h, hm), h, hm

    result = {"test_images": len(test), "d_images": min(args.d_images, len(test)),
              "d_mask_size": args.d_mask_size, "models": {}}
    t_start = time.perf_counter()
    for label, (model, run_dir, cfg) in models.items():
        accs = {}
        ones = jnp.ones((len(model.blocks),), jnp.float32)
        for n in tqdm(sizes, desc=f"masks {label}"):
            accs[n] = probe_pass(model, test, args.batch_size, 1.0, ones, ones, n)[0]
        block = model.blocks[0]
        ode = hasattr(block, "t1")
        ts = (np.linspace(float(block.t0), float(block.t1), args.times) if ode
              else np.array([0.0, 1.0]))
        d_test = test.subset(np.arange(result["d_images"]))
        ds, example = [], None
        for x, _, k in tqdm(list(probe_batches(d_test, args.batch_size)), desc=f"D(t) {label}"):
            d, h, hm = jax.device_get(trajectories(model, x, jnp.int32(args.d_mask_size),
                                                   jnp.asarray(ts, jnp.float32)))
            ds.append(d[:k])
            if example is None:
                example = (np.asarray(x[0]), np.asarray(centre_mask(x[:1], args.d_mask_size)[0]),
                           h[0], hm[0])
        d = np.concatenate(ds)
        result["models"][label] = {
            "run": run_dir, "accuracy_by_mask_size": {str(n): a for n, a in accs.items()},
            "t": ts.tolist(), "D_mean": d.mean(0).tolist(), "D_std": d.std(0).tolist()}
        _plot_maps(example, ts, os.path.join(args.out, f"completion_maps_{label}.png"), label)
    result["seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "completion.json"), "w") as f:
        json.dump(result, f, indent=2)
    _plot_completion(result, os.path.join(args.out, "completion.png"))
    for label, r in result["models"].items():
        acc = ", ".join(f"{n}: {100 * a:.1f}%" for n, a in r["accuracy_by_mask_size"].items())
        print(f"{label}: accuracy by mask size {acc}; D(t0) {r['D_mean'][0]:.3f} -> "
              f"D(T) {r['D_mean'][-1]:.3f}")


def _plot_completion(result, path):
    plt = _figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, r in result["models"].items():
        sizes = [int(n) for n in r["accuracy_by_mask_size"]]
        a.plot(sizes, [100 * v for v in r["accuracy_by_mask_size"].values()], "o-", label=label)
        t, m, s = (np.asarray(r[k]) for k in ("t", "D_mean", "D_std"))
        b.plot(t, m, label=label)
        b.fill_between(t, m - s, m + s, alpha=0.2)
    a.set_xlabel("mask size n (n x n zero pixels)")
    a.set_ylabel("test accuracy [%]")
    b.set_xlabel("integration time t (block 1)")
    b.set_ylabel(f"D(t), {result['d_mask_size']}x{result['d_mask_size']} mask")
    b.set_title(f"mean +- std over {result['d_images']} images", fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_maps(example, ts, path, label):
    """Input / masked input and one channel of h(t), h_masked(t) at a few t (Fig. 4);
    the channel is the one the mask changes most at t0."""
    plt = _figure()
    x, xm, h, hm = example
    ch = int(np.argmax(np.abs(h[0] - hm[0]).sum(axis=(1, 2))))
    picks = sorted(set(np.linspace(0, len(ts) - 1, min(4, len(ts))).round().astype(int)))
    fig, axes = plt.subplots(2, len(picks) + 1, figsize=(2 * (len(picks) + 1), 4.2))
    for row, (img, traj, name) in enumerate(((x, h, "intact"), (xm, hm, "masked"))):
        axes[row, 0].imshow(np.clip(np.transpose(img, (1, 2, 0)), 0, 1))
        axes[row, 0].set_title(f"{name} input", fontsize=8)
        lo, hi = float(h[:, ch].min()), float(h[:, ch].max())
        for j, k in enumerate(picks):
            axes[row, j + 1].imshow(traj[k, ch], cmap="viridis", vmin=lo, vmax=hi)
            axes[row, j + 1].set_title(f"{name} h(t={ts[k]:.2f})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{label}, block 1, channel {ch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)




def plot_reconstructions(model, test, path, name, k=8):
    import equinox as eqx

    from jaxode.data.augment import to_model_input
    from jaxode.models.dcn import centre_crop

    plt = _figure()
    pick = np.unique(np.linspace(0, len(test) - 1, min(k, len(test))).round().astype(int))
    x = to_model_input(test.images[pick])  # spread over the split (often sorted by class)
    y, _ = eqx.filter_jit(lambda m, x: m(x))(model, x)
    target, y = np.asarray(centre_crop(x)), np.clip(np.asarray(y), 0, 1)
    fig, axes = plt.subplots(2, len(y), figsize=(1.4 * len(y), 3), squeeze=False)
    for j in range(len(y)):
        axes[0, j].imshow(np.transpose(target[j], (1, 2, 0)))
        axes[1, j].imshow(np.transpose(y[j], (1, 2, 0)))
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].set_title("input (centre 28x28)", fontsize=7, loc="left")
    axes[1, 0].set_title(f"{name} reconstruction", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
