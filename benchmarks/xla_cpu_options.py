"""Same-process A/B of XLA:CPU compiler options on the Chen block (issue 19).

``XLA_FLAGS`` is read once per process, so comparing two flag sets in two processes
mixes the options' effect with the machine's load.  Here each variant is the *same*
lowered program compiled with other options (``jax.stages.Lowered.compile(
compiler_options)``, which sets fields of XLA's DebugOptions for that one compile),
and all variants and torch are timed round-robin in one process
(`benchmarks.profile_field.time_interleaved_cpu`, wall and CPU time).

Two programs, both from the suite's chen-block at paper width (64 channels, 6x6):

- ``step``: one training step (dopri5, rtol = atol = 1e-3, backsolve adjoint; loss,
  NFE and gradients, `benchmarks.suite.jax_steps`) against torchdiffeq's
  ``odeint_adjoint`` step; reported per NFE (step time / (forward + backward NFE));
- ``vjp``: `--iters` evaluations of the field's forward + VJP (wrt the state and the
  parameters, as the backsolve adjoint needs) in a ``lax.scan``, against the same in
  torch.

Variants: ``default`` (XLA's options; YNN fusions for convolutions and reductions),
``fast`` (`jaxode.backend.CPU_FAST_FLAGS`: also elementwise ops and dots), ``conv``
(convolutions only), ``eigen`` (no YNN fusions: XLA's Eigen convolutions), ``fastmath``
(``xla_cpu_enable_fast_math``: check the loss column against torch's), and
``dp`` (XLA's options, the batch split over `--host-devices` CPU devices as
`jaxode.train.parallel` does in training: ``--xla_force_host_platform_device_count``,
added to ``XLA_FLAGS`` at start; the other variants then run on the first device).

    python -m benchmarks.xla_cpu_options --batch 64 --repeats 15
    python -m benchmarks.xla_cpu_options --host-devices 2 --variants default,fast,dp
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_Y = "xla_cpu_experimental_ynn_fusion_type"
_L = "LIBRARY_FUSION_TYPE_"
#: name -> compiler_options (None: XLA's defaults).  A repeated enum option takes a
#: comma-separated list of value names here and replaces XLA's default list.
VARIANTS = {
    "default": None,
    "fast": {_Y: f"{_L}INDIVIDUAL_CONVOLUTION,{_L}REDUCE,{_L}ELTWISE,{_L}DOT"},
    "conv": {_Y: f"{_L}INDIVIDUAL_CONVOLUTION"},
    "eigen": {_Y: f"{_L}DOT"},  # an empty list is refused; dots: none in these programs
    "fastmath": {"xla_cpu_enable_fast_math": True},  # LLVM fast-math (reassociation, approximations)
    "dp": None,  # XLA's options, batch sharded over the host devices
}


def parse_args(argv=None):
    from jaxode.cli import check_args

    p = argparse.ArgumentParser(prog="python -m benchmarks.xla_cpu_options",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds after compilation (default 9)")
    p.add_argument("--iters", type=int, default=20, help="field evaluations per vjp loop (default 20)")
    p.add_argument("--programs", default="step,vjp", help="comma-separated subset of step, vjp")
    p.add_argument("--variants", default="default,fast", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--host-devices", type=int, default=1,
                   help="CPU devices (--xla_force_host_platform_device_count) for the dp variant (default 1)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads (default: this process's cores)")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--out", default="benchmarks/results", help="folder of the JSON / Markdown results")
    args = p.parse_args(argv)
    check_args(p, args, positive=("batch", "repeats", "iters", "torch_threads", "host_devices"),
               choices={"programs": ("step", "vjp"), "variants": tuple(VARIANTS)})
    args.programs = [s.strip() for s in args.programs.split(",") if s.strip()]
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    if "dp" in args.variants and args.host_devices < 2:
        p.error("variant dp needs --host-devices 2 (or more)")
    if args.batch % args.host_devices:
        p.error(f"--batch {args.batch} must divide by --host-devices {args.host_devices}")
    return args


def _compiled(lowered_fn, variant, args_):
    """(compiled program, its arguments): `args_` placed on the first device, or for
    ``dp`` the first one replicated and the others split along the batch over all
    devices (`jaxode.train.parallel`)."""
    import jax

    from jaxode.train import data_mesh, replicate, shard_batch

    if variant == "dp":
        mesh = data_mesh(devices=jax.devices())
        args_ = (replicate(args_[0], mesh),) + tuple(
            shard_batch(a, mesh) if getattr(a, "ndim", 0) else replicate(a, mesh) for a in args_[1:])
    return lowered_fn(*args_).compile(VARIANTS[variant]), args_


def build_calls(args):
    """{(program, variant): zero-argument call}, every jaxode variant compiled from one
    lowering, plus torch's twin of each program."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import suite
    from benchmarks._suite_models import CASES, SIZES
    from benchmarks.profile_field import torch_pieces

    case = CASES["chen-block"]
    size = dict(SIZES["chen-block"]["paper"], batch=args.batch)
    block, batch_np = case.build(size, 1e-3, jax.random.PRNGKey(0), np.random.default_rng(0))
    calls = {}
    if "step" in args.programs:
        train, _ = suite.jax_steps(case, block)
        for v in args.variants:
            c, a = _compiled(train.jit.lower, v, (train.params(block),) + tuple(batch_np))
            calls[("step", v)] = lambda c=c, a=a: jax.block_until_ready(c(*a))
        calls[("step", "torch")] = suite.torch_steps(case, case.torch_model(block), batch_np)[0]
    if "vjp" in args.programs:
        field = block.field
        params, static = eqx.partition(field, eqx.is_array)
        rng = np.random.default_rng(0)
        shape = (args.batch, field.channels, size["hw"], size["hw"])
        x, g = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
        t = jnp.float32(0.5)

        def run(a, p_, t_, g_):
            def step(acc, i):
                f = lambda a_, p2: jax.vmap(eqx.combine(p2, static), in_axes=(None, 0))(t_ + 1e-3 * i, a_)
                out, vjp = jax.vjp(f, a * (1 + 1e-3 * i), p_)
                return jax.tree_util.tree_map(jnp.add, acc, (out,) + vjp(g_)), None
            init = jax.tree_util.tree_map(jnp.zeros_like, (a, a, p_))
            return jax.lax.scan(step, init, jnp.arange(args.iters, dtype=jnp.float32))[0]

        for v in args.variants:  # (params, x, t, g) so that the parameters come first
            c, a = _compiled(jax.jit(lambda p_, a_, t_, g_: run(a_, p_, t_, g_)).lower, v, (params, x, t, g))
            calls[("vjp", v)] = lambda c=c, a=a: jax.block_until_ready(c(*a))
        calls[("vjp", "torch")] = torch_pieces(field, x, x, g, g, t, args.iters)[("field-vjp", "torch")]
    return calls


