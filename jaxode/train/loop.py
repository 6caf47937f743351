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
from jaxode.train.optim import sgd_momentum, with_groups
from jaxode.train.parallel import data_mesh, local_mesh, replicate, shard_batch
from jaxode.train.phases import apply_phase, parse_schedule, phase_at
from jaxode.train.regularize import Regularization, add_to_loss, for_training
from jaxode.train.rundir import RunDir
from jaxode.train.schedules import PlateauState, learning_rate
from jaxode.train.steplog import StepLog
from jaxode.train.utils import ode_blocks, tree_is_finite


class NonFiniteLossError(RuntimeError):
    """The loss (or the updated weights) became NaN or infinite during training."""


_NO_REGULARIZATION = Regularization()


@eqx.filter_jit
def _train_step(model, opt_state, ema, batch, key, eta, task, tx, ema_decay,
                reg: Regularization = _NO_REGULARIZATION):
    """One step: p <- p + eta * u, u = `tx`'s update of the trainable leaves
    (`jaxode.train.optim`); EMA e <- d e + (1 - d) p."""
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
    params, rest = eqx.partition(model, spec)
    view = optimizer_view(params)
    updates, opt_state = tx.update(optimizer_view(eqx.filter(grads, spec)), opt_state, view)
    new_p = jtu.tree_leaves(jtu.tree_map(lambda p, u: p + eta * u, view, updates))
    params = jtu.tree_unflatten(jtu.tree_structure(params), new_p)
    if ema is not None:
        ema = [ema_decay * e + (1.0 - ema_decay) * w for e, w in zip(ema, new_p)]
    finite = jnp.isfinite(loss) & tree_is_finite(new_p)
    return eqx.combine(params, rest), opt_state, ema, loss, metrics, finite


