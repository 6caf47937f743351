"""The training loop: `fit` (train, evaluate, log, checkpoint, resume) and `evaluate`.

One jitted step per phase of training: `_train_step` takes the model, the optimiser
state, the EMA weights, a batch, a key and the learning rate (an array: schedules do
not recompile).  The task and the optimiser's hyperparameters are static (hashable),
so a second `fit` with the same task, model structure and batch shape reuses the
compiled step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from jaxode.ode import backward_nfe, differentiated, trainable
from jaxode.train.checkpoint import load_newest_intact, save_checkpoint, saved_epochs
from jaxode.train.config import TrainConfig
from jaxode.train.parallel import data_mesh, local_mesh, replicate, shard_batch
from jaxode.train.phases import apply_phase, parse_schedule, phase_at
from jaxode.train.regularize import Regularization, add_to_loss, for_training
from jaxode.train.rundir import RunDir
from jaxode.train.schedules import PlateauState, learning_rate
from jaxode.train.utils import ode_blocks, tree_is_finite


class NonFiniteLossError(RuntimeError):
    """The loss (or the updated weights) became NaN or infinite during training."""


@dataclasses.dataclass(frozen=True)
class _Optim:
    """Hashable optimiser spec: SGD with momentum in PyTorch's form,
    buf <- momentum * buf + (g + wd * p) [clipped g first]; p <- p - lr * buf."""

    momentum: float
    nesterov: bool
    weight_decay: float
    grad_clip: float | None

    def tx(self) -> optax.GradientTransformation:
        parts = []
        if self.grad_clip:
            parts.append(optax.clip_by_global_norm(self.grad_clip))
        if self.weight_decay:
            parts.append(optax.add_decayed_weights(self.weight_decay))
        parts.append(optax.trace(decay=self.momentum, nesterov=self.nesterov))
        return optax.chain(*parts)

    @classmethod
    def from_config(cls, c: TrainConfig) -> _Optim:
        return cls(float(c.momentum), bool(c.nesterov), float(c.weight_decay),
                   None if c.grad_clip is None else float(c.grad_clip))


def _param_leaves(model) -> list:
    return jtu.tree_leaves(eqx.filter(model, trainable(model)))


def _set_params(model, leaves):
    params = eqx.filter(model, trainable(model))
    return eqx.combine(jtu.tree_unflatten(jtu.tree_structure(params), leaves), model)


def lr_scales(model, g_lr_scale: float) -> tuple[float, ...]:
    """One learning-rate factor per trainable leaf (the order of `_param_leaves`):
    `g_lr_scale` for theta_1 (`jaxode.fields.evolving.theta1_mask`), 1 elsewhere."""
    from jaxode.fields.evolving import theta1_mask

    mask = theta1_mask(eqx.filter(model, trainable(model)))
    return tuple(float(g_lr_scale) if m else 1.0 for m in jtu.tree_leaves(mask))


_NO_REGULARIZATION = Regularization()


@eqx.filter_jit
def _train_step(model, opt_state, ema, batch, key, lr, task, optim: _Optim, ema_decay,
                scales: tuple[float, ...], reg: Regularization = _NO_REGULARIZATION):
    spec = trainable(model)
    # Differentiate only what is trained (and the NFE probes): gradients of the block
    # times would cost field evaluations that nobody uses.
    diff, static = eqx.partition(model, differentiated(model))

    def loss_fn(d):
        # Regularisers and STEER act on this step's integration only (`regularize`).
        m = for_training(eqx.combine(d, static), reg, jax.random.fold_in(key, 0x4E6))
        loss, metrics = task.train_loss(m, batch, key)
        return add_to_loss(loss, metrics, reg), metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff)
    metrics = dict(metrics)
    metrics["nfe_backward"] = backward_nfe(grads)
    g = jtu.tree_leaves(eqx.filter(grads, spec))
    p = _param_leaves(model)
    updates, opt_state = optim.tx().update(g, opt_state, p)
    new_p = [w - (lr * s) * u for w, u, s in zip(p, updates, scales)]
    if ema is not None:
        ema = [ema_decay * e + (1.0 - ema_decay) * w for e, w in zip(ema, new_p)]
    finite = jnp.isfinite(loss) & tree_is_finite(new_p)
    return _set_params(model, new_p), opt_state, ema, loss, metrics, finite


@eqx.filter_jit
def _eval_step(model, batch, key, task):
    return task.eval_metrics(model, batch, key)


def _batch_len(batch) -> int:
    return int(jtu.tree_leaves(batch)[0].shape[0])


def _pad(batch, size: int):
    n = _batch_len(batch)
    if n == size:
        return batch
    idx = np.arange(size) % n
    return jtu.tree_map(lambda x: np.asarray(x)[idx], batch)


def evaluate(model, task, batches: Iterable, *, batch_size: int | None = None, mesh=None,
             key=None, progress: bool = False, desc: str = "eval") -> dict[str, np.ndarray]:
    """Per-example metrics of `task.eval_metrics` over all `batches`, as numpy arrays.

    Batches smaller than `batch_size` (default: the first batch's size) are padded by
    repeating examples, so one compiled shape serves the whole set; the padding is
    dropped from the result.  With a `mesh`, batches are sharded over its devices.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    out: dict[str, list] = {}
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, leave=False, total=_len_or_none(batches))
    mesh = None if mesh is None else local_mesh(mesh)  # multi-process: each evaluates all
    ndev = 1 if mesh is None else mesh.devices.size
    if mesh is not None:  # same placement every call: a changed tolerance must not recompile
        model = replicate(model, mesh)
    for i, batch in enumerate(it):
        n = _batch_len(batch)
        if batch_size is None:
            batch_size = n
        size = max(batch_size, n)
        size = -(-size // ndev) * ndev
        b = _pad(batch, size)
        b = shard_batch(b, mesh) if mesh is not None else b
        metrics = _eval_step(model, b, jax.random.fold_in(key, i), task)
        for k, v in metrics.items():
            out.setdefault(k, []).append(np.asarray(v)[:n])
    return {k: np.concatenate(v) for k, v in out.items()}


def _len_or_none(x):
    try:
        return len(x)
    except TypeError:
        return None


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the trained `model`, the `eval_model` (EMA weights when
    enabled, else `model`), the per-epoch `history`, and the run folder path."""

    model: Any
    eval_model: Any
    history: list[dict[str, Any]]
    run_path: str | None
    epochs_done: int


def _summarise_eval(per_example: dict[str, np.ndarray], prefix="eval_") -> dict[str, float]:
    row = {}
    for k, v in per_example.items():
        if np.issubdtype(v.dtype, np.floating):
            row[prefix + k] = float(np.mean(v))
    return row


def fit(model, task, train_batches: Callable[[int], Iterable], eval_batches=None, *,
        config: TrainConfig, run: RunDir | None = None, resume: bool = False,
        eval_batch_size: int | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train `model` on `task` (see `jaxode.train` for the contract).

    **Arguments:**

    - `model`: an Equinox module (its initial weights; on resume, the template the
      checkpoint is read into -- build it exactly as for the original run).
    - `task`: a hashable object with ``train_loss`` and ``eval_metrics``.
    - `train_batches`: ``epoch -> iterable of batches`` (dicts of numpy arrays with a
      common, fixed batch size); must depend only on the epoch for exact resumes.
    - `eval_batches`: ``() -> iterable of batches``, or None for no evaluation.
    - `config`: a `TrainConfig`.
    - `run`: a `RunDir` for metrics, plots and checkpoints (None: nothing written,
      no resume).
    - `resume`: continue from the newest checkpoint in ``run.checkpoints``.

    **Returns:** a `FitResult`.
    **Raises:** `NonFiniteLossError` when a loss or an update is not finite.
    """
    mesh = data_mesh(config.data_parallel)
    optim = _Optim.from_config(config)
    scales = lr_scales(model, config.g_lr_scale)
    reg = Regularization.from_config(config)
    phases = parse_schedule(config.phases) if config.phases else None
    blocks = ode_blocks(model)
    base_solve = blocks[0].config if blocks else None

    def phase_model(m, epoch):
        if phases is None or base_solve is None:
            return m
        return apply_phase(m, phase_at(phases, epoch), base_solve, config.euler_steps)

    params = _param_leaves(model)
    opt_state = optim.tx().init(params)
    ema = [jnp.array(p) for p in params] if config.ema_decay is not None else None
    history: list[dict[str, Any]] = []
    plateau = PlateauState()
    start_epoch = 0
    train_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x7A1)
    ckpt_dir = run.checkpoints if run is not None else None

    if resume and run is not None:
        def template_at(done):
            return {"model": phase_model(model, done - 1), "opt_state": opt_state, "ema": ema}

        found = load_newest_intact(ckpt_dir, template_at, log=log)
        if found is None:
            log("--resume: no checkpoint found; starting from scratch")
        else:
            _, state, meta = found
            model, opt_state, ema = state["model"], state["opt_state"], state["ema"]
            history = meta["history"]
            plateau = PlateauState.from_dict(meta["plateau"])
            start_epoch = int(meta["epoch"])
            log(f"resuming {run.path} after epoch {start_epoch}")
    elif ckpt_dir is not None and os.path.isdir(ckpt_dir) and saved_epochs(ckpt_dir):
        raise FileExistsError(
            f"{ckpt_dir} holds the checkpoints of an earlier run, which a fresh run would "
            "mix with its own; pass resume=True (--resume) to continue it, or use another "
            "run folder. Nothing was deleted.")

    model, opt_state, ema = replicate((model, opt_state, ema), mesh)
    last_good = None if start_epoch == 0 else os.path.join(ckpt_dir, f"ckpt-{start_epoch:04d}.eqx")

    for epoch in range(start_epoch, config.epochs):
        if phases is not None:
            model = replicate(phase_model(model, epoch), mesh)
        phase = phase_at(phases, epoch).name if phases else None
        batches = train_batches(epoch)
        steps = _len_or_none(batches)
        if config.max_train_batches is not None and steps is not None:
            steps = min(steps, config.max_train_batches)
        sums: dict[str, float] = {}
        count = 0
        t_start = time.perf_counter()
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                       dynamic_ncols=True)
        ekey = jax.random.fold_in(train_key, epoch)
        lr = config.lr
        for i, batch in enumerate(batches):
            if config.max_train_batches is not None and i >= config.max_train_batches:
                break
            lr = learning_rate(config, epoch, i, steps or 1, plateau.scale)
            b = shard_batch(batch, mesh)
            try:
                new = _train_step(model, opt_state, ema, b, jax.random.fold_in(ekey, i),
                                  jnp.asarray(lr, jnp.float32), task, optim, config.ema_decay,
                                  scales, reg)
                new_model, new_opt, new_ema, loss, metrics, finite = new
                finite = bool(finite)
            except eqx.EquinoxRuntimeError as e:  # e.g. the ODE solver ran out of steps
                if bar is not None:
                    bar.close()
                why = next((ln for ln in str(e).splitlines() if "ODEBlock" in ln), str(e))
                why = why.split("EquinoxRuntimeError: ")[-1]
                raise NonFiniteLossError(
                    f"the solver failed at epoch {epoch + 1}, step {i + 1}: {why.strip()} "
                    f"Training stopped; the last good checkpoint "
                    f"({last_good or 'none yet: no epoch finished'}) is intact. Try a lower "
                    f"learning rate (now {lr:g}; e.g. --lr {lr / 10:g}), a looser or tighter "
                    "solver tolerance (--tol), or a larger step budget (--max-steps of "
                    "experiments.classify; SolveConfig.max_steps in Python).") from e
            if not finite:
                if bar is not None:
                    bar.close()
                raise NonFiniteLossError(
                    f"the loss became {float(loss)} (or the update non-finite) at epoch "
                    f"{epoch + 1}, step {i + 1}; training stopped. The last good checkpoint "
                    f"({last_good or 'none yet: no epoch finished'}) is intact. Try a lower "
                    f"learning rate (now {lr:g}; e.g. --lr {lr / 10:g}), a tighter solver "
                    "tolerance (--tol), or gradient clipping (TrainConfig.grad_clip in Python)."
                )
            model, opt_state, ema = new_model, new_opt, new_ema
            metrics = jax.device_get(metrics)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if bar is not None:
                bar.update(1)
                post = {k: f"{sums[k] / count:.3g}" for k in ("loss", "acc", "nfe") if k in sums}
                bar.set_postfix(post)
        if bar is not None:
            bar.close()
        if count == 0:
            raise ValueError(
                f"epoch {epoch + 1} produced no training batches; the training set is smaller "
                "than one batch (with drop_last) -- lower the batch size."
            )
        row: dict[str, Any] = {"epoch": epoch + 1}
        if phase is not None:
            row["phase"] = phase
        row["lr"] = lr
        row.update({f"train_{k}": v / count for k, v in sums.items()})
        row["train_time_s"] = time.perf_counter() - t_start
        eval_model = _eval_model(model, ema)
        if eval_batches is not None and ((epoch + 1) % config.eval_every == 0
                                         or epoch + 1 == config.epochs):
            t_eval = time.perf_counter()
            per_example = evaluate(eval_model, task, eval_batches(), batch_size=eval_batch_size,
                                   mesh=mesh, progress=config.progress)
            row.update(_summarise_eval(per_example))
            row["eval_time_s"] = time.perf_counter() - t_eval
        if config.lr_schedule == "plateau":
            value = row.get(config.plateau_metric)
            if value is None:
                raise ValueError(
                    f"plateau_metric {config.plateau_metric!r} is not among this epoch's "
                    f"metrics {sorted(row)}; choose one of them."
                )
            plateau = plateau.update(float(value), config)
        history.append(row)
        if run is not None:
            run.write_history(history)
            meta = {"epoch": epoch + 1, "history": history, "plateau": plateau.to_dict(),
                    "seed": config.seed,
                    "train_key": np.asarray(jax.random.key_data(train_key)).tolist(),
                    "config": config.to_dict()}
            last_good = save_checkpoint(
                ckpt_dir, epoch + 1, {"model": model, "opt_state": opt_state, "ema": ema},
                meta, keep=config.keep_checkpoints)
        log(_format_row(row))  # after the checkpoint: an interrupt here loses nothing
    return FitResult(model=model, eval_model=_eval_model(model, ema), history=history,
                     run_path=None if run is None else run.path,
                     epochs_done=len(history))


def _eval_model(model, ema):
    return model if ema is None else _set_params(model, ema)


def _format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch']}"]
    for k, v in row.items():
        if k == "epoch":
            continue
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}")
        else:
            parts.append(f"{k}={v}")
    return "  ".join(parts)
