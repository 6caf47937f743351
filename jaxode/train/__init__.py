"""Training: optimiser and schedules, train/eval steps, checkpoints, run folders.

One model-agnostic trainer, `fit`, serves every pipeline of the project
(classification, DCN, NODE-EW on MNIST, SegNode segmentation, the 2-D flows, the
curve fit, the transfer fine-tune).  A new model family needs a model and a task,
nothing else (this snippet is run by tests/test_fit_tasks.py)::

    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    from jaxode.fields.cnf import ConcatMLP
    from jaxode.ode import ODEBlock, SolveConfig
    from jaxode.train import TrainConfig, fit, solver_metrics

    class ODEClassifier(eqx.Module):      # x -> z(1) of dz/dt = f(t, z) -> linear head
        ode: ODEBlock
        head: eqx.nn.Linear
        def __call__(self, x, *, key=None, inference=False):
            z, stats = self.ode.batched(x)
            return jax.vmap(self.head)(z), solver_metrics(stats, x.shape[0])

    class XEntropy(eqx.Module):           # what a batch is and what is minimised
        def train_loss(self, model, batch, key):
            logits, aux = model(batch["x"], key=key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            return loss, {"loss": loss, "nfe": aux["nfe"].mean()}
        def eval_metrics(self, model, batch, key):
            logits, _ = model(batch["x"], inference=True)
            return {"acc": (logits.argmax(-1) == batch["y"]).astype(jnp.float32)}

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    model = ODEClassifier(ODEBlock(ConcatMLP(2, 16, key=k1), 0.0, 1.0,
                                   SolveConfig(solver="euler", num_steps=4)),
                          eqx.nn.Linear(2, 2, key=k2))
    x = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    data = {"x": x, "y": (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).astype(np.int32)}
    result = fit(model, XEntropy(), lambda epoch: [data], lambda: [data],
                 config=TrainConfig(epochs=20, lr=1.0, progress=False),
                 optimizer=optax.adam(3e-2))
    print(result.history[-1]["eval_acc"])  # accuracy on the (training) points

Its contract:

**The model** is an Equinox module called on a *batch*::

    output, aux = model(x, *, key=None, inference=False)

``x`` has a leading batch axis (images: float32 ``(N, C, H, W)``); ``key`` feeds
dropout (``None`` is allowed when ``inference=True``); ``aux`` is a dict of per-example
arrays of shape ``(N,)`` -- the ODE models of `jaxode.models` put the forward solver
statistics there (``aux["nfe"]``, ``aux["steps"]``, summed over their ODE blocks; a
joint-batch solve's scalar is broadcast to ``(N,)``).  Models without ODE blocks return
zeros or an empty dict.  The trainer itself never calls the model: a *task* does.

**The task** (any hashable object -- a frozen dataclass -- with two methods) says
what a batch is and what is minimised::

    loss, metrics = task.train_loss(model, batch, key)      # scalar, {name: scalar}
    per_example   = task.eval_metrics(model, batch, key)    # {name: (N,) array}

``batch`` is a dict of arrays with a common leading axis (``{"image": uint8 NHWC,
"label": int32}`` for classification).  Augmentation happens inside `train_loss`,
on the device, from `key`.  `ClassificationTask` (cross-entropy, random crop / flip /
colour jitter, optional normalisation, metrics ``loss, acc, nfe, steps``) is the
ready-made one; `SegmentationTask` (mIoU), `DensityTask` (NLL, bits/dim) and
`RegressionTask` (trajectory fit) are the others (`jaxode.train.more_tasks`).

**The loop**::

    from jaxode.train import TrainConfig, fit, RunDir, ClassificationTask, dataset_batches

    config = TrainConfig(epochs=10, batch_size=128, lr=0.1, weight_decay=1e-4,
                         lr_schedule="plateau", ema_decay=None, seed=0)
    run = RunDir("runs/my-run", config_dict)          # config.json, metrics.csv, ...
    result = fit(model, task,
                 train_batches=lambda epoch: dataset_batches(train_set, 128,
                                                             seed=(0, epoch), shuffle=True,
                                                             drop_last=True),
                 eval_batches=lambda: dataset_batches(test_set, 256, shuffle=False),
                 config=config, run=run, resume=False)
    result.model, result.eval_model, result.history   # eval_model = EMA weights if on

`fit` optimises only `jaxode.ode.trainable(model)` leaves with any ``optax``
transformation (`optimizer=`, e.g. ``optax.adam(1e-3)``; parameter groups by
``optax.multi_transform``: `scale_theta1`, `freeze_all_but`, see `jaxode.train.optim`).
The default is SGD + momentum (PyTorch semantics: lr applied after momentum; weight
decay added to the gradient), the learning rate following `lr_schedule` (``constant``, ``step`` at `milestones`,
``cosine``, ``plateau`` on the monitored metric), optional warm-up, gradient clipping
and EMA.  It differentiates all inexact arrays so that the backsolve adjoint's backward
NFE is read from the gradients (`jaxode.ode.backward_nfe`) and logged as
``nfe_backward`` beside the task's metrics.  With ``config.phases =
"euler:5,adjoint:10"`` every ODEBlock's SolveConfig is switched per epoch
(`jaxode.train.phases`).  Batches are sharded over all local devices (a 1-D
``jax.sharding.Mesh``, axis ``"data"``; parameters replicated) when
``config.data_parallel`` is on; the global batch must divide by the device count.

Every epoch: train (tqdm bar with loss, acc, mean NFE), evaluate, append a row to
``metrics.csv`` (+ TensorBoard if installed), redraw the PNG curves, write a
checkpoint (model + optimiser state + EMA + epoch + RNG + schedule state + metrics
history; written to a temporary file and `os.replace`d; the last
``config.keep_checkpoints`` are kept).  ``resume=True`` continues from the newest
checkpoint and reproduces the uninterrupted run exactly: every random draw depends
only on (seed, epoch, step).  A non-finite loss stops the run with
`NonFiniteLossError` naming epoch and step; the last good checkpoint is untouched.

`evaluate(model, task, batches, batch_size=...)` returns the per-example metrics of a
whole set as numpy arrays (used for Table-1-style statistics, e.g. solver steps per
image mean +- std from ``per_sample`` solves); `with_batch_mode(model, "per_sample")`
and `with_tolerance(model, tol)` rewrite every ODEBlock's SolveConfig (tolerances are
arrays: a sweep does not recompile).

`load_run(run_dir)` is the one reader of a run folder (classify, DCN and factory-named
runs; final weights or newest checkpoint): one `Run` type with ``.model``, ``.config``
and ``.predict(uint8_images)`` -> logits (`jaxode.train.runs`); `export_final` keeps
only a finished classify run's evaluation weights (`jaxode.train.load`).
"""

