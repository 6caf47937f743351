"""Khoshsirat & Kambhamettu, "Semantic Segmentation using Neural ODEs" (Sec. 4.1,
Tables 1-2): settings of ``python -m experiments.segment``.

A config is a dict of settings that ``segment`` completes with `DEFAULTS` and its
flags.  ``lr_segnode`` is SGD's (momentum 0.9), ``lr_baseline`` AdamW's; both decay
polynomially (power 0.9).
"""

from __future__ import annotations

from experiments.configs import register

# settings every config shares unless it says otherwise
DEFAULTS = dict(solver="dopri5", field_modules=1, seed=0, eval_downscale=1,
                synthetic_size=(64, 64), n_train=64, n_eval=16, weight_decay_baseline=0.05)
LOOSE_SOLVE = dict(rtol=1e-2, atol=1e-2)
CPU_CAMVID = dict(data="camvid", blocks=1, baseline_modules=2, lr_segnode=0.1,
                  lr_baseline=1e-3, **LOOSE_SOLVE)


@register("camvid-paper", "segment")
def camvid_paper():
    """SegNode Tables 1-2 on CamVid: widths 48-384, 4 blocks, crop 360x480, 484 epochs (GPU).
    python -m experiments.segment --config camvid-paper --data-root DATA"""
    return dict(data="camvid", widths=(48, 96, 192, 384), blocks=4, baseline_modules=6,
                crop=(360, 480), scale=(0.5, 2.0), batch_size=16, epochs=484,
                eval_downscale=1, eval_batch=4, rtol=1e-3, atol=1e-3, lr_segnode=0.1,
                lr_baseline=1e-4, max_train_batches=None, eval_limit=None)


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
                scale=(0.75, 1.5), batch_size=8, epochs=3, synthetic_size=(64, 64),
                n_train=64, n_eval=16, eval_batch=8, max_train_batches=None,
                eval_limit=None)
