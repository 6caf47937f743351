"""The figures of `experiments.classify`: Carrara et al.'s Fig. 1 (the test images
needing the most and the fewest solver steps) and the inference-time tolerance sweep
(accuracy and NFE against rtol = atol, `jaxode.train.sweeps.tolerance_sweep`)."""

from __future__ import annotations

import numpy as np


def steps_figure(test, per_image_steps, path: str, k: int = 5) -> list[int]:
    """Carrara et al. Fig. 1: the `k` test images needing the most (left) and the
    fewest (right) solver steps, each labelled with its count.  Returns the indices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(per_image_steps, kind="stable")
    most, fewest = order[::-1][:k], order[:k]
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.8))
    for row, (idx, title) in enumerate(((most, "most steps"), (fewest, "fewest steps"))):
        for j, i in enumerate(idx):
            ax = axes[row, j] if k > 1 else axes[row]
            img = test.images[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                      cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_title(f"{int(per_image_steps[i])} steps\n{test.class_names[test.labels[i]]}",
                         fontsize=8)
            ax.axis("off")
        (axes[row, 0] if k > 1 else axes[row]).text(
            -0.3, 0.5, title, transform=(axes[row, 0] if k > 1 else axes[row]).transAxes,
            rotation=90, va="center", ha="right", fontsize=9)
    fig.suptitle("Solver steps per test image (one dopri5 solve per image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [int(i) for i in most] + [int(i) for i in fewest]


def plot_tolerance_sweep(rows: list[dict], path: str) -> None:
    """Accuracy and NFE per image against the inference tolerance (the rows of
    `jaxode.train.sweeps.tolerance_sweep`; failed tolerances are left out)."""
    plotted = [r for r in rows if "error" not in r]
    if not plotted:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    tol_axis = [r["tol"] for r in plotted]
    ax1.semilogx(tol_axis, [100 * r["acc"] for r in plotted], "o-", color="C0")
    ax1.set_xlabel("inference tolerance (rtol = atol)")
    ax1.set_ylabel("test accuracy (%)", color="C0")
    ax2 = ax1.twinx()
    ax2.errorbar(tol_axis, [r["nfe_mean"] for r in plotted], [r["nfe_std"] for r in plotted],
                 fmt="s--", color="C1", capsize=3)
    ax2.set_ylabel("NFE per image", color="C1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
