"""Analyses of trained deep continuous networks (Tomen, Pintea & van Gemert, ICML 2021)
over whole test sets and run folders: the contrast sweep (Sec. 3.3, Fig. 5), pattern
completion (Sec. 3.2, Fig. 3c, Fig. 4) and the small-data table (Table 2).

The per-batch math is in `jaxode.models.dcn_probes`; the figures of these results are
in `jaxode.models.dcn_plots`.  ``python -m experiments.dcn contrast|completion|
small-data-table`` call these functions.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import defaultdict

import numpy as np

__all__ = [
    "completion_probe",
    "completion_report",
    "contrast_report",
    "contrast_sweep",
    "load_probe_run",
    "load_probe_runs",
    "small_data_markdown",
    "small_data_report",
    "small_data_rows",
]

CIFAR10_CLASSES = 10


def _no_bar(items, desc=None):
    return items


def _labelled(progress, label):
    """`progress(items, desc)` with the model's label after each description."""
    return None if progress is None else (lambda items, desc: progress(items, f"{desc} {label}"))


def load_probe_run(run_dir: str, tol: float | None = None, max_steps: int | None = None):
    """``(model, config)`` of a DCN training run folder (`jaxode.train.load_run`: the
    newest checkpoint's weights, every SRF grid at the exact size of its learned sigma),
    with every ODE block's solver set to ``on_max_steps="flag"`` (a probe that drives a
    solver to its step limit records it instead of stopping) and, if given,
    rtol = atol = `tol` and the step limit `max_steps` per solve.
    ``config["epoch"]`` is the checkpoint read."""
    from jaxode.models.dcn import MODEL_NAMES
    from jaxode.train import load_run
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
    run = load_run(run_dir)
    changes = {"on_max_steps": "flag"}
    if tol is not None:
        changes.update(rtol=tol, atol=tol)
    if max_steps is not None:
        changes["max_steps"] = max_steps
    return with_solve_config(run.model, **changes), dict(run.config, epoch=run.epoch)


def load_probe_runs(run_dirs, tol: float | None = None, max_steps: int | None = None) -> dict:
    """``{label: (model, run_dir)}`` of `load_probe_run` for several run folders; the
    label is the model's name, numbered (``odenet-2``) when it repeats."""
    models = {}
    for run_dir in run_dirs:
        model, cfg = load_probe_run(run_dir, tol=tol, max_steps=max_steps)
        label, k = cfg["model"], 2
        while label in models:
            label, k = f"{cfg['model']}-{k}", k + 1
        models[label] = (model, run_dir)
    return models


def contrast_sweep(model, test, contrasts, modes, batch_size: int, progress=None) -> list[dict]:
    """Fig. 5: one row per (mode, c) with the test accuracy for the input c H, the mean
    forward NFE of every ODE block and in total, and how many batches hit the solver's
    step limit.  `progress(items, desc)` may wrap the settings in a progress bar."""
    from jaxode.models.dcn_probes import contrast_scales, probe_pass

    todo = [(m, float(c)) for m in modes for c in contrasts]
    rows = []
    for mode, c in (progress or _no_bar)(todo, desc="contrast"):
        acc, nfe, hit = probe_pass(model, test, batch_size, c,
                                   *contrast_scales(c, mode, len(model.blocks)))
        rows.append({"mode": mode, "c": c, "acc": acc,
                     **{f"nfe_block{i + 1}": float(v) for i, v in enumerate(nfe)},
                     "nfe_total": float(nfe.sum()), "max_steps_batches": hit})
    return rows


def contrast_report(models: dict, test, out: str, *, contrasts, modes, batch_size: int,
                    tol: float | None = None, progress=None) -> list[dict]:
    """`contrast_sweep` of every model (``{label: (model, run_dir)}``) into the folder
    `out`: ``contrast.json`` (the rows, each with the number of compilations its model
    needed, and the settings) and ``contrast.png`` (Fig. 5).  Returns the rows."""
    from jaxode.models.dcn_plots import plot_contrast
    from jaxode.models.dcn_probes import PROBE_TRACES

    os.makedirs(out, exist_ok=True)
    rows, t_start = [], time.perf_counter()
    for label, (model, run_dir) in models.items():
        n_traces = len(PROBE_TRACES)
        sweep = contrast_sweep(model, test, contrasts, modes, batch_size,
                               _labelled(progress, label))
        compiles = len(PROBE_TRACES) - n_traces
        rows += [{"model": label, "run": run_dir, **r, "compiles": compiles} for r in sweep]
    with open(os.path.join(out, "contrast.json"), "w") as f:
        json.dump({"test_images": len(test), "batch_size": batch_size, "tol": tol,
                   "seconds": time.perf_counter() - t_start, "rows": rows}, f, indent=2)
    plot_contrast(rows, os.path.join(out, "contrast.png"))
    return rows


