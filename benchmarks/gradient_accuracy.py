"""Benchmark: gradient accuracy against step time, for every adjoint strategy.

The block is the ODE block of Chen et al.'s MNIST ODE-Net (`ConvODEFunc`, 64
channels, 7x7 maps, batch 64, dopri5, t in [0, 1]).  The loss is ``scale * sum(R *
z(1))`` with a fixed random R (``sum(z(1))`` has exactly zero gradient through a field
that ends in GroupNorm), at two scales: ``sum`` (scale 1) and ``mean`` (scale 1/batch,
as a training loss averages over the batch).  For each tolerance and strategy it
reports

- the relative error (2-norm) of dW (both convolution kernels) and of dz0 against a
  float64 truth (checkpoint adjoint at rtol = atol = `--truth-tol`, default 1e-8),
- forward and backward NFE, and the median time of one train step (forward +
  backward, compiled once per strategy: tolerances and R are arrays),

beside torchdiffeq's ``odeint_adjoint`` on the same weights, in the same run.

Run (writes ``benchmarks/results/gradient-accuracy-<machine>.json`` and ``.md``)::

    python -m benchmarks.gradient_accuracy
    python -m benchmarks.gradient_accuracy --batch 8 --channels 8 --repeats 1 --tols 1e-3   # quick
"""

from __future__ import annotations

import argparse
import os

import numpy as np

