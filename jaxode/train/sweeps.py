"""Inference-time sweeps of a trained ODE model (Carrara et al., Sec. 4.2: accuracy and
cost against the solver tolerance used at test time)."""

from __future__ import annotations

import time

import numpy as np


def tolerance_sweep(model, task, test_batches, tols, *, batch_size, mesh=None) -> list[dict]:
    """Accuracy and NFE per image at each inference tolerance (rtol = atol = tol).

    `test_batches()` gives a fresh iterator of test batches.  Tolerances are arrays
    inside the model (`with_tolerance`), so every point reuses one compiled evaluation
    step.  Returns one dict per tolerance: ``tol, acc, nfe_mean, nfe_std, steps_mean,
    time_s``, or ``tol, error`` where the solve failed (e.g. ran out of max_steps at a
    tolerance too tight)."""
    import equinox as eqx

    from jaxode import train

    rows = []
    for tol in tols:
        t = time.perf_counter()
        try:
            r = train.evaluate(train.with_tolerance(model, tol), task, test_batches(),
                               batch_size=batch_size, mesh=mesh)
        except eqx.EquinoxRuntimeError as e:
            why = next((ln for ln in str(e).splitlines() if "ODEBlock" in ln), str(e))
            rows.append({"tol": float(tol), "error": why.split("EquinoxRuntimeError: ")[-1]})
            continue
        rows.append({"tol": float(tol), "acc": float(np.mean(r["acc"])),
                     "nfe_mean": float(np.mean(r["nfe"])), "nfe_std": float(np.std(r["nfe"])),
                     "steps_mean": float(np.mean(r["steps"])), "time_s": time.perf_counter() - t})
    return rows
