"""Deep Continuous Networks (Tomen, Pintea & van Gemert, ICML 2021): experiment recipes.

Subcommands (each has ``--config smoke`` for a CPU check and ``--config paper``):

- ``classify``: CIFAR-10 classification (Tables 1 and 5) with any model of
  `jaxode.models.dcn.MODEL_NAMES`; writes the learned sigma of every SRF layer
  (Fig. 3a) and, for ``dcn_sigma_ji``, the sigma^ji histograms per block (Fig. 3b).
- ``small-data``: the small-data regime (Table 2): K images per class drawn with
  replacement from each class, several seeds, mean +- std; epochs and learning-rate
  milestones multiplied by a factor (supplement A.2).
- ``small-data-table``: Table 2 (mean +- std over seeds) from finished small-data runs.
- ``kernel-cost``: time per training step of the kernel-support strategies of
  `jaxode.nn.srf` (exact-size grid, separable 1-D passes, fixed maximal grid with
  masking, `lax.switch`).
- ``contrast``: accuracy and forward NFE (per ODE block, total) of trained runs under
  input contrast c, naive and with the integration time scaled by c (Fig. 5).
- ``completion``: accuracy with a zero centre square of growing size (Fig. 3c) and the
  intact-vs-masked feature difference D(t) inside ODE block 1 (eq. 4, Fig. 4).
- ``reconstruct``: the A.4 encoder-decoder trained with MSE on CIFAR-10 (Table 3).

The probes' math is in `jaxode.models.dcn_probes`.

Example::

    python -m experiments.dcn classify --model dcn_ode --config smoke --data-root ../shared/data
    python -m experiments.dcn classify --model dcn_ode --config paper
    python -m experiments.dcn small-data --model dcn_ode --per-class 20 --seeds 0,1,2
    python -m experiments.dcn kernel-cost --widths 16,32,64 --batch 8
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
import time

import numpy as np

from jaxode import cli

PAPER = dict(epochs=100, batch_size=128, lr=0.1, milestones=(40, 70), train_limit=None,
             test_limit=None, widths=(32, 64, 128), tol=1e-3, support="separable")
SMOKE = dict(epochs=1, batch_size=16, lr=0.1, milestones=(), train_limit=64, test_limit=64,
             widths=(8, 16, 32), tol=1e-2, support="separable")
CONFIGS = {"paper": PAPER, "smoke": SMOKE}
SUPPORT_MODES = ("exact", "separable", "max", "switch")  # `jaxode.nn.srf.refresh_support`


def _resolve(args) -> dict:
    cfg = dict(CONFIGS[args.config])
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


def _limit(ds, n, seed=0):
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ds.subset(np.sort(idx))


def _with_support(model, support, max_half_width, margin):
    """Set the SRF kernel support of `model` (`--support`; docs/dcn_kernel_size.md)."""
    from jaxode.nn.srf import refresh_support

    if support == "margin":  # per-layer grid r(sigma_init) + margin, masked
        return refresh_support(model, "exact", margin=margin)
    if support == "separable":  # the grid only bounds the truncation: keep the default
        return refresh_support(model, "separable")
    return refresh_support(model, support, max_half_width=max_half_width)


def _build(name, cfg, key, max_half_width, support="separable", margin=1):
    from jaxode.models.dcn import build_model
    from jaxode.ode import SolveConfig

    solver = cfg.get("solver", "dopri5")  # a fixed-step solver (--num-steps) for quick checks
    model = build_model(name, key=key, widths=cfg["widths"],
                        config=SolveConfig(solver=solver, rtol=cfg["tol"], atol=cfg["tol"],
                                           num_steps=cfg.get("num_steps")))
    return _with_support(model, support, max_half_width, margin)


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
           epochs, progress=True, support="separable", margin=1, eval_every=1, resume=False):
    import jax

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
    _plot_scales(scales, os.path.join(run_path, "learned"))
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
        train = _limit(load_dataset("cifar10", "train", root=args.data_root), cfg["train_limit"])
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), cfg["test_limit"])
    _check_train_set(cfg, train, test)
    run_path = _classify_run_path(args)
    s = _train(args.model, cfg, train, test, run_path, args.seed, args.max_half_width,
               cfg["milestones"], cfg["epochs"], support=cfg["support"], margin=args.margin,
               eval_every=args.eval_every, resume=args.resume)
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
    with cli.data_errors_exit():
        train_all = load_dataset("cifar10", "train", root=args.data_root)
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), cfg["test_limit"])
    factor = args.epoch_factor
    epochs = cfg["epochs"] * factor
    milestones = tuple(m * factor for m in cfg["milestones"])
    with cli.data_errors_exit():
        subsets = [small_data_subset(train_all, args.per_class, seed) for seed in _seeds(args)]
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


def cmd_kernel_cost(args):
    """Median time of one jitted training step (value and gradient) of a DCN-ODE for each
    support strategy of `--modes`; also the compile time and the forward NFE."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxode.models.dcn import build_model
    from jaxode.nn.srf import half_width_host, srf_layers
    from jaxode.ode import SolveConfig

    widths = tuple(int(w) for w in args.widths.split(","))
    cfg = SolveConfig(rtol=args.tol, atol=args.tol)
    base = build_model(args.model, key=jax.random.PRNGKey(0), widths=widths, config=cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 3, 32, 32))
    y = jnp.arange(args.batch) % 10
    print("sigma per SRF layer:", [round(float(lay.sigma_range()[1]), 3) for lay in srf_layers(base)])
    print("exact half-widths r(sigma):",
          [half_width_host(lay.sigma_range()[1]) for lay in srf_layers(base)])

    def loss(m):
        logits, aux = m(x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(args.batch), y]), aux

    step = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    rows = []
    for mode in args.modes.split(","):
        m = _with_support(base, mode, args.max_half_width, margin=0)
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


