"""The settings record of a classification run: `ClassifyConfig`, what a run's
``config.json["classify"]`` holds field by field.

`experiments.classify` builds it from a named config (`experiments.configs.carrara`,
`experiments.configs.chen`) and its flags; ``--resume`` compares the saved fields with
the command line, and `jaxode.train.load_run` rebuilds the run's model and
preprocessing from them (`ClassifyConfig.from_saved`), so the record stays flat and
its field names stay as earlier runs saved them.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """Everything a classification run needs (`experiments.classify`).  Field groups:

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
      `steer` (STEER's b, None = off), `taylor_order` (K of the ``taylor``
      regulariser, TayNODE's int ||d^K z/dt^K||^2 dt).
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
    g_lr_scale: float = 1.0
    max_train_batches: int | None = None
    regularizers: tuple[tuple[str, float], ...] = ()
    steer: float | None = None
    taylor_order: int = 2
    per_sample_eval: bool = True
    tol_sweep: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    fig_examples: int = 5
    seed: int = 0
    runs_dir: str = "runs"
    data_parallel: bool = True

    def replace(self, **changes) -> ClassifyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build_model(self, num_classes: int, in_channels: int, key):
        """The model named by `model`, its ODE blocks solved as the record says
        (`jaxode.models.build_classifier`)."""
        from jaxode.models import build_classifier

        return build_classifier(self.to_dict(), num_classes, in_channels, key)

    def task(self, mean=None, std=None):
        """Cross-entropy with this record's augmentation and the per-channel input
        normalisation `mean` / `std` (None: none; `training_set_facts` computes them)."""
        from jaxode.train.tasks import ClassificationTask

        return ClassificationTask(crop_padding=self.crop_padding, flip=self.flip,
                                  color_jitter=self.color_jitter, mean=mean, std=std)

    def train_config(self):
        """The `TrainConfig` of this record: the fields the two share, by name."""
        from jaxode.train.config import TrainConfig

        shared = {f.name for f in dataclasses.fields(TrainConfig)} & set(self.to_dict())
        return TrainConfig(**{**{k: getattr(self, k) for k in shared},
                              "regularizers": dict(self.regularizers)})

    def check_model(self) -> None:
        """A ValueError unless `model` takes the factory arguments of `model_kwargs`
        (e.g. smoke-digits' 3x3 stem suits the ODE nets, not carrara-resnet)."""
        import inspect

        from jaxode.models import MODELS

        def takes(name):
            params = inspect.signature(MODELS[name]).parameters
            return (any(p.kind is p.VAR_KEYWORD for p in params.values())
                    or all(k in params for k, _ in self.model_kwargs))

        if not takes(self.model):
            suits = " or ".join(m for m in MODELS if takes(m)) or "of the config"
            raise ValueError(
                f"config {self.name!r} sets {', '.join(k for k, _ in self.model_kwargs)}, "
                f"which {self.model} does not take; use --model {suits} with this config, "
                "or a --config made for that model (see --list).")

    @classmethod
    def from_saved(cls, saved: dict) -> ClassifyConfig:
        """The record of a run's ``config.json["classify"]``: JSON lists back to tuples;
        settings an older run did not save take their defaults, unknown ones are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _tuples(v) for k, v in saved.items() if k in known})


def _tuples(x):
    """JSON lists back to the tuples of the frozen (hashable) record."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
