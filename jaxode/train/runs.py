"""Reading a trained run folder back: the one reader of its file layout.

A run folder, as `jaxode.train.fit` and `RunDir` write it::

    config.json              what was run (the experiment's settings)
    checkpoints/ckpt-NNNN.*  the arrays of {"ema", "model", "opt_state"} in PyTree order
                             (`jaxode.train.checkpoint`) and the epoch's JSON metadata

`load_run(run_dir)` rebuilds the model from ``config.json``, reads the newest intact
checkpoint into it (an older one when the newest is damaged; the EMA weights when the
run kept them) and returns a `Run`::

    run = load_run("runs/smoke-digits")
    logits = run.predict(test.images)         # raw uint8 (N, H, W, C) -> (N, classes)

Three kinds of ``config.json`` are understood, each read into the same `Run`: a
classification run (``{"classify": {...}}``, `experiments.classify`; read by
`jaxode.train.load.load_classify_run`, which also takes a finished run's
``final.eqx``), a model named with its factory arguments (``{"model": NAME, "model_kwargs": {...}, "task": {"mean", "std"}}``, e.g.
the quick runs of `experiments.transfer`), and a DCN run (``{"model": DCN name,
"widths", "tol"}``, `experiments.dcn`).  Segmentation runs (several models per folder) are not read here yet.  Code outside
this module and `jaxode.train.load` asks them for paths (`checkpoint_dir`,
`has_weights`, `read_summary`) instead of spelling the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxode.ode import trainable
from jaxode.train.checkpoint import complete_epochs, latest_checkpoint

CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"


@dataclasses.dataclass
class Run:
    """A trained model read back from its run folder, whatever experiment wrote it.

    - `path`: the run folder; `config`: its ``config.json`` as a dict.
    - `model`: the evaluation weights (EMA weights when the run kept them).
    - `task`: a `ClassificationTask` with the run's test-time preprocessing (uint8 ->
      [0, 1], its per-channel normalisation; no augmentation).
    - `epoch`: epochs trained when the weights were saved; `source`: ``"final"``
      (``final.eqx``) or ``"checkpoint"``.
    - `name`: the model's name (`jaxode.models.MODELS` or `jaxode.models.dcn`).
    - `image_shape` (H, W, C) and `num_classes` when the run records them (else None).
    """

    path: str
    config: dict
    model: Any
    task: Any
    epoch: int
    name: str
    source: str = "checkpoint"
    image_shape: tuple | None = None
    num_classes: int | None = None

    @property
    def norm(self) -> tuple | None:
        """``(mean, std)`` per channel of the run's input normalisation, or None."""
        return None if self.task.mean is None else (tuple(self.task.mean), tuple(self.task.std))

    def predict(self, images, *, batch_size: int = 250, batch_mode: str = "per_sample",
                return_stats: bool = False):
        """Logits ``(N, classes)`` (numpy float32) of raw uint8 images ``(N, H, W, C)``.

        `batch_size` images are solved per compiled call (the last batch is padded by
        repeating images, which leaves per-sample results unchanged).  `batch_mode`:
        ``per_sample`` (default: an image's logits do not depend on its batch) or
        ``joint`` (one solve per batch, as the evaluation during training).  With
        `return_stats`, also ``{"nfe", "steps"}`` per image (zeros without ODE blocks)."""
        from jaxode.train.utils import with_batch_mode

        images = self.check_images(images)
        if batch_mode not in ("per_sample", "joint"):
            raise ValueError(f"batch_mode must be 'per_sample' or 'joint', got {batch_mode!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        model = with_batch_mode(self.model, batch_mode)
        n = images.shape[0]
        size = min(batch_size, max(n, 1))
        parts = []
        for start in range(0, n, size):
            chunk = images[start:start + size]
            m = chunk.shape[0]
            out = _forward(model, self.task, jnp.asarray(chunk[np.arange(size) % m]))
            parts.append([np.asarray(a)[:m] for a in out])
        logits, nfe, steps = (np.concatenate(p) for p in zip(*parts)) if parts else (
            np.zeros((0, self.num_classes or 0), np.float32), np.zeros(0), np.zeros(0))
        return (logits, {"nfe": nfe, "steps": steps}) if return_stats else logits

    def check_images(self, images) -> np.ndarray:
        """`images` as a uint8 (N, H, W, C) array of this run's channels, or a clear error."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(
                f"predict takes raw uint8 images (0..255), as stored in the dataset, got dtype "
                f"{images.dtype}; pass the original pixels (the run's preprocessing is applied "
                "inside), e.g. jaxode.data.load_dataset('mnist', 'test').images.")
        h, w, c = self.image_shape or (None, None, images.shape[-1])
        if images.ndim == 3 and c == 1:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] != c:
            raise ValueError(f"predict takes images shaped (N, H, W, {c}) (channels last), got "
                             f"{images.shape}; this run was trained on {h}x{w}x{c} images.")
        return images

    def test_set(self, *, data_root: str | None = None, limit: int | None = None):
        """The test split of a classify run's dataset: its first `limit` images, by
        default as many as the run itself was evaluated on (its ``test_limit``)."""
        from jaxode.data import load_dataset

        settings = self.config.get("classify") or {}
        if "dataset" not in settings:
            raise ValueError(f"{self.path} is not a classify run: its config.json names no "
                             "dataset; load the test set with jaxode.data.load_dataset.")
        test = load_dataset(settings["dataset"], "test",
                            root=data_root or settings.get("data_root"))
        n = limit if limit is not None else settings.get("test_limit")
        return test if n is None else test.subset(slice(0, int(n)))

    def evaluate(self, test, *, batch_size: int = 500, batch_mode: str = "per_sample",
                 tol: float | None = None, progress: bool = False) -> dict:
        """Per-image ``acc``, ``loss``, ``steps``, ``nfe`` on the `Dataset` `test`
        (`jaxode.train.evaluate` with the run's task), ODE blocks solved `batch_mode`
        at the run's tolerance or rtol = atol = `tol`."""
        from jaxode.train.loop import evaluate
        from jaxode.train.tasks import dataset_batches
        from jaxode.train.utils import with_batch_mode, with_tolerance

        model = with_batch_mode(self.model, batch_mode)
        model = model if tol is None else with_tolerance(model, tol)
        return evaluate(model, self.task, dataset_batches(test, batch_size, shuffle=False),
                        batch_size=batch_size, progress=progress)


@eqx.filter_jit
def _forward(model, task, images):
    """Logits and per-image solver statistics; the test-time path of the task (no
    augmentation, so the key is unused)."""
    from jaxode.train.utils import solver_metrics

    x = task.prepare(images, jax.random.PRNGKey(0), train=False)
    logits, aux = model(x, key=None, inference=True)
    stats = solver_metrics(aux, images.shape[0])
    return logits, stats["nfe"], stats["steps"]


def read_config(run_dir: str) -> dict:
    """The run's ``config.json`` (a FileNotFoundError or ValueError says what to do)."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder {run_dir!r} does not exist; pass the folder of a "
                                "run, e.g. results/mnist-chen-resnet.")
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; pass a run folder (it holds config.json "
                                "and checkpoints/).")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); restore it from a backup.") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds no settings object; pass a run folder.")
    return cfg


def load_run(run_dir: str, *, data_root: str | None = None, log=print) -> Run:
    """The trained model of `run_dir` (see the module docstring); a FileNotFoundError
    or ValueError says what is missing or damaged and what to do."""
    cfg = read_config(run_dir)
    if isinstance(cfg.get("classify"), dict):  # final weights, phases, per-image predict
        from jaxode.train.load import load_classify_run

        return load_classify_run(run_dir, data_root=data_root)
    from jaxode.train.tasks import ClassificationTask

    task = ClassificationTask()  # DCN runs: no input normalisation
    shape = None
    if _is_dcn(cfg.get("model")):
        model, shape = _dcn_template(cfg), (32, 32, 3)  # experiments.dcn trains on CIFAR-10
    elif isinstance(cfg.get("model"), str):
        from jaxode.models import make_model

        model = make_model(cfg["model"], key=jax.random.PRNGKey(0),
                           **dict(cfg.get("model_kwargs") or {}))
        norm = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        if norm.get("mean") is not None:
            task = ClassificationTask(mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    else:
        raise ValueError(f"{run_dir}/config.json names no model (no 'classify' or 'model' "
                         "entry); pass a classification or DCN run folder.")
    model, epoch = newest_weights(checkpoint_dir(run_dir), model, log=log)
    if _is_dcn(cfg["model"]):
        from jaxode.nn.srf import refresh_support

        model = refresh_support(model, "separable")
    return Run(path=run_dir, config=cfg, model=model, task=task, epoch=epoch,
               name=cfg["model"], image_shape=shape)


def checkpoint_dir(run_dir: str) -> str:
    """The folder of a run's training checkpoints (`jaxode.train.checkpoint`)."""
    return os.path.join(run_dir, CHECKPOINTS)


def has_weights(run_dir: str) -> bool:
    """Whether `run_dir` holds weights to read: a checkpoint, or a finished classify
    run's ``final.eqx`` (`jaxode.train.load.export_final`)."""
    from jaxode.train.load import FINAL_WEIGHTS

    return (latest_checkpoint(checkpoint_dir(run_dir)) is not None
            or os.path.isfile(os.path.join(run_dir, FINAL_WEIGHTS)))


def read_summary(run_dir: str) -> dict | None:
    """The ``summary.json`` a finished run wrote (`RunDir.summary`), None before that."""
    path = os.path.join(run_dir, SUMMARY)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _is_dcn(name) -> bool:
    from jaxode.models.dcn import MODEL_NAMES

    return isinstance(name, str) and name in MODEL_NAMES


def _dcn_template(cfg: dict):
    """The DCN's shapes only (no weights drawn, nothing compiled): the checkpoint's
    values replace them."""
    from jaxode.models.dcn import DCNClassifier
    from jaxode.ode import SolveConfig

    widths, tol = tuple(cfg["widths"]), cfg["tol"]
    return eqx.filter_eval_shape(
        lambda k: DCNClassifier(cfg["model"], widths,
                                config=SolveConfig(rtol=tol, atol=tol), key=k),
        jax.random.PRNGKey(0))


def training_set_facts(settings: dict, train=None) -> dict:
    """``{"num_classes", "in_channels", "mean", "std"}`` of a classification run's
    training set (`settings`: its ``classify`` config; mean/std only when it
    normalises its input).  `train`: the set, already loaded (else loaded here)."""
    from jaxode.data import load_classification
    from jaxode.data.augment import channel_stats

    if train is None:
        train, _ = load_classification(settings["dataset"], root=settings.get("data_root"),
                                       train_limit=settings.get("train_limit"))
    mean = std = None
    if settings.get("normalize"):
        mean, std = (tuple(float(v) for v in s) for s in channel_stats(train.images))
    return {"num_classes": int(train.num_classes), "in_channels": int(train.image_shape[-1]),
            "mean": mean, "std": std}


def newest_weights(folder: str, model, *, log=print):
    """``(model, epoch)``: `model` (a template of the right structure) with the weights
    of the newest checkpoint in `folder` that reads back, trying older ones when the
    newest is damaged; the EMA weights when the run kept them (its metadata's
    ``config.ema_decay``).  Nothing is written or deleted."""
    newest = latest_checkpoint(folder)
    epochs = sorted(set(complete_epochs(folder)) | ({newest} if newest else set()), reverse=True)
    if newest is not None:
        epochs = [newest] + [e for e in epochs if e < newest]
    if not epochs:
        raise FileNotFoundError(f"no checkpoint in {folder}; train the model first.")
    errors = []
    for epoch in epochs:
        try:
            weights = _read_epoch(folder, epoch, model)
        except (OSError, ValueError) as e:
            errors.append(f"checkpoint {epoch}: {str(e)[:200]}")
            continue
        if errors:
            log(f"warning: {errors[0]}; using checkpoint {epoch} of {folder}.")
        return weights, epoch
    raise ValueError(f"no checkpoint in {folder} could be read into the model built from "
                     f"config.json ({'; '.join(errors)}); retrain the model.")


def _read_epoch(folder: str, epoch: int, model):
    base = os.path.join(folder, f"ckpt-{epoch:04d}")
    with open(base + ".json") as f:
        meta = json.load(f)
    has_ema = (meta.get("config") or {}).get("ema_decay") is not None
    ema = jax.tree_util.tree_leaves(eqx.filter(model, trainable(model))) if has_ema else None
    try:  # the leaves of {"ema", "model", "opt_state"}, read up to the model
        state = eqx.tree_deserialise_leaves(base + ".eqx", {"ema": ema, "model": model})
    except Exception as e:
        raise ValueError(f"could not read {base}.eqx ({type(e).__name__}: {e})") from e
    model = state["model"]
    if has_ema:
        params = eqx.filter(model, trainable(model))
        model = eqx.combine(jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(params), state["ema"]), model)
    return model
