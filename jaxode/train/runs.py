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

Three kinds of ``config.json`` are understood: a classification run
(``{"classify": {...}}``, `experiments.classify`; read by
`jaxode.train.load.load_classify_run`, which also takes a finished run's final weights), a model named with its factory
arguments (``{"model": NAME, "model_kwargs": {...}, "task": {"mean", "std"}}``, e.g.
the quick runs of `experiments.transfer`), and a DCN run (``{"model": DCN name,
"widths", "tol"}``, `experiments.dcn`).  Segmentation runs are not read here yet.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import equinox as eqx
import jax
import numpy as np

from jaxode.ode import trainable
from jaxode.train.checkpoint import complete_epochs, latest_checkpoint


@dataclasses.dataclass
class Run:
    """A trained model and what is needed to use it (see `load_run`).

    - `model`: the network with the checkpoint's weights (EMA weights if kept).
    - `config`: the run's ``config.json`` as a dict.
    - `name`: the model's name (`jaxode.models.MODELS` or `jaxode.models.dcn`).
    - `norm`: ``(mean, std)`` per channel of the run's input normalisation, or None.
    - `epoch`: the checkpoint read.  `path`: the run folder.
    """

    model: Any
    config: dict
    name: str
    norm: tuple | None
    epoch: int
    path: str

    @property
    def task(self):
        """A `ClassificationTask` with the run's input preprocessing (no augmentation)."""
        from jaxode.train.tasks import ClassificationTask

        mean, std = self.norm if self.norm is not None else (None, None)
        return ClassificationTask(mean=None if mean is None else tuple(mean),
                                  std=None if std is None else tuple(std))

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Logits for raw uint8 images ``(N, H, W, C)``: the run's own preprocessing
        (scale to [0, 1], its normalisation), then the model in inference mode."""
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"predict: expected images (N, H, W, C), got shape {images.shape}.")
        out = [np.asarray(_predict_batch(self.model, self.task, images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


@eqx.filter_jit
def _predict_batch(model, task, images):
    x = task.prepare(images, jax.random.PRNGKey(0), train=False)
    logits, _ = model(x, inference=True)
    return logits


def _read_config(run_dir: str) -> dict:
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
    cfg = _read_config(run_dir)
    if isinstance(cfg.get("classify"), dict):  # final weights, phases, per-image predict
        from jaxode.train.load import load_classify_run

        return load_classify_run(run_dir, data_root=data_root)
    if _is_dcn(cfg.get("model")):
        model, name, norm = _dcn_template(cfg), cfg["model"], None
    elif isinstance(cfg.get("model"), str):
        from jaxode.models import make_model

        name = cfg["model"]
        model = make_model(name, key=jax.random.PRNGKey(0), **dict(cfg.get("model_kwargs") or {}))
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        norm = (tuple(task["mean"]), tuple(task["std"])) if task.get("mean") is not None else None
    else:
        raise ValueError(f"{run_dir}/config.json names no model (no 'classify' or 'model' "
                         "entry); pass a classification or DCN run folder.")
    model, epoch = newest_weights(os.path.join(run_dir, "checkpoints"), model, log=log)
    if _is_dcn(name):
        from jaxode.nn.srf import refresh_support

        model = refresh_support(model, "separable")
    return Run(model=model, config=cfg, name=name, norm=norm, epoch=epoch, path=run_dir)


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
