"""Atomic checkpoints: arrays with `equinox.tree_serialise_leaves`, the rest as JSON.

Layout inside a checkpoint folder::

    ckpt-0003.eqx    the arrays (model, optimiser state, EMA, ...) in PyTree order
    ckpt-0003.json   epoch, step, RNG key data, schedule state, metrics history, ...
    latest.json      {"epoch": 3}: the newest complete checkpoint

Each file is written to a temporary name and moved into place with `os.replace`, and
`latest.json` is replaced last, so a crash (or a NaN stop) at any moment leaves the
previous checkpoint readable.  A folder marked for Orbax (`jaxode.train.checkpoint_orbax`)
is read and written by Orbax's CheckpointManager instead, by the same functions.
In a multi-process run only process 0 writes (the arrays
are replicated, so its copy is the whole state); every process reads.  Loading needs a *template* PyTree of the same structure
(build the model and optimiser state as at the start, then load into them).
"""

from __future__ import annotations

import json
import os

import equinox as eqx

from jaxode.train import checkpoint_orbax as orbax_format
from jaxode.train.parallel import is_writer


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def save_checkpoint(folder: str, epoch: int, tree, meta: dict, keep: int = 2) -> str:
    """Write checkpoint `epoch` (arrays of `tree`, JSON-able `meta`), point
    ``latest.json`` at it and delete all but the newest `keep`.  Returns its path
    (written only by process 0 of a multi-process run)."""
    if orbax_format.is_orbax(folder):  # every process takes part
        return orbax_format.save(folder, epoch, tree, meta, keep=keep)
    base = os.path.join(folder, f"ckpt-{epoch:04d}")
    if not is_writer():
        return base + ".eqx"
    os.makedirs(folder, exist_ok=True)
    _atomic_write(base + ".eqx", lambda f: eqx.tree_serialise_leaves(f, tree))
    _atomic_write(base + ".json", lambda f: f.write(_json_bytes(meta)))
    _atomic_write(os.path.join(folder, "latest.json"),
                  lambda f: f.write(_json_bytes({"epoch": epoch})))
    epochs = sorted(_saved_epochs(folder))
    for name in os.listdir(folder):  # temporary files of a writer that was killed
        if ".tmp-" in name and not name.endswith(f".tmp-{os.getpid()}"):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
    for old in epochs[:-keep]:
        for ext in (".eqx", ".json"):
            try:
                os.remove(os.path.join(folder, f"ckpt-{old:04d}{ext}"))
            except FileNotFoundError:
                pass
    return base + ".eqx"


def _saved_epochs(folder):
    out = []
    for name in os.listdir(folder):
        if name.startswith("ckpt-") and name.endswith(".eqx"):
            try:
                out.append(int(name[5:-4]))
            except ValueError:
                pass
    return out


def latest_checkpoint(folder: str) -> int | None:
    """The epoch of the newest complete checkpoint in `folder`, or None.

    ``latest.json`` names it; when that file is missing or unreadable (a kill between
    the checkpoint and its pointer, a damaged disk), the newest complete
    ``ckpt-NNNN.eqx`` / ``.json`` pair found by scanning the folder is used instead."""
    if not os.path.isdir(folder):
        return None
    if orbax_format.is_orbax(folder):
        done = orbax_format.saved_epochs(folder)
        return done[-1] if done else None
    try:
        with open(os.path.join(folder, "latest.json")) as f:
            return int(json.load(f)["epoch"])
    except (ValueError, KeyError, TypeError, OSError):  # missing or damaged: scan
        done = complete_epochs(folder)
        return done[-1] if done else None


def complete_epochs(folder: str) -> list[int]:
    """The epochs with both ``ckpt-NNNN.eqx`` and ``ckpt-NNNN.json`` in `folder`, ascending."""
    if not os.path.isdir(folder):
        return []
    if orbax_format.is_orbax(folder):
        return orbax_format.saved_epochs(folder)
    return [e for e in saved_epochs(folder)
            if os.path.exists(os.path.join(folder, f"ckpt-{e:04d}.json"))]


def load_newest_intact(folder: str, template_at, log=print):
    """Load the newest checkpoint of `folder` that reads back, trying older ones when the
    newest is damaged.  `template_at(epoch)` builds the template for checkpoint `epoch`.
    Returns ``(epoch, tree, meta)``, or None when the folder holds no checkpoint at all.
    Nothing is ever deleted; a ValueError lists every damaged file when none reads."""
    newest = latest_checkpoint(folder)
    candidates = sorted(set(complete_epochs(folder)) | ({newest} if newest else set()),
                        reverse=True)
    if newest is not None:  # the pointer's epoch first, then everything older
        candidates = [newest] + [e for e in candidates if e < newest]
    errors = []
    for epoch in candidates:
        try:
            tree, meta = load_checkpoint(folder, epoch, template_at(epoch))
        except (ValueError, FileNotFoundError) as e:
            errors.append(str(e))
            continue
        if errors:
            log(f"{errors[0]} Falling back to checkpoint {epoch}.")
        return epoch, tree, meta
    if not errors and not (os.path.isdir(folder) and saved_epochs(folder)):
        return None
    raise ValueError(
        f"no checkpoint in {folder} could be read ({'; '.join(errors) or 'no complete pair'}"
        "); nothing was deleted. Move the folder away and start a new run, or pass the "
        "flags of the original run.")


def load_checkpoint(folder: str, epoch: int, template):
    """Read checkpoint `epoch` into `template`; returns ``(tree, meta)``."""
    if orbax_format.is_orbax(folder):
        return orbax_format.load(folder, epoch, template)
    base = os.path.join(folder, f"ckpt-{epoch:04d}")
    if not os.path.exists(base + ".eqx"):
        raise FileNotFoundError(
            f"checkpoint {base}.eqx not found; the run folder may have been cleaned — "
            "start without --resume."
        )
    try:
        tree = eqx.tree_deserialise_leaves(base + ".eqx", template)
        with open(base + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError, EOFError, RuntimeError, TypeError) as e:
        raise ValueError(
            f"checkpoint {base}.eqx/.json is damaged or does not match the model "
            f"({type(e).__name__}: {str(e)[:200]}); delete it to resume from an older one, "
            "or rebuild the model with the run's config."
        ) from e
    return tree, meta


def saved_epochs(folder: str) -> list[int]:
    """The epochs with a ``ckpt-NNNN.eqx`` file (an Orbax step) in `folder`, ascending."""
    if orbax_format.is_orbax(folder):
        return orbax_format.saved_epochs(folder)
    return sorted(_saved_epochs(folder))
