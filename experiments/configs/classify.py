"""Named configurations of `experiments.classify`: the papers' settings and smoke runs.

Each config names the paper, the table it reproduces and the command that runs it.
Command-line flags override single fields (``--epochs 2`` etc.).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.configs import register


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """Everything `experiments.classify` needs.  Field groups:

    - model: `model` (a name in `jaxode.models.MODELS`), `channels`, `dropout`,
      `model_kwargs` (extra factory arguments as ``((name, value), ...)``).
    - solver (ODE models): `solver`, `tol` (rtol = atol), `adjoint`, `max_steps`,
      `phases` (``"euler:N,adjoint:M"``), `euler_steps`.
    - data: `dataset` (a `jaxode.data.load_dataset` spec), `data_root`,
      `train_limit` / `test_limit` (first N examples, None = all), augmentation
      `crop_padding`, `flip`, `color_jitter`, `normalize` (per-channel mean/std of the
      training set).
    - optimisation: `epochs`, `batch_size`, `eval_batch_size`, `lr`, `momentum`,
      `weight_decay`, `lr_schedule`, `milestones`, `gamma`, `plateau_metric`,
      `plateau_patience`, `ema_decay`, `max_train_batches`.
    - regularisation of the dynamics (training only, `jaxode.train.regularize`):
      `regularizers` (``((name, weight), ...)``, e.g. ``(("kinetic", 0.01),)``),
      `steer` (STEER's b, None = off).
    - evaluation: `per_sample_eval` (final test pass with one adaptive solve per
      image: steps per image mean +- std, Fig. 1), `tol_sweep` (inference-time
      tolerances), `fig_examples` (images per side in Fig. 1).
    - run: `name` (folder under `runs_dir`), `seed`, `data_parallel`.
    """

    name: str = "classify"
    description: str = ""
    model: str = "carrara-odeonly"
    channels: int | None = None
    dropout: float = 0.0
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    solver: str = "dopri5"
    tol: float = 1e-3
    adjoint: str = "backsolve"
    max_steps: int = 4096
    phases: str | None = None
    euler_steps: int = 10
    dataset: str = "digits"
    data_root: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    crop_padding: int = 0
    flip: bool = False
    color_jitter: tuple[float, float, float] | None = None
    normalize: bool = False
    epochs: int = 1
    batch_size: int = 128
    eval_batch_size: int = 250
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    plateau_metric: str = "train_loss"
    plateau_patience: int = 10
    ema_decay: float | None = None
    max_train_batches: int | None = None
    regularizers: tuple[tuple[str, float], ...] = ()
    steer: float | None = None
    per_sample_eval: bool = True
    tol_sweep: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    fig_examples: int = 5
    seed: int = 0
    runs_dir: str = "runs"
    data_parallel: bool = True

    def replace(self, **changes) -> "ClassifyConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------- the papers


def _carrara(model: str, **kw) -> ClassifyConfig:
    # Carrara et al., Sec. 4.1: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, plateau
    # x0.1, dropout 0.5, crop + colour jitter + flip, 200 epochs on CIFAR-10.
    base = dict(
        model=model, dataset="cifar10", channels=256, dropout=0.5, epochs=200,
        batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="plateau",
        plateau_metric="train_loss", plateau_patience=10, crop_padding=4, flip=True,
        color_jitter=(0.4, 0.4, 0.4), normalize=True, tol=1e-3,
        tol_sweep=(1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
    )
    base.update(kw)
    return ClassifyConfig(**base)


@register("carrara-cifar10-resnet")
def carrara_cifar10_resnet():
    """Carrara et al. Table 1, Residual Net (7.92M params, paper test error 7.28%).
    python -m experiments.classify --config carrara-cifar10-resnet --data-root DATA"""
    return _carrara("carrara-resnet", name="carrara-cifar10-resnet",
                    description="Carrara et al. Table 1: Residual Net on CIFAR-10")


@register("carrara-cifar10-resode")
def carrara_cifar10_resode():
    """Carrara et al. Table 1, Res-ODE Net (2.02M params, paper 7.80%, 3.8 +- 0.4 steps)."""
    return _carrara("carrara-resode", name="carrara-cifar10-resode",
                    description="Carrara et al. Table 1: Res-ODE Net on CIFAR-10")


@register("carrara-cifar10-odeonly")
def carrara_cifar10_odeonly():
    """Carrara et al. Table 1, ODE-only Net (1.20M params, paper 9.17%, 7.8 +- 1.5 steps)."""
    return _carrara("carrara-odeonly", name="carrara-cifar10-odeonly",
                    description="Carrara et al. Table 1: ODE-only Net on CIFAR-10")


def _chen(model: str, **kw) -> ClassifyConfig:
    # Chen et al. Sec. 7.1 via torchdiffeq's odenet_mnist example: SGD 0.1 (batch 128),
    # momentum 0.9, 160 epochs, x0.1 at 60/100/140, crop 28 with padding 4, no
    # normalisation, dopri5 rtol = atol = 1e-3, adjoint.
    base = dict(
        model=model, dataset="mnist", channels=64, dropout=0.0, epochs=160, batch_size=128,
        lr=0.1, momentum=0.9, weight_decay=0.0, lr_schedule="step",
        milestones=(60, 100, 140), crop_padding=4, tol=1e-3,
    )
    base.update(kw)
    return ClassifyConfig(**base)


@register("chen-mnist-odenet")
def chen_mnist_odenet():
    """Chen et al. Table 1, ODE-Net ('conv' down-sampling: 208,266 params; paper 0.42%)."""
    return _chen("chen-odenet", name="chen-mnist-odenet",
                 description="Chen et al. Table 1: MNIST ODE-Net")


@register("chen-mnist-resnet")
def chen_mnist_resnet():
    """Chen et al. Table 1, ResNet ('conv' down-sampling: 576,778 params; paper 0.41%)."""
    return _chen("chen-resnet", name="chen-mnist-resnet",
                 description="Chen et al. Table 1: MNIST six-block ResNet")


# ------------------------------------------------------------------------ smoke runs


@register("smoke-digits")
def smoke_digits():
    """README command: ODE-only net on 8x8 digits, 32 channels, 10 epochs (~96% test acc).

    3x3 stride-2 stem -> 4x4 feature maps, dopri5 + backsolve adjoint, rtol = atol =
    1e-3; about two minutes on an idle 2-core CPU."""
    return ClassifyConfig(
        name="smoke-digits", description="ODE-only net on sklearn digits (smoke run)",
        model="carrara-odeonly", dataset="digits", channels=32, dropout=0.0,
        model_kwargs=(("stem_kernel", 3), ("stem_stride", 2), ("stem_padding", 1)),
        epochs=10, batch_size=32, eval_batch_size=120, lr=0.1, weight_decay=1e-4,
        lr_schedule="cosine", tol=1e-3, tol_sweep=(1e-1, 1e-2, 1e-3, 1e-4),
    )


@register("smoke-mnist-odenet")
def smoke_mnist_odenet():
    """Chen's ODE-Net on a 6,000-image MNIST subset for one epoch (CPU check)."""
    return chen_mnist_odenet().replace(
        name="smoke-mnist-odenet", epochs=1, train_limit=6000, test_limit=1000,
        lr_schedule="constant", tol_sweep=(1e-2, 1e-3), description="MNIST ODE-Net, short")
