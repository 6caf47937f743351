"""Seconds per training step of each solver phase (He, Xie, Lin 2019, Sec. 3.2.2):
fixed-step Euler with backprop vs dopri5 with the backsolve adjoint.

Each model of `jaxode.models.MODELS` is trained by `jaxode.train.fit` for ``--steps``
+ 1 steps of one phase on the first MNIST images with the MNIST recipe of the classify
configs ``chen-mnist-odenet`` / ``node-ew-mnist`` (SGD 0.1, momentum 0.9, batch 128,
crop padding 4, dopri5 rtol = atol = 1e-3, 10 Euler steps); the first step
(compilation) is left out and the median of the others is reported with the mean
forward / backward NFE per step::

    python -m benchmarks.phase_step_time --models node-ew,chen-odenet --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax


def step_times(model_name: str, phase: str, steps: int, batch: int = 128, data_root=None,
               regularizers=None, jacobian_product: str = "jvp", taylor_order: int = 2,
               taylor_method: str = "auto") -> dict:
    """One phase's timings; `regularizers` (``{name: weight}``, as
    `TrainConfig.regularizers`), `jacobian_product`, `taylor_method` (`SolveConfig`) and
    `taylor_order` (`TrainConfig`) regularise the training steps (benchmarks/jacobian_reg_cost.py).
    ``init_loss`` and ``init_<name>`` are the task loss and each regulariser on the
    first batch, at the initial weights."""
    from jaxode.data import load_classification
    from jaxode.models import make_model
    from jaxode.ode import SolveConfig
    from jaxode.train import ClassificationTask, TrainConfig, dataset_batches, fit

    train, _ = load_classification("mnist", root=data_root, train_limit=batch * (steps + 1),
                                   test_limit=1)
    model = make_model(model_name, num_classes=10, in_channels=1, key=jax.random.PRNGKey(0),
                       solve=SolveConfig(rtol=1e-3, atol=1e-3,
                                         jacobian_product=jacobian_product,
                                         taylor_method=taylor_method))
    config = TrainConfig(epochs=1, batch_size=batch, lr=0.1, momentum=0.9, phases=f"{phase}:1",
                         euler_steps=10, progress=False, data_parallel=False,
                         regularizers=dict(regularizers or {}), taylor_order=taylor_order)
    rows = []
    fit(model, ClassificationTask(crop_padding=4),
        lambda e: dataset_batches(train, batch, seed=(0, e), drop_last=True),
        config=config, on_step=rows.append, log=lambda s: None)
    later = rows[1:]
    return {"model": model_name, "phase": phase, "batch": batch,
            "compile_step_s": rows[0]["step_time_s"],
            "median_step_s": statistics.median(r["step_time_s"] for r in later),
            "nfe_forward": statistics.mean(r["nfe"] for r in later),
            "nfe_backward": statistics.mean(r.get("nfe_backward", 0.0) for r in later),
            "steps_timed": len(later), "init_loss": rows[0]["loss"],
            **{f"init_{k}": rows[0][k] for k in dict(regularizers or {})}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="node-ew,chen-odenet")
    p.add_argument("--phases", default="euler,adjoint")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--data-root", default=None, help="default: $JAXODE_DATA")
    args = p.parse_args(argv)
    out = []
    for name in args.models.split(","):
        for phase in args.phases.split(","):
            out.append(step_times(name, phase, args.steps, data_root=args.data_root))
            print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
