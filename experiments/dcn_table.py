"""Table 2 of Tomen et al. (2021) from finished small-data runs: test accuracy per
model and training-set size, mean +- std over seeds, and the same as a plot.

`python -m experiments.dcn small-data-table RUNS` reads every ``RUNS/*/summary.json``
written by `experiments.dcn small-data` (one folder per model, size and seed) and
groups them by (model, images per class).  The accuracy is the last evaluation of
each run (``final_eval_acc``); the std is numpy's population std (ddof 0), as the
small-data command prints it.  Runs that have not finished (no ``summary.json``) are
listed and skipped, never guessed.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

import numpy as np

CIFAR10_CLASSES = 10


def collect(folder: str) -> tuple[list[dict], list[str]]:
    """(rows, unfinished): one row per (model, images per class) with the per-seed
    accuracies, and the run folders in `folder` without a summary."""
    groups: dict[tuple[str, int], dict] = defaultdict(lambda: {"seeds": [], "accs": []})
    unfinished = []
    for run in sorted(glob.glob(os.path.join(folder, "*", ""))):
        path = os.path.join(run, "summary.json")
        if not os.path.exists(path):
            unfinished.append(run.rstrip(os.sep))
            continue
        with open(path) as f:
            s = json.load(f)
        if s.get("final_eval_acc") is None:
            unfinished.append(run.rstrip(os.sep))
            continue
        key = (s["model"], s["train_images"] // CIFAR10_CLASSES)
        g = groups[key]
        g["seeds"].append(s["seed"])
        g["accs"].append(100.0 * s["final_eval_acc"])
        g.update(params=s.get("params"), epochs=s.get("epochs"), test_images=s.get("test_images"))
    rows = []
    for (model, per_class), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        accs = np.asarray(g["accs"])
        rows.append({"model": model, "per_class": per_class, "seeds": g["seeds"],
                     "accs": g["accs"], "mean": float(accs.mean()), "std": float(accs.std()),
                     "params": g["params"], "epochs": g["epochs"],
                     "test_images": g["test_images"]})
    return rows, unfinished


def markdown(rows: list[dict]) -> str:
    lines = ["| model | images / class | params | epochs | test images | accuracy % (mean +- std) "
             "| seeds: accuracy % |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{s}: {a:.1f}" for s, a in zip(r["seeds"], r["accs"]))
        lines.append(f"| {r['model']} | {r['per_class']} | {r['params']:,} | {r['epochs']} | "
                     f"{r['test_images']} | {r['mean']:.1f} +- {r['std']:.1f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        ax.errorbar([r["per_class"] for r in rs], [r["mean"] for r in rs],
                    yerr=[r["std"] for r in rs], marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(folder: str, out: str) -> list[dict]:
    """Collect `folder`, write `out`.md, `out`.json and `out`.png; return the rows."""
    rows, unfinished = collect(folder)
    if not rows:
        raise SystemExit(f"error: no finished small-data run (RUN/summary.json) in {folder!r}; "
                         "run `python -m experiments.dcn small-data --run FOLDER` first.")
    for run in unfinished:
        print(f"skipped (not finished): {run}")
    text = markdown(rows)
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".json", "w") as f:
        json.dump({"rows": rows, "unfinished": unfinished}, f, indent=2)
    plot(rows, out + ".png")
    print(text)
    return rows