from jaxode.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from jaxode.train.config import TrainConfig
from jaxode.train.load import export_final
from jaxode.train.loop import (
                               FitResult,
                               NonFiniteLossError,
                               evaluate,
                               fit,
                               make_optimizer,
                               summarise,
                               train_state,
)
from jaxode.train.more_tasks import DensityTask, RegressionTask, SegmentationTask
from jaxode.train.optim import freeze_all_but, scale_groups, scale_theta1, sgd_momentum
from jaxode.train.parallel import data_mesh, replicate, shard_batch
from jaxode.train.rundir import RunDir
from jaxode.train.runs import Run, load_run
from jaxode.train.schedules import PlateauState, learning_rate
from jaxode.train.tasks import ClassificationTask, dataset_batches
from jaxode.train.utils import (
                               count_params,
                               is_ode_block,
                               ode_blocks,
                               solver_metrics,
                               with_batch_mode,
                               with_solve,
                               with_tolerance,
)

__all__ = [
                               "ClassificationTask",
                               "DensityTask",
                               "FitResult",
                               "NonFiniteLossError",
                               "PlateauState",
                               "RegressionTask",
                               "Run",
                               "RunDir",
                               "SegmentationTask",
                               "TrainConfig",
                               "count_params",
                               "data_mesh",
                               "dataset_batches",
                               "evaluate",
                               "export_final",
                               "fit",
                               "freeze_all_but",
                               "is_ode_block",
                               "latest_checkpoint",
                               "learning_rate",
                               "load_checkpoint",
                               "load_run",
                               "make_optimizer",
                               "ode_blocks",
                               "replicate",
                               "save_checkpoint",
                               "scale_groups",
                               "scale_theta1",
                               "sgd_momentum",
                               "shard_batch",
                               "solver_metrics",
                               "summarise",
                               "train_state",
                               "with_batch_mode",
                               "with_solve",
                               "with_tolerance",
]
