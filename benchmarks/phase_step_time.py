"""Seconds per training step of each solver phase (He, Xie, Lin 2019, Sec. 3.2.2):
fixed-step Euler with backprop vs dopri5 with the backsolve adjoint.

Each case is a classify config (`experiments.configs`) trained by `jaxode.train.fit`
for ``--steps`` + 1 steps of one phase on the first MNIST images, exactly as
``python -m experiments.classify --config CONFIG --schedule PHASE:1`` trains it; the
first step (compilation) is left out and the median of the others is reported with
the mean forward / backward NFE per step::

    python -m benchmarks.phase_step_time --configs node-ew-mnist,chen-mnist-odenet
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax


def step_times(config: str, phase: str, steps: int, data_root=None) -> dict:
    from experiments import classify
    from experiments.configs import get_config
    from jaxode.train import dataset_batches, fit

    cfg = get_config(config)
    cfg = cfg.replace(train_limit=cfg.batch_size * (steps + 1), test_limit=1,
                      data_root=data_root)
    train, _ = classify.load_data(cfg)
    model = classify.build_model(cfg, train.num_classes, train.image_shape[-1],
                                 jax.random.PRNGKey(cfg.seed))
    tcfg = classify.train_config(cfg).replace(
        epochs=1, phases=f"{phase}:1", lr_schedule="constant", progress=False,
        data_parallel=False)
    rows = []
    fit(model, classify.build_task(cfg, train),
        lambda e: dataset_batches(train, cfg.batch_size, seed=(cfg.seed, e), drop_last=True),
        config=tcfg, on_step=rows.append, log=lambda s: None)
    later = rows[1:]
    return {"config": config, "phase": phase, "batch": cfg.batch_size,
            "compile_step_s": rows[0]["step_time_s"],
            "median_step_s": statistics.median(r["step_time_s"] for r in later),
            "nfe_forward": statistics.mean(r["nfe"] for r in later),
            "nfe_backward": statistics.mean(r.get("nfe_backward", 0.0) for r in later),
            "steps_timed": len(later)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="node-ew-mnist,chen-mnist-odenet")
    p.add_argument("--phases", default="euler,adjoint")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--data-root", default=None, help="default: $JAXODE_DATA")
    args = p.parse_args(argv)
    out = []
    for config in args.configs.split(","):
        for phase in args.phases.split(","):
            out.append(step_times(config, phase, args.steps, args.data_root))
            print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