# ------------------------------------------------------------- probes of trained runs


def load_run(run_dir: str, tol: float | None = None, max_steps: int | None = None):
    """``(model, config)`` of a `classify` / `small-data` run folder: the model's shapes
    from ``config.json``, the newest checkpoint's weights read into them, every SRF grid set to
    the exact size of its learned sigma and every ODE block's solver set to
    ``on_max_steps="flag"`` (a probe that drives a solver to its step limit records it
    instead of stopping) and, if given, rtol = atol = `tol` and the step limit
    `max_steps` per solve."""
    import equinox as eqx
    import jax

    from jaxode.models.dcn import DCNClassifier
    from jaxode.nn.srf import refresh_support
    from jaxode.ode import ODEBlock, SolveConfig
    from jaxode.train import latest_checkpoint

    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; --checkpoint takes the run folder of a "
                                "'classify' or 'small-data' run.")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("model") not in _model_names():
        raise ValueError(f"{path} names no DCN model ('model': {cfg.get('model')!r}); "
                         "--checkpoint takes a run folder of experiments.dcn.")
    if (cfg.get("train") or {}).get("ema_decay") is not None:
        raise ValueError(f"{run_dir} kept EMA weights; these probes read the raw model only.")
    cfg["widths"] = tuple(cfg["widths"])
    ckpt = os.path.join(run_dir, "checkpoints")
    epoch = latest_checkpoint(ckpt) if os.path.isdir(ckpt) else None
    if epoch is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt}; train the model first.")
    # the template's values are never used: build its shapes only (no compilation); the
    # SRF support is set below (separable: its shapes do not depend on the loaded sigma)
    template = eqx.filter_eval_shape(
        lambda k: DCNClassifier(cfg["model"], cfg["widths"],
                                config=SolveConfig(rtol=cfg["tol"], atol=cfg["tol"]), key=k),
        jax.random.PRNGKey(0))
    file = os.path.join(ckpt, f"ckpt-{epoch:04d}.eqx")
    try:  # leaves in PyTree order of {"ema", "model", "opt_state"}: read up to the model
        model = eqx.tree_deserialise_leaves(file, {"ema": None, "model": template})["model"]
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"could not read {file} into the {cfg['model']!r} model built from "
                         f"config.json ({type(e).__name__}: {str(e)[:200]}).") from e
    model = refresh_support(model, "separable")

    def solver(node):
        if not isinstance(node, ODEBlock):
            return node
        new = dataclasses.replace(node.config, on_max_steps="flag")
        if tol is not None:
            new = dataclasses.replace(new, rtol=tol, atol=tol)
        if max_steps is not None:
            new = dataclasses.replace(new, max_steps=max_steps)
        return eqx.tree_at(lambda b: b.config, node, new)

    model = jax.tree_util.tree_map(solver, model, is_leaf=lambda n: isinstance(n, ODEBlock))
    cfg["epoch"] = epoch
    return model, cfg


def _contrast_modes():
    from jaxode.models.dcn_probes import CONTRAST_MODES

    return CONTRAST_MODES


