"""Figures of the curve fit (He, Xie, Lin 2019, Sec. 4.1, Fig. 1)."""

from __future__ import annotations

from jaxode.figures import pyplot


def plot_curve_fit(path, xs, preds: dict):
    """The target curve `xs` (T, 3) and each fitted trajectory of `preds` (label ->
    (T, 3)): the three planes (x1, x2), (x1, x3), (x2, x3), then in 3-D."""
    plt = pyplot()
    fig = plt.figure(figsize=(13, 3.4))
    names = ["x1", "x2", "x3"]
    for k, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)]):
        ax = fig.add_subplot(1, 4, k + 1)
        ax.plot(xs[:, a], xs[:, b], "k-", lw=3, alpha=0.35, label="target")
        for label, p in preds.items():
            ax.plot(p[:, a], p[:, b], "--", lw=1.3, label=label)
        ax.set_xlabel(names[a])
        ax.set_ylabel(names[b])
        if k == 0:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 4, 4, projection="3d")
    ax.plot(xs[:, 0], xs[:, 1], xs[:, 2], "k-", lw=3, alpha=0.35)
    for p in preds.values():
        ax.plot(p[:, 0], p[:, 1], p[:, 2], "--", lw=1.3)
    ax.set_title("3-D")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_vs_time(path, runs: dict):
    """Training loss (log scale) against training wall time, one line per run
    (`runs`: label -> rows with ``seconds`` and ``loss``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, rows in runs.items():
        if rows:
            ax.semilogy([r["seconds"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("training wall time (s, compilation excluded)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
