"""Carrara et al., "Evaluation of continuous image features learned by ODE Nets"
(Sec. 4.1, Table 1): the three CIFAR-10 classifiers, and the 8x8-digits smoke run.

Training as in Sec. 4.1: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr x0.1
on a plateau of the training loss, dropout 0.5, crop + colour jitter + flip, 200 epochs.
"""

from __future__ import annotations

from experiments.configs import register
from experiments.configs.classify import ClassifyConfig

PAPER = dict(
    dataset="cifar10", channels=256, dropout=0.5, epochs=200, batch_size=128, lr=0.1,
    momentum=0.9, weight_decay=1e-4, lr_schedule="plateau", plateau_metric="train_loss",
    plateau_patience=10, crop_padding=4, flip=True, color_jitter=(0.4, 0.4, 0.4),
    normalize=True, tol=1e-3, tol_sweep=(1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
)


# Table 1: short name -> (model, the paper's name for it, what the paper reports)
TABLE_1 = {
    "resnet": ("carrara-resnet", "Residual Net", "7.92M params, paper test error 7.28%"),
    "resode": ("carrara-resode", "Res-ODE Net", "2.02M params, paper 7.80%, 3.8 +- 0.4 steps"),
    "odeonly": ("carrara-odeonly", "ODE-only Net", "1.20M params, paper 9.17%, 7.8 +- 1.5 steps"),
}


def _table_1_config(short: str):
    """Register ``carrara-cifar10-<short>``: the row `short` of Table 1, trained as PAPER."""
    model, title, reported = TABLE_1[short]
    name = f"carrara-cifar10-{short}"

    def config() -> ClassifyConfig:
        return ClassifyConfig(model=model, name=name, **PAPER,
                              description=f"Carrara et al. Table 1: {title} on CIFAR-10")

    config.__doc__ = (f"Carrara et al. Table 1, {title} ({reported}).\n"
                      f"    python -m experiments.classify --config {name} --data-root DATA")
    return register(name)(config)


_CONFIGS = {short: _table_1_config(short) for short in TABLE_1}


@register("smoke-cifar10-odeonly")
def smoke_carrara_cifar10_odeonly():
    """Smoke form of carrara-cifar10-odeonly: 32 channels, 512 images, 1 epoch.
    python -m experiments.classify --config smoke-cifar10-odeonly --data-root DATA"""
    return _CONFIGS["odeonly"]().replace(
        name="smoke-cifar10-odeonly", channels=32, epochs=1, train_limit=512,
        test_limit=256, lr_schedule="constant", tol_sweep=(1e-2, 1e-3),
        description="CIFAR-10 ODE-only Net, short")


@register("smoke-digits")
def smoke_digits():
    """README command: ODE-only net on 8x8 digits, 32 channels, 10 epochs (~96% test acc).
    python -m experiments.classify --config smoke-digits
    (3x3 stride-2 stem -> 4x4 feature maps; dopri5, backsolve adjoint, rtol = atol = 1e-3)"""
    return ClassifyConfig(
        name="smoke-digits", description="ODE-only net on sklearn digits (smoke run)",
        model="carrara-odeonly", dataset="digits", channels=32, dropout=0.0,
        model_kwargs=(("stem_kernel", 3), ("stem_stride", 2), ("stem_padding", 1)),
        epochs=10, batch_size=32, eval_batch_size=120, lr=0.1, weight_decay=1e-4,
        lr_schedule="cosine", tol=1e-3, tol_sweep=(1e-1, 1e-2, 1e-3, 1e-4),
    )


# ----------------------------------------------- Sec. 4.3: transfer of z(t) (experiments.transfer)


@register("paper", "transfer")
def transfer_paper():
    """Carrara et al. Fig. 2: all 200 Tiny-ImageNet classes, 50 images each, t every 0.05.
    python -m experiments.transfer --config paper --checkpoint resode=RUN --data-root DATA"""
    return dict(classes=None, per_class=None, time_step=0.05, folds=5)


@register("smoke", "transfer")
def transfer_smoke():
    """Smoke form: a 200-image CIFAR-10 source net, 5 classes x 10 images, t = 0, 0.5, 1.
    python -m experiments.transfer --config smoke --quick-train --data-root DATA"""
    return dict(classes=5, per_class=10, time_step=0.5, folds=2, quick_models="odeonly",
                quick_channels=32, quick_train_size=200, quick_epochs=1)