def summarise(timings, outs, args) -> dict:
    """ms per step / per evaluation, ratios to torch, NFE and per-NFE ratios."""
    rows = {}
    for (prog, v), tm in timings.items():
        ref = timings[(prog, "torch")]
        n = 1 if prog == "step" else args.iters
        row = {"wall_ms": 1e3 * tm["median"] / n, "min_ms": 1e3 * tm["min"] / n, "max_ms": 1e3 * tm["max"] / n,
               "cpu_ms": 1e3 * tm["cpu_median"] / n, "wall_vs_torch": tm["median"] / ref["median"],
               "cpu_vs_torch": tm["cpu_median"] / ref["cpu_median"]}
        if prog == "step":
            o, r = outs[(prog, v)], outs[(prog, "torch")]
            nfe, ref_nfe = int(o[1]) + int(o[2]), int(r[1]) + int(r[2])
            row |= {"nfe_fwd": int(o[1]), "nfe_bwd": int(o[2]), "loss": float(o[0]),
                    "per_nfe_wall_vs_torch": (tm["median"] / nfe) / (ref["median"] / ref_nfe),
                    "per_nfe_cpu_vs_torch": (tm["cpu_median"] / nfe) / (ref["cpu_median"] / ref_nfe)}
        rows[f"{prog}/{v}"] = row
    return rows


def to_markdown(res) -> str:
    from benchmarks.common import markdown_table

    c, m = res["config"], res["machine"]
    head = (f"XLA:CPU options on the Chen block (batch {c['batch']}, 64 channels, 6x6), one process, "
            f"round-robin with torch ({c['torch_threads']} threads); median of {c['repeats']} rounds. "
            f"step: one training step (dopri5 1e-3, backsolve / odeint_adjoint); vjp: field forward + VJP, "
            f"ms per evaluation. XLA_FLAGS={c.get('xla_flags') or '(none)'}. Machine: {m['cpu']}, {m['cores']} cores; load before/after "
            f"{m.get('load_average')} / {res.get('load_average_after')}; {m['date']}; jax {m['jax']}.\n")
    rows = []
    for name, r in res["rows"].items():
        per = (f"{r['per_nfe_wall_vs_torch']:.3f} / {r['per_nfe_cpu_vs_torch']:.3f}"
               if "nfe_fwd" in r and not name.endswith("/torch") else "-")
        rows.append([name, f"{r['wall_ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})", f"{r['cpu_ms']:.2f}",
                     f"{r['wall_vs_torch']:.3f}", f"{r['cpu_vs_torch']:.3f}",
                     f"{r['nfe_fwd']}/{r['nfe_bwd']}" if "nfe_fwd" in r else "-", per,
                     f"{r['loss']:.7f}" if "loss" in r else "-"])
    opts = "; ".join(f"{k}: {v}" for k, v in VARIANTS.items() if k in c["variants"])
    return (head + "\n" + markdown_table(["program/variant", "ms wall (min-max)", "ms CPU", "wall vs torch",
                                          "CPU vs torch", "NFE f/b", "per NFE vs torch wall / CPU", "loss"], rows)
            + f"\n\nCompiler options: {opts}.")


def run(args):
    from jaxode import backend

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.host_devices > 1:  # before the backend exists; a user's own count is kept
        flags, kept = backend.compose_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                                (f"--xla_force_host_platform_device_count={args.host_devices}",))
        if kept:
            raise SystemExit("XLA_FLAGS already sets xla_force_host_platform_device_count: drop it or "
                             "--host-devices")
        os.environ["XLA_FLAGS"] = flags
    import torch

    from benchmarks import common
    from benchmarks.profile_field import time_interleaved_cpu

    threads = args.torch_threads or common.cpu_count()
    torch.set_num_threads(threads)
    info = common.describe_machine()
    print(f"{info['cpu']} ({info['cores']} cores), load {info.get('load_average')}; compiling "
          f"{len(args.variants)} variants of {', '.join(args.programs)}...", flush=True)
    calls = build_calls(args)
    t0 = time.perf_counter()
    timings, outs = time_interleaved_cpu(calls, args.repeats, progress=lambda s: print(s, flush=True))
    res = {"config": vars(args) | {"torch_threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                                   "compiler_options": {v: VARIANTS[v] for v in args.variants}},
           "machine": info, "rows": summarise(timings, outs, args), "timing_wall_s": time.perf_counter() - t0,
           "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    stem = f"xla-cpu-options-{common.machine_tag(info)}-b{args.batch}" + (f"-{args.tag}" if args.tag else "")
    md = to_markdown(res)
    print(md)
    common.write_results(args.out, stem, res, md)
    return res


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
