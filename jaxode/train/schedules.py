"""Learning-rate schedules, evaluated on the host once per step.

The rate enters the jitted step as an array argument, so a schedule never triggers a
recompile, and the plateau rule (which depends on metrics seen so far) lives outside
the optimiser state as a small record saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

from jaxode.train.config import TrainConfig


def learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int,
                  plateau_scale: float = 1.0) -> float:
    """The rate for `step` (0-based, within epoch `epoch`, 0-based).

    lr(e) = lr0 * warmup(e) * s(e), with s = 1 (constant, plateau: times the current
    plateau factor), gamma^(number of milestones <= e) (step), or
    min_lr/lr0 + (1 - min_lr/lr0) (1 + cos(pi e / E)) / 2 (cosine, per step).
    """
    e = epoch + step / max(steps_per_epoch, 1)
    lr0 = config.lr
    if config.lr_schedule == "step":
        lr = lr0 * config.gamma ** sum(1 for m in config.milestones if epoch >= m)
    elif config.lr_schedule == "cosine":
        frac = min(e / config.epochs, 1.0)
        lr = config.min_lr + (lr0 - config.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    elif config.lr_schedule == "plateau":
        lr = max(lr0 * plateau_scale, config.min_lr)
    else:
        lr = lr0
    if config.warmup_epochs > 0 and e < config.warmup_epochs:
        lr = lr * (e + 1 / max(steps_per_epoch, 1)) / config.warmup_epochs
    return float(lr)


@dataclasses.dataclass
class PlateauState:
    """ReduceLROnPlateau (mode 'min', relative threshold): `scale` is multiplied by
    `gamma` after `patience` epochs without a relative improvement of `threshold`."""

    best: float = math.inf
    bad_epochs: int = 0
    scale: float = 1.0

    def update(self, value: float, config: TrainConfig) -> "PlateauState":
        if value < self.best * (1 - config.plateau_threshold):
            return PlateauState(best=value, bad_epochs=0, scale=self.scale)
        bad = self.bad_epochs + 1
        if bad > config.plateau_patience:
            return PlateauState(best=self.best, bad_epochs=0, scale=self.scale * config.gamma)
        return PlateauState(best=self.best, bad_epochs=bad, scale=self.scale)

    def to_dict(self):
        return {"best": self.best if math.isfinite(self.best) else None,
                "bad_epochs": self.bad_epochs, "scale": self.scale}

    @classmethod
    def from_dict(cls, d):
        best = d.get("best")
        return cls(best=math.inf if best is None else float(best),
                   bad_epochs=int(d["bad_epochs"]), scale=float(d["scale"]))
