"""What the RNODE Jacobian and TayNODE regularisers cost a training step of the MNIST ODE-Net.

One training step of ``chen-odenet`` (the ``chen-mnist-odenet`` recipe: SGD 0.1,
momentum 0.9, dopri5 rtol = atol = 1e-3, backsolve adjoint) is timed without a
regulariser, with the kinetic term, and with kinetic + jacobian in both Hutchinson
forms (`SolveConfig.jacobian_product`: ``vjp`` = ||eps^T J||^2, differentiated by the
adjoint as reverse-over-reverse; ``jvp`` = ||J eps||^2, reverse-over-forward).  The
weights are the MNIST campaign's (kinetic 1e-4, jacobian 1e-5).  ``taylor-K-METHOD``
adds TayNODE's int ||d^K z/dt^K||^2 dt (K = 2, 3) computed by nested JVPs or by
Taylor mode (`SolveConfig.taylor_method`, `jaxode.ode._taylor`).  Printed per
setting, one JSON line: compile_step_s (the first step, compilation included),
median_step_s of the ``--steps`` later ones, mean forward / backward NFE per step, and
the task loss and the regularisers on the first batch at initialisation (init_*)::

    python -m benchmarks.jacobian_reg_cost --batch 128 --steps 3
"""

from __future__ import annotations

import argparse
import json

from benchmarks.phase_step_time import step_times

TAYLOR_WEIGHT = 1e-4  # the weight does not change a step's cost
# name -> (regularizer weights, jacobian_product[, taylor_order, taylor_method])
SETTINGS = {
    "none": ({}, "jvp"),
    "kinetic": ({"kinetic": 1e-4}, "jvp"),
    "kinetic+jacobian-vjp": ({"kinetic": 1e-4, "jacobian": 1e-5}, "vjp"),
    "kinetic+jacobian-jvp": ({"kinetic": 1e-4, "jacobian": 1e-5}, "jvp"),
    "taylor-2-jvp": ({"taylor": TAYLOR_WEIGHT}, "jvp", 2, "jvp"),
    "taylor-2-jet": ({"taylor": TAYLOR_WEIGHT}, "jvp", 2, "jet"),
    "taylor-3-jvp": ({"taylor": TAYLOR_WEIGHT}, "jvp", 3, "jvp"),
    "taylor-3-jet": ({"taylor": TAYLOR_WEIGHT}, "jvp", 3, "jet"),
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
        regs, product, order, method = (*SETTINGS[name], 2, "auto")[:4]
        row = step_times(args.model, "adjoint", args.steps, batch=args.batch,
                         data_root=args.data_root, regularizers=regs, jacobian_product=product,
                         taylor_order=order, taylor_method=method)
        out.append({"setting": name, **row})
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
