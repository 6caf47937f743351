"""Reading a classification run back: `load_classify_run(run_dir)` -> `jaxode.train.Run`
(the one run type of `jaxode.train.runs`), and `export_final`.

Users call `jaxode.train.load_run`, which sends the run folders of
`experiments.classify` here (and reads DCN and transfer runs itself).
The weights come from either

- ``final.eqx`` + ``final.json``: the final evaluation weights of a finished run
  (written by `export_final`; the EMA weights when the run used EMA), or
- ``checkpoints/``: the newest intact training checkpoint (a run still training, or
  one not yet exported); the evaluation weights are taken from it exactly as
  `jaxode.train.fit` evaluates (EMA weights when ``ema_decay`` is set, the ODE blocks
  solved as in the last epoch's phase).

When both are present the one with the later epoch is used (a run resumed after its
export is read from its checkpoints).

"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import equinox as eqx
import jax
import numpy as np

from jaxode.train.classify_config import ClassifyConfig
from jaxode.train.runs import Run, checkpoint_dir, newest_weights

FINAL_WEIGHTS = "final.eqx"
FINAL_META = "final.json"

# Image shape (H, W, C) and class count of the datasets the project knows by name, so
# that a run can be loaded without its data.  Other datasets are read once for them.
KNOWN_DATASETS = {
    "digits": ((8, 8, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "tiny-imagenet": ((64, 64, 3), 200),
}


# ------------------------------------------------------------------------ reading


def _tuples(x):
    """JSON lists back to the tuples of the frozen (hashable) configs."""
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: {what}. Pass the folder of a run made by "
            "`python -m experiments.classify` (it holds config.json).") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); restore it from git "
                         "(`git checkout -- PATH`) or a backup.") from e


def _classify_config(config: dict, path: str) -> ClassifyConfig:
    """The run's ``classify`` settings (older runs: missing ones take their defaults)."""
    if not isinstance(config.get("classify"), dict):
        raise ValueError(
            f"{path}/config.json has no 'classify' section (keys: {sorted(config)}); "
            "this reader takes the runs of experiments.classify.")
    return ClassifyConfig.from_saved(config["classify"])


def _dataset_info(cfg, data_root):
    """(image_shape, num_classes) of the run's dataset, without reading it if known."""
    if cfg.dataset in KNOWN_DATASETS:
        return KNOWN_DATASETS[cfg.dataset]
    from jaxode.data import load_dataset

    test = load_dataset(cfg.dataset, "test", root=data_root or cfg.data_root)
    return tuple(test.image_shape), int(test.num_classes)


def _task(cfg, meta: dict | None, data_root):
    """The run's ClassificationTask; normalisation statistics come from ``final.json``
    or, for a checkpoint, from the training set as `experiments.classify` computed them."""
    mean = std = None
    if cfg.normalize:
        if meta is not None and meta.get("mean") is not None:
            mean, std = tuple(meta["mean"]), tuple(meta["std"])
        else:
            from jaxode.data import load_dataset
            from jaxode.data.augment import channel_stats

            try:
                train = load_dataset(cfg.dataset, "train", root=data_root or cfg.data_root)
            except (FileNotFoundError, ValueError) as e:
                raise FileNotFoundError(
                    f"this run normalises its inputs with the training set's channel "
                    f"statistics, which are computed from {cfg.dataset!r} ({e}); pass "
                    "data_root=FOLDER (or set JAXODE_DATA), or export the run's final "
                    "weights once (export_final stores the statistics).") from e
            if cfg.train_limit is not None:
                train = train.subset(slice(0, cfg.train_limit))
            mean, std = channel_stats(train.images)
    return cfg.task(mean, std)


def _checkpoint_train_config(folder: str, epoch: int | None) -> dict:
    """The TrainConfig a checkpoint's metadata records (runs whose config.json has no
    ``train`` section); {} (defaults) when there is none."""
    if epoch is None:
        return {}
    try:
        with open(os.path.join(folder, f"ckpt-{epoch:04d}.json")) as f:
            return json.load(f).get("config") or {}
    except (OSError, ValueError):
        return {}


def _train_config(train_cfg: dict):
    from jaxode.train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in _tuples(train_cfg).items() if k in known})


def _phase_model(model, tcfg, epochs_done: int):
    """`model` with its ODE blocks solved as in epoch `epochs_done` (the phase that
    `fit` trained and evaluated that epoch with; unchanged without phases)."""
    from jaxode.train.phases import apply_phase, parse_schedule, phase_at
    from jaxode.train.utils import ode_blocks

    blocks = ode_blocks(model)
    if not tcfg.phases or not blocks:
        return model
    phase = phase_at(parse_schedule(tcfg.phases), max(epochs_done - 1, 0))
    return apply_phase(model, phase, blocks[0].config, tcfg.euler_steps)


def _from_checkpoint(model, tcfg, folder: str):
    """(epoch, evaluation model) of the newest checkpoint that reads back: its model
    weights, or its EMA weights when the run kept them (`runs.newest_weights`)."""
    from jaxode.train.checkpoint import latest_checkpoint

    template = _phase_model(model, tcfg, latest_checkpoint(folder) or 0)
    weights, epoch = newest_weights(folder, template, log=lambda msg: None)
    return epoch, weights


