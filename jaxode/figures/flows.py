"""Figures of the 2-D flow experiment (He, Xie, Lin 2019, Sec. 4.3, Fig. 3)."""

from __future__ import annotations

import jax
import numpy as np

from jaxode.data.densities import sample_density
from jaxode.figures import pyplot
from jaxode.models.flows import smoothed

LABELS = {"fixed": "CNF, fixed weights", "evolving": "NODE-EW CNF"}


def plot_densities(path, densities, models, grids, samples, half):
    """Per density (a row): the data, and per model its density exp(log p) on the
    grid (`grids[(density, model)]`) and its samples (`samples[(density, model)]`)."""
    plt = pyplot()
    n, cols = len(densities), 1 + 2 * len(models)
    box = [[-half, half]] * 2
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.1 * n), squeeze=False)
    for i, d in enumerate(densities):
        data = np.asarray(sample_density(d, jax.random.PRNGKey(1), 20000))
        axes[i, 0].hist2d(data[:, 0], data[:, 1], bins=80, range=box)
        axes[i, 0].set_title(f"{d}: data", fontsize=8)
        for j, kind in enumerate(models):
            axes[i, 2 * j + 1].imshow(np.exp(grids[(d, kind)]), origin="lower",
                                      extent=[-half, half, -half, half])
            axes[i, 2 * j + 1].set_title(f"{LABELS[kind]}: density", fontsize=8)
            xs = samples[(d, kind)]
            axes[i, 2 * j + 2].hist2d(xs[:, 0], xs[:, 1], bins=60, range=box)
            axes[i, 2 * j + 2].set_title(f"{LABELS[kind]}: samples", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_training_curves(path, densities, models, logs):
    """The paper's Fig. 3: per density, each model's training NLL (mean of 20
    iterations) against the iteration; `logs` rows carry ``model`` = "density/kind"."""
    plt = pyplot()
    n = len(densities)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for i, d in enumerate(densities):
        ax = axes[i // ncol, i % ncol]
        for kind in models:
            nll = [r["nll"] for r in logs if r["model"] == f"{d}/{kind}"]
            ax.plot(smoothed(nll), label=LABELS[kind])
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("train NLL (avg of 20)")
        ax.legend(fontsize=7)
    for j in range(n, nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
