"""Maximum-likelihood training of a 2-D flow on fresh samples of a generated density
(He, Xie, Lin 2019, Sec. 4.3: Adam, 1000 iterations of 100 new points) through `fit`,
with NODE-EW's own learning rate for theta_1 (`TrainConfig.g_lr_scale`)."""

from __future__ import annotations

import functools

import optax

from jaxode.data.densities import FreshBatches
from jaxode.train.config import TrainConfig
from jaxode.train.loop import fit
from jaxode.train.more_tasks import DensityTask


@functools.lru_cache(maxsize=None)
def flow_optimizer(lr: float, clip: float = 0.0):
    """Adam with rate `lr` after clipping the global gradient norm to `clip` (0: none).
    Cached: the same object per setting, so the jitted step compiles once per model."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


def fit_flow(flow, density: str, *, iters: int, batch: int, lr: float, g_lr: float,
             clip: float, seed: int, test, label: str, progress: bool = True,
             regularizers=(), steer: float | None = None, eval_every: int | None = None,
             evals: list | None = None, taylor_order: int = 2):
    """Train `flow` on `iters` fresh batches of `density` (`FreshBatches`), theta_1 at
    rate `g_lr`; evaluate the NLL of the `test` points (exact trace).  Returns the
    trained flow, the per-iteration log (``model``, ``iter``, ``nll``, ``nfe_forward``,
    ``nfe_backward``, ``seconds`` after the first step, and the value of each
    requested regulariser), the first step's (compile) seconds and the test NLL.

    `regularizers` (``{"kinetic": w, "jacobian": w}``, RNODE, or ``{"taylor": w}``;
    of z only, see `CNFField.regularized_mask`), `steer` (b) and `taylor_order` as in
    `TrainConfig`.  `eval_every`
    (a divisor of `iters`; default `iters`) evaluates the test NLL every so many
    iterations (the same data stream), appending ``{"iter", "test_nll", "test_nfe"}``
    to the list `evals` if given."""
    every = iters if eval_every is None else eval_every
    if every < 1 or iters % every:
        raise ValueError(f"fit_flow: eval_every={eval_every} must be a positive divisor of "
                         f"iters={iters}.")
    config = TrainConfig(epochs=iters // every, batch_size=batch, lr=lr, g_lr_scale=g_lr / lr,
                         seed=seed, data_parallel=False, keep_checkpoints=1, progress=progress,
                         regularizers=dict(regularizers), steer=steer,
                         taylor_order=taylor_order)
    log, clock = [], [0.0, 0.0]  # [compile seconds, training seconds after it]

    def on_step(row):
        clock[0 if row["step"] == 1 else 1] += row["step_time_s"]
        log.append({"model": label, "iter": row["step"] - 1, "nll": row["loss"],
                    "nfe_forward": int(row["nfe"]), "nfe_backward": int(row["nfe_backward"]),
                    "seconds": clock[1], **{k: float(row[k]) for k in dict(regularizers)}})

    result = fit(flow, DensityTask(),
                 lambda epoch: FreshBatches(density, every, batch, seed, start=epoch * every),
                 lambda: [{"x": test}], config=config, optimizer=flow_optimizer(lr, clip),
                 on_step=on_step, log=lambda s: print(f"{label}: {s}"))
    if evals is not None:
        evals += [{"iter": (i + 1) * every, "test_nll": h["eval_nll"], "test_nfe": h.get("eval_nfe")}
                  for i, h in enumerate(result.history)]
    return result.model, log, clock[0], result.history[-1]["eval_nll"]
