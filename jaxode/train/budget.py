"""Training on one fixed batch within a budget of iterations, a target loss and a wall
time, and the speed-up to equal loss of two such runs: how He, Xie, Lin 2019 compare
Euler-then-adjoint with pure-adjoint training on the curve fit (Sec. 3.2.2, 4.1)."""

from __future__ import annotations

import math

from jaxode.train.config import TrainConfig
from jaxode.train.loop import fit


def train_on_batch(model, task, batch, iters: int, optimizer, log: list, *, label: str,
                   lr: float = 1.0, opt_state=None, target: float | None = None,
                   seconds: float | None = None, clock0: float = 0.0):
    """Up to `iters` steps of `fit` on `batch` (continuing from `opt_state`, e.g. an
    earlier phase's), stopping early once the loss is at most `target` or the training
    time passes `seconds`.  The first step (compilation) is timed apart.  Appends
    ``{"phase": label, "iter", "loss", "nfe", "seconds"}`` per step to `log` (seconds:
    `clock0` + training time so far).  Returns the model, the optimiser state and
    ``{"iters", "train_seconds", "compile_seconds", "last_loss"}``."""
    rec = {"iters": 0, "train_seconds": 0.0, "compile_seconds": 0.0, "last_loss": math.inf}
    if iters == 0:
        return model, opt_state, rec

    def on_step(row):
        rec["compile_seconds" if row["step"] == 1 else "train_seconds"] += row["step_time_s"]
        rec["iters"], rec["last_loss"] = row["step"], row["loss"]
        log.append({"phase": label, "iter": row["step"] - 1, "loss": row["loss"],
                    "nfe": int(row["nfe"]), "seconds": clock0 + rec["train_seconds"]})
        return ((target is not None and row["loss"] <= target)
                or (seconds is not None and rec["train_seconds"] > seconds))

    config = TrainConfig(epochs=1, batch_size=1, lr=lr, data_parallel=False)
    result = fit(model, task, lambda epoch: [batch] * iters, config=config, optimizer=optimizer,
                 init_opt_state=opt_state, on_step=on_step, log=lambda s: None)
    return result.model, result.opt_state, rec


def time_to_equal_loss(candidate: list[dict], reference: list[dict]) -> dict | None:
    """The best loss of the `reference` run, when it reached it, and when the
    `candidate` run first did (rows with ``loss`` and ``seconds``), with their ratio
    ``speedup``; None if either log is empty."""
    if not candidate or not reference:
        return None
    best = min(reference, key=lambda r: r["loss"])
    hit = next((r for r in candidate if r["loss"] <= best["loss"]), None)
    out = {"pure_best_loss": best["loss"], "pure_seconds_to_best": best["seconds"],
           "hybrid_seconds_to_it": None if hit is None else hit["seconds"]}
    if hit is not None and hit["seconds"] > 0:
        out["speedup"] = best["seconds"] / hit["seconds"]
    return out