train_step = _train_step  # public name (benchmarks and Table-2 style memory measurements)


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
    enabled, else `model`), the per-epoch `history`, the run folder path, and the
    final optimiser state."""

    model: Any
    eval_model: Any
    history: list[dict[str, Any]]
    run_path: str | None
    epochs_done: int
    opt_state: Any = None


def summarise(task, per_example: dict[str, np.ndarray]) -> dict[str, float]:
    """A whole set's metrics from its per-example ones: ``task.summarise`` when the
    task has it (e.g. mIoU from summed confusion matrices), else the mean of every
    floating-point metric."""
    if hasattr(task, "summarise"):
        return {k: float(v) for k, v in task.summarise(per_example).items()}
    return {k: float(np.mean(v)) for k, v in per_example.items()
            if np.issubdtype(v.dtype, np.floating)}


def optimizer_view(params):
    """The trainable parameters as the optimiser sees them: every ODE block's
    `SolveConfig` (static settings, no trainable arrays) taken out, so that a solver
    phase switch (Euler -> dopri5) leaves the optimiser state's structure unchanged.
    Label functions of parameter groups (`jaxode.train.optim`) receive this tree."""
    blocks = ode_blocks(params)
    if not blocks:
        return params
    return eqx.tree_at(lambda m: [b.config for b in ode_blocks(m)], params,
                       [None] * len(blocks))


def make_optimizer(config: TrainConfig, optimizer: optax.GradientTransformation | None = None
                   ) -> optax.GradientTransformation:
    """The transformation `fit` applies: `optimizer` (default: `sgd_momentum(config)`)
    with the parameter groups `config` asks for (`jaxode.train.optim.with_groups`)."""
    if optimizer is not None:
        sgd_only = {k: v for k, v in (("weight_decay", config.weight_decay),
                                      ("grad_clip", config.grad_clip),
                                      ("nesterov", config.nesterov)) if v}
        if sgd_only:
            raise ValueError(
                f"TrainConfig {sgd_only} configures the default SGD, which optimizer= "
                "replaces; put it in the optax chain instead (optax.add_decayed_weights, "
                "optax.clip_by_global_norm, optax.sgd(..., nesterov=True)) and leave it "
                "unset in TrainConfig.")
    return with_groups(sgd_momentum(config) if optimizer is None else optimizer, config)


def train_state(model, config: TrainConfig, optimizer: optax.GradientTransformation | None = None):
    """What a checkpoint of `fit` holds, at the start of training:
    ``{"model", "opt_state", "ema"}`` (EMA: a list of the trainable leaves, or None).
    Also the template to read a checkpoint into (`load_checkpoint`)."""
    params = optimizer_view(eqx.filter(model, trainable(model)))
    opt_state = make_optimizer(config, optimizer).init(params)
    ema = ([jnp.array(p) for p in _param_leaves(model)] if config.ema_decay is not None
           else None)
    return {"model": model, "opt_state": opt_state, "ema": ema}


def fit(model, task, train_batches: Callable[[int], Iterable], eval_batches=None, *,
        config: TrainConfig, optimizer: optax.GradientTransformation | None = None,
        run: RunDir | None = None, resume: bool = False, eval_batch_size: int | None = None,
        on_step: Callable[[dict], Any] | None = None, init_opt_state=None,
        log: Callable[[str], None] = print) -> FitResult:
    """Train `model` on `task` (see `jaxode.train` for the contract).

    **Arguments:**

    - `model`: an Equinox module (its initial weights; on resume, the template the
      checkpoint is read into -- build it exactly as for the original run).
    - `task`: a hashable object with ``train_loss`` and ``eval_metrics``.
    - `train_batches`: ``epoch -> iterable of batches`` (dicts of numpy arrays with a
      common, fixed batch size); must depend only on the epoch for exact resumes.
    - `eval_batches`: ``() -> iterable of batches``, or None for no evaluation.
    - `config`: a `TrainConfig` (epochs, schedule, EMA, phases, checkpoints, ...).
    - `optimizer`: any ``optax.GradientTransformation`` over the trainable leaves
      (see `jaxode.train.optim` for how it meets the schedule); None = the papers'
      SGD with momentum from `config` (`sgd_momentum`).  ``config.g_lr_scale`` adds
      NODE-EW's theta_1 group to either.  Pass the same object to every call (a new
      optimiser object compiles a new step).
    - `run`: a `RunDir` for metrics (per epoch in ``metrics.csv``, per step in
      ``steps.csv``: `jaxode.train.steplog`), plots and checkpoints (None: nothing
      written, no resume).
    - `resume`: continue from the newest checkpoint in ``run.checkpoints``.
    - `on_step`: called after every step with ``{"epoch", "step" (1-based, counted over
      the run), "lr", "step_time_s", <training metrics>}``; a true return value ends
      training after that step (the epoch is then evaluated and saved as usual).
    - `init_opt_state`: the optimiser state to start from (e.g. ``FitResult.opt_state``
      of a previous phase trained with the same optimiser); default: a fresh one.

    **Returns:** a `FitResult`.
    **Raises:** `NonFiniteLossError` when a loss or an update is not finite.
    """
    mesh = data_mesh(config.data_parallel)
    own_optimizer = optimizer is not None
    tx = make_optimizer(config, optimizer)
    reg = Regularization.from_config(config)
    phases = parse_schedule(config.phases) if config.phases else None
    blocks = ode_blocks(model)
    base_solve = blocks[0].config if blocks else None

    def phase_model(m, epoch):
        if phases is None or base_solve is None:
            return m
        return apply_phase(m, phase_at(phases, epoch), base_solve, config.euler_steps)

    state = train_state(model, config, optimizer)
    opt_state, ema = state["opt_state"], state["ema"]
    if init_opt_state is not None:  # e.g. a previous fit's: training continues
        opt_state = init_opt_state
    step = 0
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
            step = int(meta.get("step", 0))
            log(f"resuming {run.path} after epoch {start_epoch}")
    elif ckpt_dir is not None and os.path.isdir(ckpt_dir) and saved_epochs(ckpt_dir):
        raise FileExistsError(
            f"{ckpt_dir} holds the checkpoints of an earlier run, which a fresh run would "
            "mix with its own; pass resume=True (--resume) to continue it, or use another "
            "run folder. Nothing was deleted.")

    # per-step metrics (steps.csv), from the step the run (re)starts at
    steps_log = StepLog(run.steps_csv) if run is not None and run.writer else None
    if steps_log is not None:
        steps_log.start(step)
    model, opt_state, ema = replicate((model, opt_state, ema), mesh)
    # the schedule's value: the rate itself for the default SGD, else a factor on the
    # optimiser's own update (see `jaxode.train.optim`)
    lr_name = "lr_scale" if own_optimizer else "lr"
    stop = False
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
        eta = lr if not own_optimizer else 1.0
        for i, batch in enumerate(batches):
            if config.max_train_batches is not None and i >= config.max_train_batches:
                break
            lr = learning_rate(config, epoch, i, steps or 1, plateau.scale)
            eta = lr / config.lr if own_optimizer else lr
            b = shard_batch(batch, mesh)
            t_step = time.perf_counter()
            try:
                new = _train_step(model, opt_state, ema, b, jax.random.fold_in(ekey, i),
                                  jnp.asarray(eta, jnp.float32), task, tx, config.ema_decay,
                                  reg)
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
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            step += 1
            step_row = {"epoch": epoch + 1, "step": step, lr_name: eta, **metrics,
                        "step_time_s": time.perf_counter() - t_step}
            if steps_log is not None:
                steps_log.add(step_row)
            stop = on_step is not None and on_step(dict(step_row))
            if bar is not None:
                bar.update(1)
                post = {k: f"{sums[k] / count:.3g}" for k in ("loss", "acc", "nfe") if k in sums}
                bar.set_postfix(post)
            if stop:
                break
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
        row[lr_name] = eta
        row.update({f"train_{k}": v / count for k, v in sums.items()})
        row["train_time_s"] = time.perf_counter() - t_start
        eval_model = _eval_model(model, ema)
        if eval_batches is not None and ((epoch + 1) % config.eval_every == 0
                                         or epoch + 1 == config.epochs):
            t_eval = time.perf_counter()
            per_example = evaluate(eval_model, task, eval_batches(), batch_size=eval_batch_size,
                                   mesh=mesh, progress=config.progress)
            row.update({f"eval_{k}": v for k, v in summarise(task, per_example).items()})
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
        if steps_log is not None:
            steps_log.flush()  # before the checkpoint: the file covers every saved step
        if run is not None:
            run.write_history(history, final=stop or epoch + 1 == config.epochs)
            meta = {"epoch": epoch + 1, "step": step, "history": history,
                    "plateau": plateau.to_dict(),
                    "seed": config.seed,
                    "train_key": np.asarray(jax.random.key_data(train_key)).tolist(),
                    "config": config.to_dict()}
            last_good = save_checkpoint(
                ckpt_dir, epoch + 1, {"model": model, "opt_state": opt_state, "ema": ema},
                meta, keep=config.keep_checkpoints)
        log(_format_row(row))  # after the checkpoint: an interrupt here loses nothing
        if stop:
            break
    return FitResult(model=model, eval_model=_eval_model(model, ema), history=history,
                     run_path=None if run is None else run.path,
                     epochs_done=len(history), opt_state=opt_state)


def _param_leaves(model) -> list:
    return jtu.tree_leaves(eqx.filter(model, trainable(model)))


def _eval_model(model, ema):
    """`model` with the EMA weights (a list in `_param_leaves` order), if any."""
    if ema is None:
        return model
    params, rest = eqx.partition(model, trainable(model))
    return eqx.combine(jtu.tree_unflatten(jtu.tree_structure(params), ema), rest)


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