def _model_names():
    from jaxode.models.dcn import MODEL_NAMES

    return MODEL_NAMES


def _test_batches(test, batch_size):
    """Fixed-size float batches (N, 3, H, W) of the test set, the last one padded by
    repeating images; yields ``(x, labels, n_real)``."""
    from jaxode.data.augment import to_model_input

    n = len(test)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        images, labels = test.images[idx], test.labels[idx]
        yield to_model_input(images), labels, min(batch_size, n - start)


def _load_probe_inputs(args):
    """Models of every --checkpoint (label = model name, numbered if repeated) and the
    (limited) CIFAR-10 test split."""
    from jaxode.data.load import load_dataset

    with cli.data_errors_exit():
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), args.test_limit,
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


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_TRACES: list = []  # one entry per trace (compilation) of the probe step
_PROBE_STEP = None


def _probe_step():
    """The jitted probe of `contrast` and `completion`: correct predictions, forward NFE
    per ODE block (batch mean) and step-limit flags for the input ``c * mask(x, n)``
    with block-wise time and input factors (`jaxode.models.dcn_probes`).  c, the
    factors, n and the blocks' t1 are traced: one compiled program per model shape
    serves every contrast, mode and mask size."""
    global _PROBE_STEP
    if _PROBE_STEP is None:
        import equinox as eqx
        import jax.numpy as jnp

        from jaxode.models.dcn_probes import centre_mask, scaled_forward

        @eqx.filter_jit
        def step(model, x, y, c, time_scale, input_scale, mask_size):
            _TRACES.append(1)
            logits, stats = scaled_forward(model, centre_mask(x, mask_size), c, time_scale,
                                           input_scale)
            correct = jnp.argmax(logits, -1) == y
            nfe = jnp.stack([jnp.asarray(s.nfe, jnp.float32).mean() for s in stats] or [0.0])
            hit = jnp.stack([jnp.asarray(s.max_steps_reached).any() for s in stats] or [False])
            return correct, nfe, hit

        _PROBE_STEP = step
    return _PROBE_STEP


def _probe_pass(model, test, batch_size, c, time_scale, input_scale, mask_size=0):
    """Accuracy, mean forward NFE per ODE block (per batch) and the number of batches
    that hit the step limit, over the whole `test` set."""
    import jax
    import jax.numpy as jnp

    step = _probe_step()
    correct, count, nfes, hits = 0, 0, [], []
    for x, y, n in _test_batches(test, batch_size):
        ok, nfe, hit = jax.device_get(step(model, x, jnp.asarray(y), jnp.float32(c), time_scale,
                                           input_scale, jnp.int32(mask_size)))
        correct += int(np.sum(ok[:n]))
        count += n
        nfes.append(nfe)
        hits.append(hit)
    return correct / count, np.mean(nfes, axis=0), int(np.sum(np.any(hits, axis=1)))


def cmd_contrast(args):
    """Fig. 5: accuracy and forward NFE (per ODE block and total, per batch) under input
    contrast c, naive and with scaled integration times (`jaxode.models.dcn_probes`)."""
    from tqdm.auto import tqdm

    from jaxode.models.dcn_probes import contrast_scales

    contrasts = [float(c) for c in cli.split_list(args.contrasts)]
    modes = cli.split_list(args.modes)
    models, test = _load_probe_inputs(args)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for label, (model, run_dir, cfg) in models.items():
        n_traces, n_blocks = len(_TRACES), len(model.blocks)
        todo = [(m, c) for m in modes for c in contrasts]
        for mode, c in tqdm(todo, desc=f"contrast {label}"):
            acc, nfe, hit = _probe_pass(model, test, args.batch_size, c,
                                        *contrast_scales(c, mode, n_blocks))
            rows.append({"model": label, "run": run_dir, "mode": mode, "c": c, "acc": acc,
                         **{f"nfe_block{i + 1}": float(v) for i, v in enumerate(nfe)},
                         "nfe_total": float(nfe.sum()), "max_steps_batches": hit})
        compiles = len(_TRACES) - n_traces
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


