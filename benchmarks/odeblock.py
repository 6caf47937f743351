"""Benchmark: one training step of the ODE block of Chen et al.'s MNIST ODE-Net.

The block is `ConvODEFunc` (GroupNorm-ReLU-ConcatConv3x3 twice, GroupNorm) at 64
channels on 7x7 maps, batch 128, integrated by dopri5 over t in [0, 1] with
rtol = atol = 1e-3 (the defaults here).  For every gradient mode of jaxode
(`SolveConfig.adjoint`) one forward + backward pass of ``loss = mean(z(1)^2)`` is
compiled, then timed (median, min, max of `--repeats` runs), with the forward NFE
and the backward NFE (`backward_nfe`) beside it.  In the same run torchdiffeq's
``odeint_adjoint`` trains the same block with the same weights and tolerances; the
ratio jaxode / torchdiffeq is printed (below 1: jaxode is faster).

Two convolution implementations can be compared (`--convs`): ``fast`` is
`jaxode.nn.conv.conv2d` (the default of `ConcatConv2d`), ``eqx`` is Equinox's
``Conv2d`` as used before (slow inside XLA:CPU while loops; see
``docs/results/benchmarks.md``).

Run (writes ``benchmarks/results/odeblock-<machine>.json`` and ``.md``)::

    python -m benchmarks.odeblock                 # the issue's setting
    python -m benchmarks.odeblock --batch 8 --repeats 2 --modes backsolve   # quick

torch uses as many threads as this process has cores (XLA:CPU uses all of them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

MODES = ("backsolve", "backsolve-seminorm", "checkpoint", "direct")
CONVS = ("fast", "eqx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.odeblock",
        description="Time one training step (forward + backward) of Chen et al.'s MNIST "
        "ODE block in every jaxode gradient mode, beside torchdiffeq's odeint_adjoint.",
    )
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--channels", type=int, default=64, help="channels of the state (default 64)")
    p.add_argument("--size", type=int, default=7, help="height = width of the state (default 7)")
    p.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of both solvers (default 1e-3)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after compilation (default 5)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated jaxode gradient modes out of {', '.join(MODES)} (default: all)")
    p.add_argument("--convs", default="fast,eqx",
                   help="comma-separated convolutions: fast (jaxode.nn.conv, the default of "
                   "ConcatConv2d) and/or eqx (Equinox's Conv2d, the former implementation)")
    p.add_argument("--eqx-modes", default="backsolve",
                   help="modes run with the eqx convolution (default: backsolve only; it is slow)")
    p.add_argument("--no-torch", action="store_true", help="skip torchdiffeq")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: the cores of this process, as XLA:CPU uses)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                   help="folder for the JSON and Markdown results (default benchmarks/results)")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.convs = [c for c in args.convs.split(",") if c]
    args.eqx_modes = [m for m in args.eqx_modes.split(",") if m]
    for m in args.modes + args.eqx_modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for c in args.convs:
        if c not in CONVS:
            p.error(f"unknown conv {c!r}; choose from {', '.join(CONVS)}")
    return args


# ----------------------------------------------------------------------------- JAX


def build_field(channels, key, conv="fast"):
    """`ConvODEFunc` with the requested convolution implementation."""
    import equinox as eqx

    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.nn.layers import ConcatConv2d

    func = ConvODEFunc(channels, key=key)
    if conv == "eqx":
        def slow(layer):
            c = layer.conv
            new = ConcatConv2d(layer.in_channels, c.out_channels, c.kernel_size, c.stride,
                               c.padding, c.use_bias, key=key, fast=False)
            return eqx.tree_at(lambda m: m.conv, new, c)

        func = eqx.tree_at(lambda f: (f.conv1, f.conv2), func, (slow(func.conv1), slow(func.conv2)))
    return func


def make_block(func, mode, tol):
    from jaxode.ode import ODEBlock, SolveConfig

    adjoint = "backsolve" if mode.startswith("backsolve") else mode
    cfg = SolveConfig(solver="dopri5", rtol=tol, atol=tol, adjoint=adjoint,
                      seminorm=mode == "backsolve-seminorm")
    return ODEBlock(func, 0.0, 1.0, cfg, name="odenet-block")


def make_step():
    import equinox as eqx
    import jax.numpy as jnp

    from jaxode.ode import backward_nfe, train_value_and_grad

    @eqx.filter_jit
    def step(block, z0):
        def loss_fn(b):
            z1, stats = b.batched(z0)
            return jnp.mean(z1**2), stats

        (loss, stats), grads = train_value_and_grad(loss_fn, has_aux=True)(block)
        return loss, stats.nfe, backward_nfe(grads), grads.field

    return step


# --------------------------------------------------------------------------- torch


def torch_step_fn(func, z0_np, tol, seminorm=False):
    import torch
    from torchdiffeq import odeint_adjoint

    from benchmarks.torch_ref import CountingFunc, TorchConvODEFunc

    tfunc = CountingFunc(TorchConvODEFunc.from_jax(func))
    z0 = torch.from_numpy(z0_np)
    ts = torch.tensor([0.0, 1.0])
    opts = {"norm": "seminorm"} if seminorm else None

    def step():
        tfunc.zero_grad()
        tfunc.nfe = 0
        z1 = odeint_adjoint(tfunc, z0, ts, rtol=tol, atol=tol, method="dopri5",
                            adjoint_options=opts)[-1]
        nfe_fwd = tfunc.nfe
        loss = (z1**2).mean()
        loss.backward()
        return float(loss.detach()), nfe_fwd, tfunc.nfe - nfe_fwd

    return step, tfunc


# ---------------------------------------------------------------------------- main


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run(args):
    import jax

    from benchmarks import common

    info = common.describe_machine()
    threads = args.torch_threads or common.cpu_count()
    z0_np = np.random.default_rng(args.seed).standard_normal(
        (args.batch, args.channels, args.size, args.size)).astype(np.float32)
    z0 = jax.numpy.asarray(z0_np)
    key = jax.random.PRNGKey(args.seed)
    print(f"machine: {info['cpu']} ({info['cores']} cores, backend {info['backend']}, "
          f"device {info['device']}), load average {info.get('load_average')}", flush=True)
    print(f"block: ConvODEFunc {args.channels}ch {args.size}x{args.size}, batch {args.batch}, "
          f"dopri5, rtol=atol={args.tol:g}, t in [0, 1]; {args.repeats} timed runs each", flush=True)

    results = {"config": vars(args) | {"torch_threads": threads}, "machine": info, "rows": []}

    calls, meta = {}, {}
    if not args.no_torch:
        import torch

        torch.set_num_threads(threads)
        print(f"torch {torch.__version__}: {threads} threads (XLA:CPU uses {info['cores']} cores)", flush=True)
        for seminorm in [False] + ([True] if "backsolve-seminorm" in args.modes else []):
            name = "torchdiffeq odeint_adjoint" + (" (seminorm)" if seminorm else "")
            tstep, tfunc = torch_step_fn(build_field(args.channels, key), z0_np, args.tol, seminorm)
            calls[name] = tstep
            meta[name] = dict(kind="torch", seminorm=seminorm, tfunc=tfunc)

    step = make_step()
    for conv in args.convs:
        modes = args.modes if conv == "fast" else [m for m in args.modes if m in args.eqx_modes]
        for mode in modes:
            block = make_block(build_field(args.channels, key, conv), mode, args.tol)
            name = f"jaxode {mode} conv={conv}"
            calls[name] = (lambda b=block: jax.block_until_ready(step(b, z0)))
            meta[name] = dict(kind="jax", mode=mode, conv=conv)

    timings, outs = common.time_interleaved(
        calls, args.repeats, progress=lambda msg: print("  " + msg, flush=True))

    torch_rows = {}
    for name, m in meta.items():
        if m["kind"] != "torch":
            continue
        loss, nf, nb = outs[name]
        torch_rows[m["seminorm"]] = dict(
            name=name, timing=timings[name], nfe_fwd=nf, nfe_bwd=nb, loss=loss,
            grad_conv1=m["tfunc"].func.conv1.conv.weight.grad.numpy().copy())
        t = timings[name]
        print(f"{name:38s} {t['median']:8.3f} s (min {t['min']:.3f}, max {t['max']:.3f})  NFE {nf}/{nb}",
              flush=True)
    for name, m in meta.items():
        if m["kind"] != "jax":
            continue
        timing = timings[name]
        loss, nfe_f, nfe_b, gfield = outs[name]
        mode, conv = m["mode"], m["conv"]
        row = dict(mode=mode, conv=conv, time=dict(timing), nfe_fwd=int(nfe_f),
                   nfe_bwd=int(nfe_b), compile_s=timing["first"] - timing["median"],
                   loss=float(loss))
        ref = torch_rows.get(mode == "backsolve-seminorm")
        if ref is not None:
            row["torch_s"] = ref["timing"]["median"]
            row["ratio"] = timing["median"] / ref["timing"]["median"]
            row["loss_rel_diff_vs_torch"] = abs(float(loss) - ref["loss"]) / abs(ref["loss"])
            row["grad_rel_diff_vs_torch"] = _rel(gfield.conv1.conv.weight, ref["grad_conv1"])
        results["rows"].append(row)
        print(f"{name:38s} {timing['median']:8.3f} s (min {timing['min']:.3f}, max {timing['max']:.3f})  "
              f"NFE {int(nfe_f)}/{int(nfe_b)}  compile {row['compile_s']:.1f} s"
              + (f"  ratio {row['ratio']:.2f}  grad rel diff {row['grad_rel_diff_vs_torch']:.1e}"
                 if ref is not None else ""), flush=True)

    results["torch"] = [
        dict(name=r["name"], time=dict(r["timing"]), nfe_fwd=r["nfe_fwd"], nfe_bwd=r["nfe_bwd"],
             loss=r["loss"]) for r in torch_rows.values()
    ]
    tag = common.machine_tag(info)
    common.report(results, args.out, f"odeblock-{tag}", to_markdown)
    return results


def to_markdown(results) -> str:
    from benchmarks.common import markdown_table

    m, c = results["machine"], results["config"]
    head = (f"ODE block of Chen et al.'s MNIST ODE-Net: {c['channels']} channels at "
            f"{c['size']}x{c['size']}, batch {c['batch']}, dopri5, rtol = atol = {c['tol']:g}, "
            f"t in [0, 1]; one training step (forward + backward of mean(z(1)^2)), "
            f"median of {c['repeats']} runs after compilation, all candidates timed round-robin so that they share the machine's load.\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['backend']}: {m['device']}); "
            f"torch threads: {c['torch_threads']}; load average before/after: "
            f"{m.get('load_average')} / {results.get('load_average_after')}; {m['date']}; "
            f"jax {m['jax']}, diffrax {m.get('diffrax')}, torch {m.get('torch')}, "
            f"torchdiffeq {m.get('torchdiffeq')}.\n")
    headers = ["mode", "conv", "time/step s: median (min-max)", "NFE fwd", "NFE bwd",
               "compile s", "torchdiffeq s", "ratio jaxode/torch"]
    rows = []
    for r in results["rows"]:
        t = r["time"]
        rows.append([
            r["mode"], r["conv"], f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})",
            r["nfe_fwd"], r["nfe_bwd"], f"{r['compile_s']:.1f}",
            f"{r['torch_s']:.3f}" if "torch_s" in r else "-",
            f"{r['ratio']:.2f}" if "ratio" in r else "-",
        ])
    for r in results.get("torch", []):
        t = r["time"]
        rows.append([r["name"], "torch", f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})",
                     r["nfe_fwd"], r["nfe_bwd"], "-", f"{t['median']:.3f}", "1.00"])
    foot = ("\nratio < 1: jaxode is faster. `conv=fast` is `jaxode.nn.conv.conv2d` (the default); "
            "`conv=eqx` is Equinox's Conv2d (the former implementation). The seminorm row is compared "
            "with torchdiffeq's `adjoint_options=dict(norm='seminorm')`.")
    return head + "\n" + markdown_table(headers, rows) + "\n" + foot


def main(argv=None):
    args = parse_args(argv)
    t = time.perf_counter()
    run(args)
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
