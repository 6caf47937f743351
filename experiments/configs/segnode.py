"""Khoshsirat & Kambhamettu, "Semantic Segmentation using Neural ODEs" (Sec. 4.1,
Tables 1-2): settings of ``python -m experiments.segment``, a dict completed with
`DEFAULTS` and the flags.  ``solve`` holds SegNode's `SolveConfig` arguments; the
learning rates are those of `jaxode.models.segnode_train.paper_optimizer`."""

from __future__ import annotations

import copy

from experiments.configs import register
from jaxode.models.segnode import BaselineConfig, SegNodeConfig, solve_config
from jaxode.models.segnode_train import paper_optimizer
from jaxode.nn.hrnet import STEM_CHANNELS

DEFAULTS = dict(field_modules=1, seed=0, eval_downscale=1, synthetic_size=(64, 64), n_train=64,
                n_eval=16, weight_decay_baseline=0.05, stem_channels=STEM_CHANNELS,
                max_train_batches=None, eval_limit=None,
                solve=dict(solver="dopri5", rtol=1e-3, atol=1e-3, num_steps=None))
CPU_CAMVID = dict(data="camvid", blocks=1, baseline_modules=2, lr_segnode=0.1, lr_baseline=1e-3,
                  solve=dict(solver="dopri5", rtol=1e-2, atol=1e-2, num_steps=None))


@register("camvid-paper", "segment")
def camvid_paper():
    """SegNode Tables 1-2 on CamVid: widths 48-384, 4 blocks, crop 360x480, 484 epochs (GPU).
    python -m experiments.segment --config camvid-paper --data-root DATA"""
    return dict(data="camvid", widths=(48, 96, 192, 384), blocks=4, baseline_modules=6,
                crop=(360, 480), scale=(0.5, 2.0), batch_size=16, epochs=484, eval_batch=4,
                lr_segnode=0.1, lr_baseline=1e-4)


@register("camvid-small", "segment")
def camvid_small():
    """CamVid at a CPU size: widths 8-64, crop 96x128, 40 batches, 24 eval images.
    python -m experiments.segment --config camvid-small --data-root DATA"""
    return dict(CPU_CAMVID, widths=(8, 16, 32, 64), crop=(96, 128), scale=(0.25, 0.5),
                batch_size=4, epochs=1, eval_downscale=4, eval_batch=4,
                max_train_batches=40, eval_limit=24)


@register("smoke", "segment")
def smoke():
    """Smoke form: synthetic shapes (no download), widths 4-32, 3 epochs (CPU, minutes).
    python -m experiments.segment --config smoke"""
    return dict(CPU_CAMVID, data="synthetic", widths=(4, 8, 16, 32), crop=(48, 48),
                scale=(0.75, 1.5), batch_size=8, epochs=3, eval_batch=8)


def settings(config: dict) -> dict:
    """`config` completed with `DEFAULTS` (a fresh dict: ``solve`` is copied)."""
    return copy.deepcopy(dict(DEFAULTS, **config))


def from_saved(saved: dict) -> dict:
    """The settings of a run's config.json, also of runs that kept ``solver``, ``rtol``,
    ``atol``, ``num_steps`` and ``data_path`` (now ``data_root``) at the top level."""
    cfg = dict(saved)
    if "solve" not in cfg:
        cfg["solve"] = {k: cfg.pop(k, v) for k, v in DEFAULTS["solve"].items()}
    cfg.setdefault("data_root", cfg.pop("data_path", None))
    return settings(cfg)


def model_config(name: str, cfg: dict, num_classes: int):
    """The `SegNodeConfig` (``segnode``) or `BaselineConfig` (``baseline``) of settings `cfg`."""
    common = dict(num_classes=num_classes, widths=tuple(cfg["widths"]), blocks=cfg["blocks"],
                  stem_channels=cfg["stem_channels"])
    if name == "segnode":
        return SegNodeConfig(**common, field_modules=cfg["field_modules"],
                             solve=solve_config(**cfg["solve"]))
    return BaselineConfig(**common, modules=cfg["baseline_modules"])


def optimizer(name: str, cfg: dict, total_steps: int):
    """``(optimiser, schedule)`` of model `name` under settings `cfg` (Sec. 4.1)."""
    lr = cfg["lr_segnode"] if name == "segnode" else cfg["lr_baseline"]
    return paper_optimizer(name, lr, cfg["weight_decay_baseline"], total_steps)
