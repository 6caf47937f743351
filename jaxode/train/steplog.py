"""``steps.csv`` of a run folder: the training metrics of every step, not only the
epoch means of ``metrics.csv``.

One row per training step: ``step`` (1-based, counted over the run), ``epoch``, the
learning rate (``lr``, or ``lr_scale`` with an own optimiser), ``step_time_s`` and the
step's training metrics (``loss``, ``acc``, ``nfe`` = function evaluations of the
forward solves, ``nfe_backward`` = those of the adjoint solves, the regulariser
values, ...).  This is what plots of "NFE against training step" read
(Finlay et al. 2020, Fig. 2; `benchmarks.reg_mnist`).

Cost: `fit` already brings every step's metrics to the host (for the epoch means);
the rows are kept in memory and appended to the file every `FLUSH_EVERY` steps and at
the end of each epoch (before its checkpoint), so no extra device sync is added.

Resume: rows of steps after the checkpoint a run resumes from describe training that
the checkpoint does not hold (it is done again), so `StepLog.start` drops them; a run
started afresh starts the file afresh, as it does ``metrics.csv``.
"""

from __future__ import annotations

import csv
import os

FILENAME = "steps.csv"
FLUSH_EVERY = 50
_FIRST = ("step", "epoch")


def read_steps(path: str) -> list[dict[str, float]]:
    """The rows of a ``steps.csv`` (a file or the run folder holding it), numbers as
    floats (empty cells left out)."""
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)]


class StepLog:
    """Appends per-step rows to `path` (see the module docstring).  The columns are
    fixed by the first row written (or by the existing file's header); a metric that
    appears only later is not recorded, one that is missing leaves its cell empty."""

    def __init__(self, path: str, every: int = FLUSH_EVERY):
        self.path = path
        self.every = every
        self._rows: list[dict] = []
        self._columns: list[str] | None = None

    def start(self, step: int) -> None:
        """Prepare to log from step ``step + 1``: keep only rows with ``step <= step``
        (none for a fresh run)."""
        self._rows = []
        self._columns = None
        if not os.path.exists(self.path):
            return
        if step == 0:
            os.remove(self.path)
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            kept, last = [], 0
            for row in reader:  # a line torn by a kill (cells missing) is dropped
                if None in row.values() or not row["step"].isdigit():
                    continue
                if last < int(row["step"]) <= step:
                    kept.append(row)
                    last = int(row["step"])
        if not columns:
            os.remove(self.path)
            return
        self._columns = columns
        tmp = f"{self.path}.tmp"
        self._write(kept, mode="w", header=True, path=tmp)
        os.replace(tmp, self.path)

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        fresh = self._columns is None
        if fresh:
            rest = [k for k in self._rows[0] if k not in _FIRST]
            self._columns = [*_FIRST, *rest]
        self._write(self._rows, mode="w" if fresh else "a", header=fresh)
        self._rows = []

    def _write(self, rows, *, mode: str, header: bool, path: str | None = None) -> None:
        with open(path or self.path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore", restval="")
            if header:
                w.writeheader()
            for row in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                            for k, v in row.items()})