def completion_probe(model, test, *, mask_sizes, d_mask_size: int, d_images: int,
                     times: int, batch_size: int, progress=None):
    """Fig. 3c and Fig. 4: ``(result, example)``.  `result` holds the test accuracy with
    an n x n zero centre square for every n of `mask_sizes`, and D(t) of eq. 4 (mean and
    std over the first `d_images` test images) inside ODE block 1 at `times` points of
    [t0, T] (t in {0, 1} for a residual block); `example` is ``(x, x_masked, h,
    h_masked)`` of the first image, for `dcn_plots.plot_feature_maps`."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxode.models.dcn_probes import (
        block1_trajectory,
        centre_mask,
        feature_difference,
        probe_batches,
        probe_pass,
    )

    progress = progress or _no_bar

    @eqx.filter_jit
    def trajectories(model, x, n, ts):
        both, _ = block1_trajectory(model, jnp.concatenate([x, centre_mask(x, n)]), ts)
        h, hm = both[: x.shape[0]], both[x.shape[0]:]
        return feature_difference(h, hm), h, hm

    ones = jnp.ones((len(model.blocks),), jnp.float32)
    accs = {n: probe_pass(model, test, batch_size, 1.0, ones, ones, n)[0]
            for n in progress(list(mask_sizes), desc="masks")}
    block = model.blocks[0]
    ts = (np.linspace(float(block.t0), float(block.t1), times) if hasattr(block, "t1")
          else np.array([0.0, 1.0]))
    d_test = test.subset(np.arange(min(d_images, len(test))))
    ds, example = [], None
    for x, _, k in progress(list(probe_batches(d_test, batch_size)), desc="D(t)"):
        d, h, hm = jax.device_get(trajectories(model, x, jnp.int32(d_mask_size),
                                               jnp.asarray(ts, jnp.float32)))
        ds.append(d[:k])
        if example is None:
            example = (np.asarray(x[0]), np.asarray(centre_mask(x[:1], d_mask_size)[0]),
                       h[0], hm[0])
    d = np.concatenate(ds)
    result = {"accuracy_by_mask_size": {str(n): a for n, a in accs.items()},
              "t": ts.tolist(), "D_mean": d.mean(0).tolist(), "D_std": d.std(0).tolist()}
    return result, example


def completion_report(models: dict, test, out: str, *, d_images: int, d_mask_size: int,
                      progress=None, **settings) -> dict:
    """`completion_probe` of every model (``{label: (model, run_dir)}``) into the folder
    `out`: ``completion.json``, ``completion.png`` (Fig. 3c and D(t)) and
    ``completion_maps_LABEL.png`` (Fig. 4).  `settings`: mask_sizes, times, batch_size."""
    from jaxode.models.dcn_plots import plot_completion, plot_feature_maps

    os.makedirs(out, exist_ok=True)
    result = {"test_images": len(test), "d_images": min(d_images, len(test)),
              "d_mask_size": d_mask_size, "models": {}}
    t_start = time.perf_counter()
    for label, (model, run_dir) in models.items():
        r, example = completion_probe(model, test, d_images=d_images, d_mask_size=d_mask_size,
                                      progress=_labelled(progress, label), **settings)
        result["models"][label] = {"run": run_dir, **r}
        plot_feature_maps(example, np.asarray(r["t"]),
                          os.path.join(out, f"completion_maps_{label}.png"), label)
    result["seconds"] = time.perf_counter() - t_start
    with open(os.path.join(out, "completion.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot_completion(result, os.path.join(out, "completion.png"))
    return result


def small_data_rows(folder: str) -> tuple[list[dict], list[str]]:
    """Table 2 from the ``*/summary.json`` of small-data runs in `folder`: one row per
    (model, images per class) with the per-seed accuracies of the last evaluation, their
    mean and population std (ddof 0), and the run folders that have not finished (no
    summary, or no evaluation), which are listed, never guessed."""
    groups: dict[tuple[str, int], dict] = defaultdict(lambda: {"seeds": [], "accs": []})
    unfinished = []
    for run in sorted(glob.glob(os.path.join(folder, "*", ""))):
        path = os.path.join(run, "summary.json")
        s = None
        if os.path.exists(path):
            with open(path) as f:
                s = json.load(f)
        if s is None or s.get("final_eval_acc") is None:
            unfinished.append(run.rstrip(os.sep))
            continue
        g = groups[(s["model"], s["train_images"] // CIFAR10_CLASSES)]
        g["seeds"].append(s["seed"])
        g["accs"].append(100.0 * s["final_eval_acc"])
        g.update(params=s.get("params"), epochs=s.get("epochs"), test_images=s.get("test_images"))
    rows = []
    for (model, per_class), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        accs = np.asarray(g["accs"])
        rows.append({"model": model, "per_class": per_class, **g,
                     "mean": float(accs.mean()), "std": float(accs.std())})
    return rows, unfinished


def small_data_markdown(rows: list[dict]) -> str:
    """`small_data_rows` as a Markdown table."""
    lines = ["| model | images / class | params | epochs | test images | accuracy % (mean +- std) "
             "| seeds: accuracy % |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{s}: {a:.1f}" for s, a in zip(r["seeds"], r["accs"]))
        lines.append(f"| {r['model']} | {r['per_class']} | {r['params']:,} | {r['epochs']} | "
                     f"{r['test_images']} | {r['mean']:.1f} +- {r['std']:.1f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def small_data_report(folder: str, out: str) -> tuple[list[dict], list[str]]:
    """Table 2 of the small-data runs in `folder` as ``OUT.md``, ``OUT.json`` (rows and
    unfinished runs) and ``OUT.png``; returns ``small_data_rows(folder)``.  Raises
    ValueError (writing nothing) when no run has finished."""
    from jaxode.models.dcn_plots import plot_small_data

    rows, unfinished = small_data_rows(folder)
    if not rows:
        raise ValueError(f"no finished small-data run (RUN/summary.json) in {folder!r}; run "
                         "`python -m experiments.dcn small-data --name FOLDER` first.")
    with open(out + ".md", "w") as f:
        f.write(small_data_markdown(rows))
    with open(out + ".json", "w") as f:
        json.dump({"rows": rows, "unfinished": unfinished}, f, indent=2)
    plot_small_data(rows, out + ".png")
    return rows, unfinished
