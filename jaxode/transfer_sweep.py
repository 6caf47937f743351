"""The transfer measurement of Carrara et al. (Sec. 4.3, Fig. 2) over feature times: a
linear SVM per time t on the frozen features z(t) (`jaxode.transfer.cached_svm_cv`),
the comparison at one time t* with a new linear head on a held-out split, and the
results table and figure.

`svm_sweep` gives one row per time with the mean k-fold CV accuracy at the best C (the
number Carrara et al. report); `finetune_compare` scores the SVM and the linear head on
one stratified 80/20 split (`heldout_split`), which the whole-network fine-tune of
``experiments.transfer`` shares.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence

import numpy as np

from jaxode import transfer as tr

__all__ = [
    "finetune_compare",
    "heldout_datasets",
    "heldout_split",
    "load_source_runs",
    "measure_model",
    "plot_accuracy_vs_t",
    "summary_line",
    "svm_indices",
    "svm_sweep",
    "write_results",
]


def load_source_runs(specs: Sequence[str]) -> dict[str, dict]:
    """The trained source networks of ``NAME=RUN_DIR`` specs (`jaxode.train.load_run`):
    ``{NAME: {"model", "norm", "source", "cifar_acc": None}}``.  Raises ValueError for a
    network trained on grey images (the target set is RGB)."""
    from jaxode.train import load_run

    models = {}
    for spec in specs:
        name, run_dir = spec.split("=", 1)
        run = load_run(run_dir)
        channels = getattr(run.model, "in_channels", 3)
        if channels != 3:
            raise ValueError(f"--checkpoint {name}={run_dir}: that model was trained on "
                             f"{channels}-channel (grey) images, but Tiny-ImageNet is RGB; pass "
                             "a run trained on RGB images (e.g. CIFAR-10, --config "
                             "carrara-cifar10-*) or use --quick-train.")
        models[name] = {"model": run.model, "cifar_acc": None, "source": run_dir,
                        "norm": run.norm}
    return models


def svm_indices(times: np.ndarray, kind: str, step: float | None) -> list[int]:
    """Indices of the feature times the SVM is run at: all for the Residual Net and
    when `step` is None, else the ODE times that are multiples of `step`, and t = 1."""
    last = len(times) - 1
    if kind != "ode" or step is None:
        return list(range(len(times)))
    picked = [j for j, t in enumerate(times) if abs(t / step - round(t / step)) < 1e-6]
    return picked if last in picked else picked + [last]


def svm_sweep(cache_dir: str, name: str, feats: np.ndarray, y: np.ndarray, times: np.ndarray,
              *, kind: str, Cs: Sequence[float], folds: int, seed: int, n_jobs: int,
              solver: str, step: float | None = None, progress: Callable | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """One row per feature time of `svm_indices`: the SVM's mean CV accuracy (and std
    over folds) at its best C on ``feats[:, j]`` (N, T, F), cached in `cache_dir`."""
    rows = []
    for j in (progress or (lambda xs: xs))(svm_indices(times, kind, step)):
        r = tr.cached_svm_cv(cache_dir, feats[:, j], y, Cs=Cs, folds=folds, seed=seed,
                             n_jobs=n_jobs, solver=solver)
        rows.append({"model": name, "kind": kind, "index": j, "t": float(times[j]),
                     "cv_accuracy": r["cv_accuracy"], "cv_std": r["cv_std"],
                     "best_C": r["best_C"], "dual": r["dual"], "n_features": feats.shape[2]})
        log(f"  {name} t={times[j]:.2f}: CV acc {r['cv_accuracy']:.4f} ± {r['cv_std']:.4f} "
            f"(C={r['best_C']:g})")
    return rows


def measure_model(cache_dir: str, name: str, entry: dict, images: np.ndarray, y: np.ndarray,
                  ts: Sequence[float], *, data_key: str, batch_size: int, svm: dict,
                  step: float | None = None, progress: Callable | None = None,
                  log: Callable[[str], None] = print):
    """Features of one source network (`entry` of `load_source_runs`) at the times `ts`
    (`jaxode.transfer.cached_features`) and its `svm_sweep` (`svm`: Cs, folds, seed,
    n_jobs, solver).  Returns ``(rows, info, feats, times)``; `info` holds the best t
    (the first of equal maxima), the accuracy at t = 1 and the feature time."""
    import time

    model, norm, t_start = entry["model"], entry["norm"], time.perf_counter()
    feats = tr.cached_features(cache_dir, model, images, ts=ts, data_key=data_key,
                               batch_size=batch_size, desc=f"features {name}",
                               mean=None if norm is None else tuple(norm[0]),
                               std=None if norm is None else tuple(norm[1]))
    t_feat = time.perf_counter() - t_start
    times, kind = tr.feature_times(model, ts), "ode" if tr.is_ode_model(model) else "resnet"
    log(f"{name}: features {feats.shape} in {t_feat:.0f} s")
    rows = svm_sweep(cache_dir, name, feats, y, times, kind=kind, step=step,
                     progress=progress, log=log, **svm)
    best = max(rows, key=lambda r: r["cv_accuracy"])
    info = {"kind": kind, "source": entry["source"], "cifar10_acc": entry["cifar_acc"],
            "best_t": best["t"], "best_cv_accuracy": float(best["cv_accuracy"]),
            "cv_accuracy_at_t1": float(rows[-1]["cv_accuracy"]), "feature_seconds": t_feat,
            "n_features": int(feats.shape[2])}
    return rows, info, feats, times


def heldout_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split every fine-tune comparison shares: stratified 80/20."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)


def heldout_datasets(images: np.ndarray, y: np.ndarray, n_classes: int, seed: int):
    """The two parts of `heldout_split` as `jaxode.data.Dataset` s (train 80 %, val 20 %),
    for the whole-network fine-tune through `jaxode.train.fit`."""
    from jaxode.data import Dataset

    names = tuple(str(c) for c in range(n_classes))
    return tuple(Dataset(images[i], y[i].astype(np.int32), n_classes, names,
                         f"tiny-imagenet/val[{part}]")
                 for i, part in zip(heldout_split(y, seed), ("80%", "20%")))


def finetune_compare(X: np.ndarray, y: np.ndarray, n_classes: int, *, Cs: Sequence[float],
                     folds: int, seed: int, n_jobs: int, solver: str,
                     head_epochs: int | None) -> dict:
    """At one time t*: the SVM (C by CV on the 80 %) and, unless `head_epochs` is None, a
    new linear head trained on the frozen features (`jaxode.transfer.linear_probe`),
    both scored on the 20 % of `heldout_split`."""
    i_tr, i_va = heldout_split(y, seed)
    svm = tr.svm_cv(X[i_tr], y[i_tr], Cs=Cs, folds=folds, seed=seed, n_jobs=n_jobs,
                    solver=solver)
    out = {"split": "stratified 80/20", "n_train": len(i_tr), "n_val": len(i_va),
           "svm_val_accuracy": float(np.mean(svm["model"].predict(X[i_va]) == y[i_va])),
           "svm_best_C": svm["best_C"]}
    if head_epochs is not None:
        head = tr.linear_probe(X[i_tr], y[i_tr], X[i_va], y[i_va], num_classes=n_classes,
                               epochs=head_epochs, seed=seed)
        out.update(head_val_accuracy=head["val_accuracy"],
                   head_train_accuracy=head["train_accuracy"])
    return out


def write_results(out: str, rows: list[dict], summary: dict, *, folds: int) -> None:
    """The results of a transfer run in the folder `out`: ``results.csv`` (the
    `svm_sweep` rows of every model), ``accuracy_vs_t.png`` and ``summary.json``."""
    import json
    import os

    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_accuracy_vs_t(rows, os.path.join(out, "accuracy_vs_t.png"), folds=folds,
                       title=f"Tiny-ImageNet-200 val: {summary['n_images']} images, "
                             f"{summary['n_classes']} classes")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def plot_accuracy_vs_t(rows: list[dict], path: str, *, folds: int, title: str) -> None:
    """Fig. 2 of Carrara et al.: CV accuracy (+- std over folds) against t, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        r = [row for row in rows if row["model"] == name]
        ax.errorbar([x["t"] for x in r], [x["cv_accuracy"] for x in r],
                    yerr=[x["cv_std"] for x in r], marker="o", ms=3, capsize=2, label=name)
    ax.set_xlabel("t (ResNet: last seven blocks spread over [0, 1])")
    ax.set_ylabel(f"{folds}-fold CV accuracy (best C)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_line(name: str, info: dict) -> str:
    """One line of a model's summary: best t, the accuracy at t = 1 and the fine-tunes."""
    line = (f"{name}: best t = {info['best_t']:.2f} (CV acc {info['best_cv_accuracy']:.4f}); "
            f"t=1: {info['cv_accuracy_at_t1']:.4f}")
    ft = info.get("finetune")
    if ft:
        line += f"; at t*={ft['t']:.2f} held-out acc: SVM {ft['svm_val_accuracy']:.4f}"
        for key, what in (("head_val_accuracy", "linear head"),
                          ("full_val_accuracy", "full fine-tune")):
            if key in ft:
                line += f", {what} {ft[key]:.4f}"
    return line
