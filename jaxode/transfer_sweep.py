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
from typing import Callable, Sequence

import numpy as np

from jaxode import transfer as tr

__all__ = ["svm_indices", "svm_sweep", "heldout_split", "finetune_compare", "write_rows",
           "plot_accuracy_vs_t", "summary_line"]


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


def heldout_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split every fine-tune comparison shares: stratified 80/20."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)


def finetune_compare(X: np.ndarray, y: np.ndarray, n_classes: int, *, Cs: Sequence[float],
                     folds: int, seed: int, n_jobs: int, solver: str,
                     head_epochs: int | None) -> dict:
    """At one time t*: the SVM (C by CV on the 80 %) and, unless `head_epochs` is None, a
    new linear head trained on the frozen features (`jaxode.transfer.linear_probe`),
    both scored on the 20 % of `heldout_split`."""
    i_tr, i_va = heldout_split(y, seed)
    svm = tr.svm_cv(X[i_tr], y[i_tr], Cs=Cs, folds=folds, seed=seed, n_jobs=n_jobs,
                    solver=solver)
    out = {"split": "stratified 80/20", "n_train": int(len(i_tr)), "n_val": int(len(i_va)),
           "svm_val_accuracy": float(np.mean(svm["model"].predict(X[i_va]) == y[i_va])),
           "svm_best_C": svm["best_C"]}
    if head_epochs is not None:
        head = tr.linear_probe(X[i_tr], y[i_tr], X[i_va], y[i_va], num_classes=n_classes,
                               epochs=head_epochs, seed=seed)
        out.update(head_val_accuracy=head["val_accuracy"],
                   head_train_accuracy=head["train_accuracy"])
    return out


def write_rows(rows: list[dict], path: str) -> None:
    """`svm_sweep` rows of every model as one CSV table."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


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