def cmd_completion(args):
    """Fig. 3c and Fig. 4: accuracy with a zero centre square of growing size, and
    D(t) inside block 1 (eq. 4) for intact vs masked images, with example maps."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from jaxode.models.dcn_probes import block1_trajectory, centre_mask, feature_difference

    sizes = [int(n) for n in cli.split_list(args.mask_sizes)]
    models, test = _load_probe_inputs(args)
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
            accs[n] = _probe_pass(model, test, args.batch_size, 1.0, ones, ones, n)[0]
        block = model.blocks[0]
        ode = hasattr(block, "t1")
        ts = (np.linspace(float(block.t0), float(block.t1), args.times) if ode
              else np.array([0.0, 1.0]))
        d_test = test.subset(np.arange(result["d_images"]))
        ds, example = [], None
        for x, _, k in tqdm(list(_test_batches(d_test, args.batch_size)), desc=f"D(t) {label}"):
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


def cmd_reconstruct(args):
    """Table 3: train the A.4 encoder-decoder (`DCNAutoencoder`) with MSE against the
    centre 28x28 crop; report test MSE; draw example reconstructions."""
    import jax

    from jaxode.data.load import load_dataset
    from jaxode.models.dcn import build_autoencoder
    from jaxode.models.dcn_probes import ReconstructionTask
    from jaxode.nn.srf import support_overflow
    from jaxode.ode import SolveConfig
    from jaxode.train import RunDir, TrainConfig, dataset_batches, fit
    from jaxode.train.utils import count_params

    cfg = _resolve(args)
    if args.config == "paper" and args.epochs is None:  # reference code: 50 epochs, 25/40
        cfg["epochs"], cfg["milestones"] = 50, (25, 40)
    with cli.data_errors_exit():
        train = _limit(load_dataset("cifar10", "train", root=args.data_root), cfg["train_limit"])
        test = _limit(load_dataset("cifar10", "test", root=args.data_root), cfg["test_limit"])
        if args.checkpoint:
            encoder, enc_cfg = load_run(args.checkpoint)
            cfg["widths"], cfg["tol"] = enc_cfg["widths"], enc_cfg["tol"]
            name = enc_cfg["model"]
        else:
            encoder, name = None, args.model
    _check_train_set(cfg, train, test)
    solve = SolveConfig(rtol=cfg["tol"], atol=cfg["tol"])
    if encoder is None:
        encoder = _build(name, cfg, jax.random.PRNGKey(args.seed), args.max_half_width,
                         cfg["support"], args.margin)
    else:  # training again: on_max_steps back to "raise", tolerances of the config
        encoder = _with_solver(encoder, solve)
    ae = build_autoencoder(encoder, key=jax.random.PRNGKey(args.seed + 1), config=solve)
    ae = _with_support(ae, cfg["support"], args.max_half_width, args.margin)
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
    _plot_reconstructions(result.model, test, os.path.join(run_path, "reconstructions.png"),
                          name)
    print(json.dumps(summary, indent=2))


def _with_solver(model, solve):
    import equinox as eqx
    import jax

    from jaxode.ode import ODEBlock

    def fix(node):
        if isinstance(node, ODEBlock):
            return eqx.tree_at(lambda b: b.config, node, solve)
        return node

    return jax.tree_util.tree_map(fix, model, is_leaf=lambda n: isinstance(n, ODEBlock))


def _plot_reconstructions(model, test, path, name, k=8):
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
    if args.cmd == "kernel-cost":
        cli.check_args(parser, args, positive=("batch", "tol", "max_half_width", "repeats"))
        cli.check_new_file(parser, "--out", args.out)
        cli.check_list(parser, "modes", args.modes, choices=SUPPORT_MODES)
        return
    if args.cmd in ("contrast", "completion"):
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
            cli.check_list(parser, "modes", args.modes, choices=_contrast_modes())
        else:
            sizes = cli.check_list(parser, "mask_sizes", args.mask_sizes, kind=int, minimum=0)
            if max(sizes + [args.d_mask_size]) > 32:
                parser.error("argument --mask-sizes/--d-mask-size: a mask larger than the "
                             "32x32 image; give sizes <= 32.")
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
    q = sub.add_parser("kernel-cost", help="cost of the kernel-support strategies")
    q.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
    q.add_argument("--widths", default="16,32,64")
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--tol", type=float, default=1e-3)
    q.add_argument("--max-half-width", type=int, default=8)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--modes", default="exact,separable,max,switch",
                   help="comma-separated support strategies to time (the first is the "
                        "reference of the ratios): exact, separable, max, switch")
    q.add_argument("--out", default=None)
    q.set_defaults(fn=cmd_kernel_cost)

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
    q.set_defaults(fn=cmd_contrast)
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
    q.set_defaults(fn=cmd_completion)
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