def load_classify_run(run_dir: str, *, data_root: str | None = None) -> Run:
    """Load the run in `run_dir` (a folder of `experiments.classify`).

    `data_root` is needed only for a dataset outside `KNOWN_DATASETS`, or for a run
    with input normalisation that has no ``final.json`` yet (its statistics are
    recomputed from the training set).  Raises FileNotFoundError (no run, or no
    weights yet) or ValueError (a damaged or foreign folder), each saying what to do."""
    path = os.path.abspath(run_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run folder {run_dir!r} does not exist; pass the folder of a "
                                "run, e.g. results/mnist-chen-resnet.")
    config = _read_json(os.path.join(path, "config.json"), "this is not a run folder")
    cfg = _classify_config(config, path)
    final_meta = None
    if os.path.exists(os.path.join(path, FINAL_META)):
        final_meta = _read_json(os.path.join(path, FINAL_META), "the final weights' record")
    from jaxode.train.checkpoint import latest_checkpoint

    ckpt_dir = checkpoint_dir(path)
    newest = latest_checkpoint(ckpt_dir)
    if newest is None and final_meta is None:
        raise FileNotFoundError(
            f"{path} holds no weights yet (neither {FINAL_WEIGHTS} nor a checkpoint in "
            "checkpoints/): wait for the first epoch to finish, or resume the run.")
    if final_meta is not None:
        image_shape, num_classes = tuple(final_meta["image_shape"]), int(final_meta["num_classes"])
    else:
        image_shape, num_classes = _dataset_info(cfg, data_root)
    template = cfg.build_model(num_classes, image_shape[-1], jax.random.PRNGKey(cfg.seed))
    tcfg = _train_config(config.get("train") or _checkpoint_train_config(ckpt_dir, newest))
    task = _task(cfg, final_meta or config.get("data"), data_root)
    ckpt = None
    if newest is not None and (final_meta is None or newest > int(final_meta["epoch"])):
        ckpt = _from_checkpoint(template, tcfg, ckpt_dir)
    if ckpt is not None:
        epoch, model = ckpt
        source = "checkpoint"
    elif final_meta is not None:
        model = _read_final(path, _phase_model(template, tcfg, int(final_meta["epoch"])))
        epoch, source = int(final_meta["epoch"]), "final"
    else:  # only damaged checkpoints (load_newest_intact raised otherwise)
        raise FileNotFoundError(f"{ckpt_dir} holds no readable checkpoint.")
    return Run(path=path, config=config, model=model, task=task, epoch=epoch, name=cfg.model,
               source=source, image_shape=tuple(int(s) for s in image_shape),
               num_classes=num_classes)


def _read_final(path: str, template):
    try:
        return eqx.tree_deserialise_leaves(os.path.join(path, FINAL_WEIGHTS), template)
    except (OSError, ValueError, EOFError, RuntimeError, TypeError) as e:
        raise ValueError(
            f"{path}/{FINAL_WEIGHTS} is damaged or does not match the model of config.json "
            f"({type(e).__name__}: {str(e)[:200]}); restore it from git.") from e


# ------------------------------------------------------------------------ writing


def export_final(run_dir: str, *, remove_checkpoints: bool = False,
                 data_root: str | None = None) -> str:
    """Write the evaluation weights of the run's newest checkpoint to ``final.eqx``
    (weights only: no optimiser state) and ``final.json`` (epoch, image shape, class
    count, normalisation statistics).

    With `remove_checkpoints`, ``checkpoints/`` is deleted afterwards -- only once the
    written file has been read back and gives the same weights.  Returns the path of
    ``final.eqx``."""
    from jaxode.train.rundir import write_json

    run = load_classify_run(run_dir, data_root=data_root)
    if run.source != "checkpoint":
        raise ValueError(f"{run.path} has no checkpoint newer than its {FINAL_WEIGHTS} "
                         f"(epoch {run.epoch}); nothing to export.")
    out = os.path.join(run.path, FINAL_WEIGHTS)
    tmp = f"{out}.tmp-{os.getpid()}"
    eqx.tree_serialise_leaves(tmp, run.model)
    meta = {"epoch": run.epoch, "image_shape": list(run.image_shape),
            "num_classes": run.num_classes, "mean": run.task.mean, "std": run.task.std,
            "from": f"checkpoints/ckpt-{run.epoch:04d}.eqx"}
    check = eqx.tree_deserialise_leaves(tmp, run.model)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(check, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(run.model, eqx.is_array))))
    if not same:
        os.remove(tmp)
        raise RuntimeError(f"{tmp} did not read back identically; nothing was changed.")
    os.replace(tmp, out)
    write_json(os.path.join(run.path, FINAL_META), meta)
    if remove_checkpoints:
        planned = int(run.config["train"]["epochs"])
        if run.epoch < planned:
            raise ValueError(
                f"{run.path} has trained {run.epoch} of its {planned} epochs; its checkpoints "
                "are what a resume continues from, so they were kept (final.eqx was written). "
                "Remove them only once the run has finished.")
        reread = load_classify_run(run.path, data_root=data_root)
        if reread.source != "final" or reread.epoch != run.epoch:
            raise RuntimeError("the exported weights do not load back as the final ones; "
                               "checkpoints/ was kept.")
        shutil.rmtree(checkpoint_dir(run.path))
    return out
