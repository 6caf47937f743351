"""Checkpoints written by Orbax's `CheckpointManager` (atomic: a step is written to a
temporary folder and renamed when complete; keep-N; multi-host safe: every process
calls it and the primary one writes replicated arrays).

A checkpoint folder is in Orbax format when it holds ``format.json`` =
``{"format": "orbax"}`` (`use_orbax`, or ``RunDir(..., checkpoint_format="orbax")``).
`jaxode.train.checkpoint`'s functions then read and write it this way, with the same
semantics as ``.eqx`` checkpoints (newest intact one first, older ones when it is
damaged, nothing deleted but the steps beyond keep-N)::

    format.json     {"format": "orbax"}
    3/state/        the arrays of the tree (model, optimiser state, EMA) in PyTree order
    3/meta/         the JSON metadata (epoch, history, schedule state, ...)

`convert_to_orbax` turns a folder of ``.eqx`` checkpoints into this format; the
``.eqx`` files stay where they are and stay readable with `load_checkpoint` after
removing ``format.json``.
"""

from __future__ import annotations

import json
import os

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

MARKER = "format.json"


def is_orbax(folder: str) -> bool:
    """Whether checkpoint `folder` is marked as Orbax format."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            return json.load(f).get("format") == "orbax"
    except (OSError, ValueError, AttributeError):
        return False


def use_orbax(folder: str) -> None:
    """Mark `folder` (created if needed) for Orbax checkpoints.  Refused when it already
    holds ``.eqx`` checkpoints: convert them with `convert_to_orbax` instead."""
    from jaxode.train.checkpoint import _saved_epochs

    if is_orbax(folder):
        return
    os.makedirs(folder, exist_ok=True)
    if _saved_epochs(folder):
        raise FileExistsError(
            f"{folder} holds .eqx checkpoints; convert them with "
            "jaxode.train.checkpoint_orbax.convert_to_orbax(folder, template_at) (they are "
            "kept) rather than mixing two formats. Nothing was changed.")
    tmp = os.path.join(folder, f"{MARKER}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"format": "orbax"}, f)
    os.replace(tmp, os.path.join(folder, MARKER))


def _manager(folder: str, keep: int | None):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(folder), options=options)


def _arrays(tree) -> list:
    return jtu.tree_leaves(eqx.filter(tree, eqx.is_array))


def saved_epochs(folder: str) -> list[int]:
    """The epochs of the complete (renamed into place) Orbax steps of `folder`."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder)
                  if n.isdigit() and os.path.isdir(os.path.join(folder, n)))


def save(folder: str, epoch: int, tree, meta: dict, keep: int = 2) -> str:
    """Write step `epoch` (the arrays of `tree`, JSON-able `meta`) and keep the newest
    `keep` steps.  Every process of a distributed run must call it."""
    import orbax.checkpoint as ocp

    with _manager(folder, keep) as manager:
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_arrays(tree)), meta=ocp.args.JsonSave(meta)),
            force=True)
        manager.wait_until_finished()
    return os.path.join(folder, str(epoch))


def load(folder: str, epoch: int, template):
    """Read step `epoch` into `template`; returns ``(tree, meta)``.  FileNotFoundError
    when it is missing, ValueError when it is damaged or does not fit the template."""
    import orbax.checkpoint as ocp

    path = os.path.join(folder, str(epoch))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint {path} not found; the run folder may have been cleaned — start "
            "without --resume.")
    arrays, static = eqx.partition(template, eqx.is_array)
    leaves, treedef = jtu.tree_flatten(arrays)
    try:
        with _manager(folder, None) as manager:
            got = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore([np.asarray(x) for x in leaves]),
                meta=ocp.args.JsonRestore()))
        restored = list(got.state)
        bad = [(i, np.shape(a), np.shape(b)) for i, (a, b) in enumerate(zip(restored, leaves))
               if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype]
        if len(restored) != len(leaves) or bad:
            raise ValueError(f"{len(restored)} arrays for {len(leaves)} in the model; "
                             f"first mismatches (index, saved, expected): {bad[:3]}")
        meta = dict(got.meta)
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds on damaged files
        raise ValueError(
            f"checkpoint {path} is damaged or does not match the model "
            f"({type(e).__name__}: {str(e)[:200]}); delete it to resume from an older one, "
            "or rebuild the model with the run's config.") from e
    tree = eqx.combine(jtu.tree_unflatten(treedef, restored), static)
    return tree, meta


def convert_to_orbax(folder: str, template_at, log=print) -> list[int]:
    """Convert every complete ``.eqx`` checkpoint of `folder` to an Orbax step (the
    ``.eqx`` files are kept), then mark the folder as Orbax format.
    `template_at(epoch)` builds the template, as for `load_newest_intact`.  Returns
    the converted epochs."""
    from jaxode.train import checkpoint as eqx_ckpt

    if is_orbax(folder):
        raise ValueError(f"{folder} is already in Orbax format.")
    epochs = eqx_ckpt.complete_epochs(folder)
    for epoch in epochs:
        tree, meta = eqx_ckpt.load_checkpoint(folder, epoch, template_at(epoch))
        save(folder, epoch, tree, meta, keep=None)
        log(f"converted {folder}/ckpt-{epoch:04d}.eqx -> {folder}/{epoch}/")
    tmp = os.path.join(folder, f"{MARKER}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"format": "orbax"}, f)
    os.replace(tmp, os.path.join(folder, MARKER))
    return epochs
