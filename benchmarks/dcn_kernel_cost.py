"""Cost of the SRF kernel-support strategies of a deep continuous network (Tomen et al.;
`jaxode.nn.srf.refresh_support`, docs/dcn_kernel_size.md).

For each strategy of ``--modes`` (exact-size grid, separable 1-D passes, one masked
maximal grid, `lax.switch` between exact sizes): the time of the first call (compile +
run) and the median time of ``--repeats`` further calls of one jitted training step
(value and gradient of the cross-entropy on a random batch), the forward NFE and the
loss.  The first mode is the reference of the printed ratios.

    python -m benchmarks.dcn_kernel_cost --widths 8,16,32 --batch 4 --tol 1e-2 --modes exact,separable
    python -m benchmarks.dcn_kernel_cost --widths 8,16,32 --batch 4 --out runs/dcn_kernel_cost.json
"""

from __future__ import annotations

import json
import time

import numpy as np

from jaxode import cli

SUPPORT_MODES = ("exact", "separable", "max", "switch")  # `jaxode.nn.srf.refresh_support`


def build_parser():
    from jaxode.models.dcn import MODEL_NAMES

    p = cli.ArgumentParser(prog="python -m benchmarks.dcn_kernel_cost",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dcn_ode", choices=MODEL_NAMES)
    p.add_argument("--widths", default="16,32,64", help="channels of the three stages")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of dopri5")
    p.add_argument("--max-half-width", type=int, default=8,
                   help="grid half-width of the max and switch strategies (17x17)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    p.add_argument("--modes", default=",".join(SUPPORT_MODES),
                   help="comma-separated strategies to time: exact, separable, max, switch")
    p.add_argument("--out", default=None, help="new JSON file for the rows")
    return p


def measure(model_name: str, widths, batch: int, tol: float, modes, max_half_width: int,
            repeats: int) -> list[dict]:
    """One row per support mode: loss, NFE, first-call and median step time."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxode.models.dcn import build_model, with_support
    from jaxode.ode import SolveConfig

    base = build_model(model_name, key=jax.random.PRNGKey(0), widths=widths,
                       config=SolveConfig(rtol=tol, atol=tol))
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 3, 32, 32))
    y = jnp.arange(batch) % 10

    def loss(m):
        logits, aux = m(x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(batch), y]), aux

    step = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    rows = []
    for mode in modes:
        m = with_support(base, mode, max_half_width, margin=0)
        t0 = time.perf_counter()
        (v, aux), _ = step(m)
        jax.block_until_ready(v)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            (v, aux), g = step(m)
            jax.block_until_ready((v, g))
            times.append(time.perf_counter() - t0)
        rows.append({"mode": mode, "loss": float(v), "nfe": float(aux["nfe"][0]),
                     "first_call_s": first, "step_median_s": float(np.median(times)),
                     "step_times_s": [round(t, 3) for t in times]})
        print(json.dumps(rows[-1]))
    return rows


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    cli.check_args(p, args, positive=("batch", "tol", "max_half_width", "repeats"))
    cli.check_new_file(p, "--out", args.out)
    modes = cli.check_list(p, "modes", args.modes, choices=SUPPORT_MODES)
    widths = tuple(cli.check_list(p, "widths", args.widths, kind=int, minimum=1))
    cli.check_widths(p, "widths", widths)
    rows = measure(args.model, widths, args.batch, args.tol, modes, args.max_half_width,
                   args.repeats)
    ref = rows[0]["step_median_s"]
    for r in rows:
        print(f"{r['mode']:>9}: {r['step_median_s']:.3f} s/step ({r['step_median_s'] / ref:.2f}x "
              f"{rows[0]['mode']}), first call {r['first_call_s']:.1f} s, NFE {r['nfe']:.0f}, "
              f"loss {r['loss']:.6f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"widths": widths, "batch": args.batch, "model": args.model,
                       "max_half_width": args.max_half_width, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
