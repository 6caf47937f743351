"""`TrainConfig`: every knob of the training loop in one frozen, JSON-able record."""

from __future__ import annotations

import dataclasses
from typing import Any

_SCHEDULES = ("constant", "step", "cosine", "plateau")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of `jaxode.train.fit`.

    **Optimiser** (SGD with momentum, PyTorch semantics; the default of `fit`):
    `lr`, `momentum` (0.9), `nesterov`, `weight_decay` (L2 added to the gradient, as
    ``torch.optim.SGD``), `grad_clip` (global-norm clipping, ``None`` = off).  With
    ``fit(..., optimizer=<optax transformation>)`` only `lr` is used, as the reference
    of the schedule (`jaxode.train.optim`); `weight_decay`, `grad_clip` and `nesterov`
    must then stay unset.

    **Learning-rate schedule** `lr_schedule`:

    - ``constant``;
    - ``step``: multiply by `gamma` at each epoch in `milestones` (Chen et al.:
      x0.1 at 60, 100, 140);
    - ``cosine``: cosine decay from `lr` to `min_lr` over all epochs, per step;
    - ``plateau``: multiply by `gamma` when `plateau_metric` (a column of the metrics
      table, e.g. ``train_loss`` or ``eval_loss``) has not improved by a relative
      `plateau_threshold` for `plateau_patience` epochs (PyTorch's ReduceLROnPlateau;
      Carrara et al.'s schedule), never below `min_lr`.

    `warmup_epochs` ramps the rate linearly from 0 in the first epochs (any schedule).

    **Loop:** `epochs`, `batch_size` (global; divisible by the device count under
    data parallelism), `seed`, `eval_every` (epochs), `ema_decay` (Polyak/EMA weights
    used for evaluation; ``None`` = off), `phases` (``"euler:5,adjoint:10"``: switch
    every ODE block's solver per epoch, see `jaxode.train.phases`), `euler_steps`,
    `g_lr_scale` (learning-rate factor for theta_1, the parameters of NODE-EW's weight
    dynamics g, i.e. every array under an `EvolvingField.g`; 1 = one rate for all),
    `data_parallel`, `keep_checkpoints`, `progress` (tqdm bar), `max_train_batches`
    (cap per epoch, for smoke runs; ``None`` = all).

    **Regularisation of the dynamics** (training steps only, `jaxode.train.regularize`):
    `regularizers` maps a regulariser name (``kinetic``, ``jacobian``,
    ``local_error``, ``taylor``; `jaxode.ode.REGULARIZERS`) to its weight in the loss,
    e.g. ``{"kinetic": 0.01}``; the values are logged as training metrics of the same
    names.  `taylor_order` is K of ``taylor`` (int ||d^K z/dt^K||^2 dt, TayNODE).
    `steer` = b draws every block's end time from U(t1 - b, t1 + b) at each step
    (STEER; ``None`` = off).
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: int = 0
    plateau_metric: str = "train_loss"
    plateau_patience: int = 10
    plateau_threshold: float = 1e-4
    ema_decay: float | None = None
    phases: str | None = None
    euler_steps: int = 10
    g_lr_scale: float = 1.0
    seed: int = 0
    eval_every: int = 1
    data_parallel: bool = True
    keep_checkpoints: int = 2
    progress: bool = True
    max_train_batches: int | None = None
    regularizers: dict[str, float] = dataclasses.field(default_factory=dict)
    steer: float | None = None
    taylor_order: int = 2

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"TrainConfig: {msg}")

        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad(f"epochs must be a positive int, got {self.epochs!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad(f"batch_size must be a positive int, got {self.batch_size!r}.")
        if not self.lr > 0:
            bad(f"lr must be positive, got {self.lr!r}.")
        if not 0 <= self.momentum < 1:
            bad(f"momentum must lie in [0, 1), got {self.momentum!r}.")
        if self.weight_decay < 0:
            bad(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.lr_schedule not in _SCHEDULES:
            bad(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(_SCHEDULES)}.")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            bad(f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay!r}.")
        if self.phases is not None:
            from jaxode.train.phases import parse_schedule

            parse_schedule(self.phases)  # raises a clear ValueError
        if not self.g_lr_scale >= 0:
            bad(f"g_lr_scale must be >= 0, got {self.g_lr_scale!r}.")
        from jaxode.train.regularize import check_weights

        check_weights(self.regularizers)
        from jaxode.ode._regularize import check_taylor_order

        try:
            check_taylor_order(self.taylor_order)
        except ValueError as e:
            bad(str(e))
        object.__setattr__(self, "regularizers", dict(self.regularizers))
        if self.steer is not None and not 0 < self.steer < float("inf"):
            bad(f"steer must be a positive number or None, got {self.steer!r}.")
        if self.keep_checkpoints < 1:
            bad(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
