"""Figures of deep continuous networks (Tomen, Pintea & van Gemert, ICML 2021): learned
scales (Fig. 3a, 3b), the contrast probe (Fig. 5), pattern completion (Fig. 3c, Fig. 4),
reconstructions (Table 3) and the small-data table (Table 2).

Each function takes the numbers that `jaxode.models.dcn_analysis` computes and writes
one PNG (matplotlib, Agg backend); none of them runs a model except
`plot_reconstructions`, which draws a trained `DCNAutoencoder`'s outputs.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_completion",
    "plot_contrast",
    "plot_feature_maps",
    "plot_reconstructions",
    "plot_scales",
    "plot_small_data",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=120):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


def plot_scales(scales: dict, path: str) -> None:
    """Learned sigma per SRF layer (``PATH_sigma.png``, Fig. 3a) and the sigma^ji
    histograms (``PATH_sigma_ji.png``, Fig. 3b) of `jaxode.models.dcn.learned_scales`."""
    plt = _pyplot()
    shared = {k: v for k, v in scales.items() if isinstance(v, float)}
    per = {k: v for k, v in scales.items() if isinstance(v, list)}
    if shared:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(range(len(shared)), list(shared.values()), "o-")
        ax.set_xticks(range(len(shared)))
        ax.set_xticklabels([k.replace(".", " ")[-28:] for k in shared], rotation=60, fontsize=6)
        ax.set_ylabel("learned sigma")
        _save(fig, path + "_sigma.png")
    if per:
        fig, ax = plt.subplots(figsize=(5, 3))
        for k, v in per.items():
            ax.hist(v, bins=40, histtype="step", label=k[-24:])
        ax.set_xlabel("learned sigma^ji")
        ax.set_ylabel("# filters")
        ax.legend(fontsize=5)
        _save(fig, path + "_sigma_ji.png")


def plot_contrast(rows: list[dict], path: str) -> None:
    """Fig. 5: accuracy, NFE of ODE block 1 and total NFE against the contrast c, one
    curve per (model, mode) of `dcn_analysis.contrast_sweep` rows."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(5.5, 8), sharex=True)
    style = {"naive": "-", "block1": "--", "all": ":"}
    for model, mode in sorted({(r["model"], r["mode"]) for r in rows}):
        rs = sorted((r for r in rows if r["model"] == model and r["mode"] == mode),
                    key=lambda r: r["c"])
        c = [r["c"] for r in rs]
        for ax, key, scale in zip(axes, ("acc", "nfe_block1", "nfe_total"), (100, 1, 1)):
            ax.plot(c, [scale * r[key] for r in rs], style[mode], marker=".",
                    label=f"{model} ({mode})")
    for ax, label in zip(axes, ("test accuracy [%]", "NFE, ODE block 1", "NFE, all ODE blocks")):
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("contrast c")
    axes[0].legend(fontsize=6)
    _save(fig, path)


def plot_completion(result: dict, path: str) -> None:
    """Fig. 3c (accuracy against the mask size) beside D(t) of eq. 4 (mean +- std over
    images) for every model of a `completion` result."""
    plt = _pyplot()
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
    _save(fig, path)


def plot_feature_maps(example, ts, path: str, label: str) -> None:
    """Fig. 4: input / masked input and one channel of h(t), h_masked(t) at a few t; the
    channel is the one the mask changes most at t0.  `example` is
    ``(x, x_masked, h, h_masked)`` of one image, h of shape (T, C, H, W)."""
    plt = _pyplot()
    x, xm, h, hm = example
    ch = int(np.argmax(np.abs(h[0] - hm[0]).sum(axis=(1, 2))))
    picks = sorted(set(np.linspace(0, len(ts) - 1, min(4, len(ts))).round().astype(int)))
    fig, axes = plt.subplots(2, len(picks) + 1, figsize=(2 * (len(picks) + 1), 4.2))
    lo, hi = float(h[:, ch].min()), float(h[:, ch].max())
    for row, (img, traj, name) in enumerate(((x, h, "intact"), (xm, hm, "masked"))):
        axes[row, 0].imshow(np.clip(np.transpose(img, (1, 2, 0)), 0, 1))
        axes[row, 0].set_title(f"{name} input", fontsize=8)
        for j, k in enumerate(picks):
            axes[row, j + 1].imshow(traj[k, ch], cmap="viridis", vmin=lo, vmax=hi)
            axes[row, j + 1].set_title(f"{name} h(t={ts[k]:.2f})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{label}, block 1, channel {ch}", fontsize=9)
    _save(fig, path, dpi=110)


def plot_reconstructions(model, test, path: str, name: str, k: int = 8) -> None:
    """Table 3: the centre 28x28 crops of `k` test images (spread over the split, which
    is often sorted by class) above the `DCNAutoencoder`'s reconstructions."""
    import equinox as eqx

    from jaxode.data.augment import to_model_input
    from jaxode.models.dcn import centre_crop

    plt = _pyplot()
    pick = np.unique(np.linspace(0, len(test) - 1, min(k, len(test))).round().astype(int))
    x = to_model_input(test.images[pick])
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
    _save(fig, path)


def plot_small_data(rows: list[dict], path: str) -> None:
    """Table 2 as a plot: accuracy (mean +- std over seeds) against the training images
    per class, one curve per model (`dcn_analysis.small_data_rows`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        ax.errorbar([r["per_class"] for r in rs], [r["mean"] for r in rs],
                    yerr=[r["std"] for r in rs], marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    _save(fig, path)