MODES = {  # explicit norms, so that a row means the same whatever the default is
    "backsolve-rms": dict(seminorm=False, norm="rms"),
    "backsolve-mixed": dict(seminorm=False, norm="mixed"),
    "backsolve-seminorm": dict(seminorm=True, norm="rms"),
    "checkpoint": "checkpoint",
    "diffrax_backsolve": "diffrax_backsolve",
    "direct": "direct",
}
DEFAULT_MODES = "backsolve-rms,backsolve-mixed,checkpoint,diffrax_backsolve,backsolve-seminorm"
SCALES = ("sum", "mean")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gradient_accuracy",
        description="Gradient error (against a float64 truth), NFE and step time of every "
        "jaxode adjoint strategy on Chen et al.'s MNIST ODE block, beside torchdiffeq.",
    )
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--channels", type=int, default=64, help="channels (default 64)")
    p.add_argument("--size", type=int, default=7, help="height = width (default 7)")
    p.add_argument("--tols", default="1e-3,1e-5", help="comma-separated rtol = atol values")
    p.add_argument("--modes", default=DEFAULT_MODES,
                   help=f"comma-separated strategies out of {', '.join(MODES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per row (default 3)")
    p.add_argument("--no-torch", action="store_true", help="skip torchdiffeq")
    p.add_argument("--truth-tol", type=float, default=1e-8,
                   help="rtol = atol of the float64 truth (default 1e-8; the ReLU field's kinks "
                   "make tighter truths take thousands of steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                   help="folder for the JSON and Markdown results")
    args = p.parse_args(argv)
    try:
        args.tols = [float(t) for t in args.tols.split(",") if t]
    except ValueError:
        p.error(f"--tols must be comma-separated numbers, got {args.tols!r}")
    if not args.tols or not all(0 < t < 1 for t in args.tols):
        p.error("--tols must be numbers in (0, 1), e.g. --tols 1e-3,1e-5")
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for name in ("batch", "channels", "size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer")
    return args


def _strategy(mode):
    from jaxode.ode import Backsolve

    spec = MODES[mode]
    return dict(adjoint=spec if isinstance(spec, str) else Backsolve(**spec))


def _weights(field):
    """dW: the two convolution kernels, flattened (the same layout in torch)."""
    return np.concatenate([np.ravel(np.asarray(field.conv1.conv.weight)),
                           np.ravel(np.asarray(field.conv2.conv.weight))])


def _rel(got, want):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def make_step():
    import equinox as eqx
    import jax.numpy as jnp

    from jaxode.ode import backward_nfe, differentiated

    @eqx.filter_jit
    def step(block, z0, R):
        def loss(diff, z0):
            b = eqx.combine(diff, static)
            z1, stats = b.batched(z0)
            return jnp.sum(R * z1), stats

        diff, static = eqx.partition(block, differentiated(block))
        (value, stats), (g_block, g_z0) = eqx.filter_value_and_grad(
            lambda dz: loss(*dz), has_aux=True)((diff, z0))
        return value, stats.nfe, backward_nfe(g_block), g_block.field, g_z0

    return step


def truth(field, z0, R, tol):
    """dW and dz0 of ``sum(R * z(1))`` in float64 at rtol = atol = `tol`."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxode.ode import ODEBlock, SolveConfig

    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64) if eqx.is_inexact_array(x) else x
        f64 = jax.tree_util.tree_map(to64, field)
        cfg = SolveConfig(rtol=tol, atol=tol, adjoint="checkpoint", max_steps=100_000)
        block = ODEBlock(f64, 0.0, 1.0, cfg)
        _, nfe, _, g_field, g_z0 = make_step()(block, to64(z0), to64(R))
        return _weights(g_field), np.asarray(g_z0), int(nfe)


def torch_step(field, z0, R, tol, scale):
    import torch
    from torchdiffeq import odeint_adjoint

    from benchmarks.torch_ref import CountingFunc, TorchConvODEFunc

    tfunc = CountingFunc(TorchConvODEFunc.from_jax(field))
    z0_t = torch.from_numpy(np.array(z0, np.float32))
    R_t = torch.from_numpy(np.array(R, np.float32)) * scale
    ts = torch.tensor([0.0, 1.0])

    def step():
        tfunc.zero_grad()
        z = z0_t.clone().requires_grad_(True)
        tfunc.nfe = 0
        z1 = odeint_adjoint(tfunc, z, ts, rtol=tol, atol=tol, method="dopri5")[-1]
        fwd = tfunc.nfe
        (R_t * z1).sum().backward()
        dW = np.concatenate([tfunc.func.conv1.conv.weight.grad.numpy().ravel(),
                             tfunc.func.conv2.conv.weight.grad.numpy().ravel()])
        return fwd, tfunc.nfe - fwd, dW, z.grad.numpy()

    return step


def run(args):
    import jax
    import jax.numpy as jnp

    from benchmarks import common
    from jaxode.fields import ConvODEFunc
    from jaxode.ode import ODEBlock, SolveConfig

    info = common.describe_machine()
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.channels, args.size, args.size)
    z0 = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    R = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    field = ConvODEFunc(args.channels, key=jax.random.PRNGKey(args.seed))
    print(f"machine: {info['cpu']} ({info['cores']} cores, {info['backend']}), load {info.get('load_average')}")
    print(f"block: ConvODEFunc {args.channels}ch {args.size}x{args.size}, batch {args.batch}, dopri5")
    dW_true, dz0_true, truth_nfe = truth(field, z0, R, args.truth_tol)
    print(f"truth: float64, tol {args.truth_tol:g}, forward NFE {truth_nfe}", flush=True)

    rows = []
    tag = common.machine_tag(info)

    def record(row):
        rows.append(row)
        print(_line(row), flush=True)
        _add_ratios(rows)
        results = {"config": vars(args), "machine": info, "truth_nfe_forward": truth_nfe, "rows": rows}
        common.write_results(args.out, f"gradient-accuracy-{tag}", results, _markdown(results))

    if not args.no_torch:  # first: every row's ratio needs it
        import torch

        torch.set_num_threads(common.cpu_count())
        for tol in args.tols:
            for scale_name in SCALES:
                scale = 1.0 if scale_name == "sum" else 1.0 / args.batch
                timing, (fwd, bwd, dW, dz0) = common.time_torch(
                    torch_step(field, z0, R, tol, scale), repeats=args.repeats)
                record(dict(
                    impl="torchdiffeq", mode="odeint_adjoint", tol=tol, loss=scale_name,
                    nfe_forward=fwd, nfe_backward=bwd, time_s=timing.median,
                    err_dW=_rel(dW / scale, dW_true), err_dz0=_rel(dz0 / scale, dz0_true),
                ))
    step = make_step()
    for mode in args.modes:
        for tol in args.tols:
            block = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=tol, atol=tol, **_strategy(mode)))
            for scale_name in SCALES:
                scale = 1.0 if scale_name == "sum" else 1.0 / args.batch
                timing, out = common.time_jax(step, block, z0, R * scale, repeats=args.repeats)
                _, nfe, bnfe, g_field, g_z0 = out
                record(dict(
                    impl="jaxode", mode=mode, tol=tol, loss=scale_name,
                    nfe_forward=int(nfe), nfe_backward=int(bnfe), time_s=timing.median,
                    err_dW=_rel(_weights(g_field) / scale, dW_true),
                    err_dz0=_rel(np.asarray(g_z0) / scale, dz0_true),
                ))
    print(_markdown({"config": vars(args), "machine": info, "truth_nfe_forward": truth_nfe,
                     "rows": rows}))
    return rows


def _add_ratios(rows):
    ref = {(r["tol"], r["loss"]): r["time_s"] for r in rows if r["impl"] == "torchdiffeq"}
    for r in rows:
        key = (r["tol"], r["loss"])
        r["time_vs_torch"] = r["time_s"] / ref[key] if key in ref else None


def _line(r):
    return (f"{r['impl']:11s} {r['mode']:19s} tol {r['tol']:.0e} loss {r['loss']:4s}  "
            f"NFE {r['nfe_forward']:4d} + {r['nfe_backward']:4d}  {r['time_s']:.3f} s  "
            f"err dW {r['err_dW']:.2e}  dz0 {r['err_dz0']:.2e}")


def _markdown(results):
    c, m = results["config"], results["machine"]
    head = (f"Gradient accuracy: ConvODEFunc {c['channels']}ch {c['size']}x{c['size']}, batch "
            f"{c['batch']}, dopri5, loss scale*sum(R*z1); truth float64 checkpoint adjoint, tol "
            f"{c['truth_tol']:g} (forward NFE {results['truth_nfe_forward']}). "
            f"{m['cpu']} ({m['cores']} cores), {m['date']}, load {m.get('load_average')}.\n\n")
    lines = ["| loss | tol | impl | strategy | NFE fwd | NFE bwd | step s | vs torch | err dW | err dz0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results["rows"], key=lambda r: (r["loss"], r["tol"], r["impl"] != "torchdiffeq")):
        ratio = "" if r["time_vs_torch"] is None else f"{r['time_vs_torch']:.2f}"
        lines.append(f"| {r['loss']} | {r['tol']:.0e} | {r['impl']} | {r['mode']} | {r['nfe_forward']} | "
                     f"{r['nfe_backward']} | {r['time_s']:.3f} | {ratio} | {r['err_dW']:.2e} | "
                     f"{r['err_dz0']:.2e} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
