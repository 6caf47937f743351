"""What the RNODE Jacobian regulariser costs a training step of the MNIST ODE-Net.

One training step of ``chen-odenet`` (the ``chen-mnist-odenet`` recipe: SGD 0.1,
momentum 0.9, dopri5 rtol = atol = 1e-3, backsolve adjoint) is timed without a
regulariser, with the kinetic term, and with kinetic + jacobian in both Hutchinson
forms (`SolveConfig.jacobian_product`: ``vjp`` = ||eps^T J||^2, differentiated by the
adjoint as reverse-over-reverse; ``jvp`` = ||J eps||^2, reverse-over-forward).  The
weights are the MNIST campaign's (kinetic 1e-4, jacobian 1e-5).  Printed per setting,
one JSON line: compile_step_s (the first step, compilation included), median_step_s
of the ``--steps`` later ones, mean forward / backward NFE per step::

    python -m benchmarks.jacobian_reg_cost --batch 128 --steps 3
"""

from __future__ import annotations

import argparse
import json

from benchmarks.phase_step_time import step_times

SETTINGS = {
    "none": ({}, "jvp"),
    "kinetic": ({"kinetic": 1e-4}, "jvp"),
    "kinetic+jacobian-vjp": ({"kinetic": 1e-4, "jacobian": 1e-5}, "vjp"),
    "kinetic+jacobian-jvp": ({"kinetic": 1e-4, "jacobian": 1e-5}, "jvp"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated, of: {', '.join(SETTINGS)}")
    p.add_argument("--model", default="chen-odenet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    p.add_argument("--data-root", default=None, help="default: $JAXODE_DATA")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    out = []
    for name in names:
        regs, product = SETTINGS[name]
        row = step_times(args.model, "adjoint", args.steps, batch=args.batch,
                         data_root=args.data_root, regularizers=regs,
                         jacobian_product=product)
        out.append({"setting": name, **row})
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
