"""2-D normalizing flows with fixed or evolving weights (He, Xie, Lin 2019, Sec. 4.3,
Fig. 3), and what the flow experiment measures of them.

Both flows are a CNF (`jaxode.fields.cnf`, Chen et al. 2018 / FFJORD) on the same
MLP field (`ConcatMLP`, tanh); the evolving one (NODE-EW) adds the weight dynamics
g (`ElementwiseDynamics`, zero at initialisation), so both start as the same flow.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock, SolveConfig

FLOW_KINDS = ("fixed", "evolving")
NLL_LEVELS = (3.5, 3.0, 2.8, 2.5)  # the NLLs `iterations_to_reach` reports


def make_flow(kind: str, hidden: int, depth: int, config: SolveConfig, *, key, g_hidden: int = 8,
              trace: str = "exact", probe: str = "rademacher") -> CNF:
    """``fixed`` (Chen et al. CNF) or ``evolving`` (NODE-EW CNF) with the same field;
    `trace` and `probe` as for `CNF`."""
    kf, kg = jax.random.split(key)
    field = CNFField(ConcatMLP(2, hidden, depth, key=kf))
    if kind == "fixed":
        return CNF(ODEBlock(field, 0.0, 1.0, config, name="cnf"), trace, probe)
    if kind == "evolving":
        return CNF(EvolvingODE(field, "elementwise", 0.0, 1.0, config, key=kg,
                               hidden=g_hidden, name="cnf_ew"), trace, probe)
    raise ValueError(f"unknown flow kind {kind!r}; choose 'fixed' or 'evolving'.")


def density_grid(half: float, n: int):
    """The n x n grid on [-half, half]^2: its axis (n,) and its points (n * n, 2)."""
    g = np.linspace(-half, half, n, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    return g, np.stack([xx.ravel(), yy.ravel()], 1)


def smoothed(values, width: int = 20) -> np.ndarray:
    """Running mean over `width` iterations (fewer if the log is shorter)."""
    values = np.asarray(values, dtype=float)
    k = min(width, len(values))
    return np.convolve(values, np.ones(k) / k, mode="valid")


def iterations_to_reach(nll, levels=NLL_LEVELS, width: int = 20) -> dict:
    """The first iteration at which the training NLL, smoothed over `width`
    iterations, is at most each level (None: never): the paper's Fig. 3 claim is that
    NODE-EW reaches a low loss in fewer iterations."""
    smooth = smoothed(nll, width)
    k = len(nll) - len(smooth) + 1
    out = {}
    for level in levels:
        hit = np.nonzero(smooth <= level)[0]
        out[str(level)] = int(hit[0] + k - 1) if hit.size else None
    return out


def training_summary(log: list[dict]) -> dict:
    """NLL and NFE statistics of one flow's per-iteration log (rows with ``nll``,
    ``nfe_forward``, ``nfe_backward``, ``seconds``); "last10pct": the last tenth."""
    nll = [r["nll"] for r in log]
    fwd = [r["nfe_forward"] for r in log]
    tail = max(1, len(log) // 10)
    return {"train_nll_last10pct": float(np.mean(nll[-tail:])),
            "train_seconds": log[-1]["seconds"],
            "mean_nfe_forward": float(np.mean(fwd)),
            "mean_nfe_backward": float(np.mean([r["nfe_backward"] for r in log])),
            "last10pct_nfe_forward": float(np.mean(fwd[-tail:])),
            "max_nfe_forward": int(max(fwd)),
            "first_iter_below": iterations_to_reach(nll)}
