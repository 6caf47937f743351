"""The run folder ``runs/<name>/``: resolved config, metrics, plots, summary, checkpoints.

::

    config.json        the resolved configuration (everything needed to rerun)
    metrics.csv        one row per epoch (rewritten whole each epoch: columns may grow)
    steps.csv          one row per training step (NFE forward/backward, loss, time, ...;
                       written by `fit`, see `jaxode.train.steplog`)
    tb/                TensorBoard event files of the same metrics (tensorboardX: no
                       TensorFlow needed), one scalar per column and epoch; view with
                       ``tensorboard --logdir runs/<name>/tb``
    loss.png acc.png nfe.png lr.png   curves of the matching metric columns
    summary.json       final numbers
    checkpoints/       see `jaxode.train.checkpoint`
    .run-claim         the pid of the run that claimed the folder (`claim_run_dir`)

In a multi-process run (`jax.distributed`) only process 0 writes: a `RunDir` of any
other process creates nothing and its writing methods do nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Any

from jaxode.train.parallel import is_writer
from jaxode.train.steplog import FILENAME as STEPS_CSV

CLAIM = ".run-claim"


def claim_run_dir(path: str) -> bool:
    """Claim the run folder `path` for one run, atomically: create it if needed, then
    create ``path/.run-claim`` with ``O_EXCL`` (of two runs started together exactly one
    succeeds).  False when another run holds the claim or the folder already holds
    anything else.  The claim file stays (it names the process that made the run)."""
    if os.path.isdir(path) and os.listdir(path):
        return False
    os.makedirs(path, exist_ok=True)
    try:
        fd = os.open(os.path.join(path, CLAIM), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    if set(os.listdir(path)) - {CLAIM}:  # an earlier run's files: not ours to reuse
        os.remove(os.path.join(path, CLAIM))
        return False
    return True


def release_run_dir(path: str) -> None:
    """Undo `claim_run_dir` when the run wrote nothing else: the folder is removed."""
    try:
        if set(os.listdir(path)) == {CLAIM}:
            os.remove(os.path.join(path, CLAIM))
            os.rmdir(path)
    except OSError:
        pass


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _jsonable(x.item())
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


def write_json(path: str, obj, *, exclusive: bool = False) -> bool:
    """Write `obj` to `path` atomically (a temporary file moved into place).  With
    `exclusive`, an existing `path` is kept as it is (`os.link` fails on it, so of two
    writers exactly one wins) and False is returned."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    if not exclusive:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


class RunDir:
    """A run folder.  ``RunDir(path, config)`` creates it and writes ``config.json``
    (`config` is any JSON-able dict) once: a resumed run keeps the original file.
    ``checkpoint_format="orbax"`` marks the checkpoint folder for Orbax's
    CheckpointManager (`jaxode.train.checkpoint_orbax`).  `log_epoch` records metrics, `summary` writes
    ``summary.json``; `checkpoints` is the checkpoint folder."""

    def __init__(self, path: str, config: dict | None = None, *, tensorboard: bool = True,
                 checkpoint_format: str = "eqx", plot_interval_s: float = 60.0):
        self.path = os.path.abspath(path)
        # The plots are redrawn at most every `plot_interval_s` seconds (and on the final
        # epoch, and at close): four PNGs cost about 2-3 s, which in a short run is more
        # than the training itself.  metrics.csv and TensorBoard are always current.
        self.plot_interval_s = plot_interval_s
        self._last_plot = time.monotonic()
        self._unplotted: list[dict[str, Any]] | None = None
        self.checkpoints = os.path.join(self.path, "checkpoints")
        self.steps_csv = os.path.join(self.path, STEPS_CSV)  # `fit`'s per-step metrics
        self.writer = is_writer()  # False in processes other than 0 of a distributed run
        if self.writer:
            os.makedirs(self.path, exist_ok=True)
        if config is not None and self.writer:
            write_json(os.path.join(self.path, "config.json"), config, exclusive=True)
        self.tensorboard = tensorboard
        if checkpoint_format not in ("eqx", "orbax"):
            raise ValueError(f"checkpoint_format must be 'eqx' or 'orbax', got {checkpoint_format!r}.")
        if checkpoint_format == "orbax" and self.writer:
            from jaxode.train.checkpoint_orbax import use_orbax

            use_orbax(self.checkpoints)
        self._tb = None  # opened at the first metrics: a run that stops early leaves no tb/

    def _writer(self):
        """The TensorBoard writer of ``tb/`` (tensorboardX, a base dependency)."""
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "RunDir writes TensorBoard events with tensorboardX, which is missing: "
                    "`pip install tensorboardX` (or reinstall jaxode), or pass "
                    "RunDir(..., tensorboard=False).") from e
            self._tb = SummaryWriter(os.path.join(self.path, "tb"), flush_secs=30)
        return self._tb

    # -- metrics ---------------------------------------------------------------

    def write_history(self, history: list[dict[str, Any]], *, final: bool = False) -> None:
        """Rewrite ``metrics.csv`` from the full history, log the newest row to TensorBoard,
        and redraw the plots if `final` or ``plot_interval_s`` has passed since the last
        drawing (otherwise `close` draws them)."""
        if not self.writer:
            return
        columns: list[str] = []
        for row in history:
            for k in row:
                if k not in columns:
                    columns.append(k)
        path = os.path.join(self.path, "metrics.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for row in history:
                w.writerow({k: _fmt(row.get(k)) for k in columns})
        os.replace(tmp, path)
        if history and self.tensorboard:
            self.log_scalars(history[-1], step=history[-1].get("epoch", len(history)))
        if final or time.monotonic() - self._last_plot >= self.plot_interval_s:
            self.plot(history)
        else:
            self._unplotted = list(history)

    def log_scalars(self, values: dict[str, Any], step: int) -> None:
        """Write the numeric entries of `values` (not ``epoch``) as TensorBoard scalars at
        `step` and flush them to ``tb/``."""
        if not self.writer:
            return
        tb = self._writer()
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                tb.add_scalar(k, float(v), int(step))
        tb.flush()

    def plot(self, history: list[dict[str, Any]]) -> list[str]:
        """Draw ``loss.png``, ``acc.png``, ``nfe.png``, ``lr.png`` from the columns whose
        names contain those words.  Returns the files written."""
        if not history or not self.writer:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        self._last_plot, self._unplotted = time.monotonic(), None
        epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
        for group in ("loss", "acc", "nfe", "lr"):
            cols = sorted({k for row in history for k in row if group in k.split("_")})
            if not cols:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for c in cols:
                xs = [e for e, row in zip(epochs, history) if _num(row.get(c)) is not None]
                ys = [_num(row.get(c)) for row in history if _num(row.get(c)) is not None]
                ax.plot(xs, ys, marker="o", ms=3, label=c)
            ax.set_xlabel("epoch")
            ax.set_ylabel(group)
            if group == "lr":
                ax.set_yscale("log")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = os.path.join(self.path, f"{group}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
        return written

    def summary(self, values: dict[str, Any]) -> str:
        path = os.path.join(self.path, "summary.json")
        if self.writer:
            write_json(path, values)
        return path

    def close(self):
        """Draw plots still owed by `write_history` and close the TensorBoard writer."""
        if self._unplotted is not None:
            self.plot(self._unplotted)
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _num(v):
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
