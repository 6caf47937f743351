"""Per-piece profile of one evaluation of the Chen et al. conv ODE field (and its VJP)
in jaxode against the same pieces in PyTorch, inside a loop as in a solver.

The field is f(t, z) = GN(ConcatConv(t, ReLU(GN(ConcatConv(t, ReLU(GN(z))))))) of
Chen et al. (2018) (`jaxode.fields.conv_odefunc.ConvODEFunc`); one backsolve
training step evaluates it and its vector-Jacobian product (Chen et al., eq. 4)
some 50 times, so a per-evaluation gap is a per-step gap.  Each piece below is
timed per iteration of a jitted ``lax.scan`` of `--iters` iterations (XLA
compiles a loop body the way it compiles a Diffrax solve), against the same work in
a Python loop of torch calls; the input differs per iteration so nothing is
hoisted.  jaxode and torch are timed round-robin in one process (same load), torch
with `--torch-threads` threads and ``OMP_WAIT_POLICY=PASSIVE`` as `benchmarks.suite`.

Pieces (batch B, C channels, H x W, 3x3 convolution C + 1 -> C with the t channel):
conv forward; conv input gradient; conv weight gradient; GroupNorm forward; GroupNorm
forward + backward; the t-channel concatenation forward + backward; ReLU forward +
backward; the whole field forward; the whole field forward + VJP (wrt z and
parameters, as the backsolve adjoint); and ``block-step``, the suite's whole
chen-block training step (dopri5, rtol = atol = 1e-3, backsolve vs odeint_adjoint,
loss + gradients), in ms per step, not per evaluation, with its forward / backward NFE
and ms per NFE.  Variants isolate causes: ``jaxode`` is the library's field, which
evaluates channels-last inside (`ConvODEFunc.channels_last`); ``chw`` is the former
channel-first evaluation (layout copies around every convolution, GroupNorm on rows);
``eqx-gn`` is ``chw`` with Equinox's own GroupNorm; ``hwc-state`` is the field on a
channels-last state (no layout change in or out); ``tbias`` is the field with the t
channel as a bias-like map, W * [t; x] = W_x * x + t (W_t * 1) (`TBiasConcatConv2d`);
``nhwc`` feeds the canonical NHWC / HWIO convolution directly (the kernel alone) and
``64ch`` convolves without the t channel.  Besides wall time, each call's CPU time
(this process, all threads) is recorded: on the shared, loaded CPU it varies far
less than the wall time.
`--hlo` also writes the optimized HLO of the field VJP inside a loop (both
GroupNorms) and counts its transposes, copies, reductions and convolutions.  XLA:CPU options can be tried with
``XLA_FLAGS=... python -m benchmarks.profile_field`` (recorded in the results).

    python -m benchmarks.profile_field                  # Chen block at paper size: 64 ch, 6x6, batch 128
    python -m benchmarks.profile_field --pieces field-vjp --tag onednn
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

PIECES = ("conv-fwd", "conv-dinput", "conv-dweight", "groupnorm-fwd", "groupnorm", "concat",
          "relu", "field-fwd", "field-vjp", "block-step")


def parse_args(argv=None):
    from jaxode.cli import check_args, check_widths

    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_field",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Pieces: " + ", ".join(PIECES) + ".")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128, the suite's paper size)")
    p.add_argument("--channels", type=int, default=64, help="field width (default 64)")
    p.add_argument("--size", type=int, default=6, help="spatial size H = W (default 6, the Chen block)")
    p.add_argument("--iters", type=int, default=20, help="field evaluations per timed loop (default 20)")
    p.add_argument("--repeats", type=int, default=7, help="timed loops after the first call (default 7)")
    p.add_argument("--pieces", default=",".join(PIECES), help="comma-separated subset of the pieces")
    p.add_argument("--no-torch", action="store_true", help="skip torch")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: the cores of this process)")
    p.add_argument("--hlo", action="store_true",
                   help="also write the optimized HLO of the field VJP in a loop and count its ops")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. the XLA_FLAGS tried)")
    p.add_argument("--out", default="benchmarks/results", help="folder of the JSON / Markdown results")
    args = p.parse_args(argv)
    check_args(p, args, positive=("batch", "channels", "size", "iters", "repeats", "torch_threads"),
               choices={"pieces": PIECES})
    check_widths(p, "channels", args.channels)
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tag):
        p.error(f"argument --tag: {args.tag!r} must be letters, digits, '.', '_' or '-' (it names a file).")
    args.pieces = [s.strip() for s in args.pieces.split(",") if s.strip()]
    return args


# ----------------------------------------------------------------------------- jaxode


def _variant_classes():
    import equinox as eqx
    import jax.numpy as jnp

    from jaxode.nn.conv import conv2d_hwc

    class ChannelFirstField(eqx.Module):
        """The Chen field evaluated channel-first, (C, H, W) throughout, as jaxode did
        before 2026-12-06: each `ConcatConv2d` call transposes its input to NHWC and
        its output back (`jaxode.nn.conv.conv2d`), GroupNorm reduces rows of
        (groups, n).  Same parameters and function as `ConvODEFunc`."""

        field: eqx.Module

        def __call__(self, t, z):
            f = self.field
            h = f.conv1(t, f.activation(f.norm1(z)))
            h = f.conv2(t, f.activation(f.norm2(h)))
            return f.norm3(h)

    class TBiasConcatConv2d(eqx.Module):
        """`jaxode.nn.layers.ConcatConv2d.channels_last` with the t channel as a
        bias-like map: the convolution is linear in its input, so with W = [W_t, W_x],
        W * [t 1; x] + b = W_x * x + t (W_t * 1) + b; W_t * 1 (the t kernel on a
        zero-padded constant image, exact at the borders) does not depend on the
        example.  Same parameters; a benchmark variant only."""

        conv: eqx.Module

        def channels_last(self, t, x):
            w, stride, pad = self.conv.weight, self.conv.stride, self.conv.padding
            t_map = conv2d_hwc(jnp.ones(x.shape[:-1] + (1,), x.dtype), w[:, :1], stride, pad)
            y = conv2d_hwc(x, w[:, 1:], stride, pad) + jnp.asarray(t, x.dtype) * t_map
            return y + self.conv.bias.reshape(-1) if self.conv.use_bias else y

    return ChannelFirstField, TBiasConcatConv2d


def field_variants(field):
    """{"jaxode": the library's field (channels-last inside), "chw": the former
    channel-first evaluation (`ChannelFirstField`), "eqx-gn": channel-first with
    Equinox's GroupNorm (the path before `jaxode.nn.layers.GroupNorm`), "tbias": the
    library's field with `TBiasConcatConv2d`}; all with the same parameters."""
    import equinox as eqx

    def eqx_gn(n):
        m = eqx.nn.GroupNorm(n.groups, n.channels, n.eps)
        return eqx.tree_at(lambda k: (k.weight, k.bias), m, (n.weight, n.bias))

    chw, tbias = _variant_classes()
    norms = lambda f: (f.norm1, f.norm2, f.norm3)
    convs = lambda f: (f.conv1, f.conv2)
    return {
        "jaxode": field,
        "chw": chw(field),
        "eqx-gn": chw(eqx.tree_at(norms, field, tuple(eqx_gn(n) for n in norms(field)))),
        "tbias": eqx.tree_at(convs, field, tuple(tbias(c.conv) for c in convs(field))),
    }


def jax_pieces(field, x, xt, g, gt, t, iters, pieces=PIECES):
    """{(piece, variant): zero-argument call} of jitted loops over `iters` iterations,
    for the named `pieces` only (each is compiled here)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxode.nn.conv import conv2d, conv2d_hwc

    w = field.conv1.conv.weight  # (C, C + 1, 3, 3)
    w64 = w[:, 1:]

    def loop(body, *operands):
        """sum over i of body(i, *operands), in a lax.scan (the input is scaled per i)."""
        def run(*ops):
            init = jax.tree_util.tree_map(jnp.zeros_like, body(jnp.float32(0), *ops))

            def step(acc, i):
                return jax.tree_util.tree_map(jnp.add, acc, body(i, *ops)), None

            return lax.scan(step, init, jnp.arange(iters, dtype=jnp.float32))[0]

        compiled = jax.jit(run).lower(*operands).compile()
        return lambda: jax.block_until_ready(compiled(*operands))

    scale = lambda i, a: a * (1.0 + 1e-3 * i)
    conv = lambda a, w_: jax.vmap(lambda e: conv2d(e, w_, 1, 1))(a)
    nhwc = lambda a, w_: lax.conv_general_dilated(
        a, w_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    xt_h, w_h = jnp.transpose(xt, (0, 2, 3, 1)), jnp.transpose(w, (2, 3, 1, 0))
    g_h = jnp.transpose(g, (0, 2, 3, 1))

    def fwd(cv):
        return lambda i, a, w_: cv(scale(i, a), w_)

    def dinput(cv):
        # the input gradient of a convolution does not depend on its input: the cotangent
        # varies with i instead, or XLA would hoist the whole piece out of the loop
        return lambda i, a, w_, g_: jax.vjp(lambda a_: cv(a_, w_), a)[1](scale(i, g_))[0]

    def dweight(cv):
        return lambda i, a, w_, g_: jax.vjp(lambda w_2: cv(scale(i, a), w_2), w_)[1](g_)[0]

    calls = {}

    def add(piece, variant, body, *operands):
        if piece in pieces:
            calls[(piece, variant)] = loop(body, *operands)

    conv_hwc = lambda a, w_: jax.vmap(lambda e: conv2d_hwc(e, w_, 1, 1))(a)
    for name, (a, w_, g_, cv) in {"jaxode": (xt_h, w, g_h, conv_hwc), "chw": (xt, w, g, conv),
                                  "nhwc": (xt_h, w_h, g_h, nhwc), "64ch": (x, w64, g, conv)}.items():
        add("conv-fwd", name, fwd(cv), a, w_)
        add("conv-dinput", name, dinput(cv), a, w_, g_)
        add("conv-dweight", name, dweight(cv), a, w_, g_)

    def gn_fwd(i, a, norm_, hwc=False):
        return jax.vmap(norm_.channels_last if hwc else norm_)(scale(i, a))

    def gn(i, a, norm_, g_, hwc=False):
        out, vjp = jax.vjp(lambda a_, n_: jax.vmap(n_.channels_last if hwc else n_)(a_), scale(i, a), norm_)
        return out, vjp(g_)

    gn_hwc = lambda *a: gn(*a, hwc=True)
    gn_fwd_hwc = lambda *a: gn_fwd(*a, hwc=True)
    x_h = jnp.transpose(x, (0, 2, 3, 1))
    norms = {"jaxode": (gn_fwd_hwc, gn_hwc, x_h, g_h), "chw": (gn_fwd, gn, x, g),
             "eqx-gn": (gn_fwd, gn, x, g)}
    for name, (f_fwd, f_vjp, a, g_) in norms.items():
        norm = field_variants(field)[name]
        norm = norm.field.norm1 if name != "jaxode" else norm.norm1
        add("groupnorm-fwd", name, f_fwd, a, norm)
        add("groupnorm", name, f_vjp, a, norm, g_)

    def concat(i, a, t_, g_):
        def cat(a_, t__):
            tt = jnp.broadcast_to(t__, (a_.shape[0], 1) + a_.shape[2:])
            return jnp.concatenate([tt, a_], axis=1)
        out, vjp = jax.vjp(cat, scale(i, a), t_)
        return out, vjp(g_)

    add("concat", "jaxode", concat, x, t, gt)

    def relu(i, a, g_):
        out, vjp = jax.vjp(jax.nn.relu, scale(i, a))
        return out, vjp(g_)

    add("relu", "jaxode", relu, x, g)

    for name, f in field_variants(field).items():
        params, static = eqx.partition(f, eqx.is_array)

        def field_fwd(i, a, p_, t_, static=static):
            return jax.vmap(eqx.combine(p_, static), in_axes=(None, 0))(t_ + 1e-3 * i, scale(i, a))

        def field_vjp(i, a, p_, t_, g_, static=static):
            ti = t_ + 1e-3 * i
            out, vjp = jax.vjp(lambda a_, p2: jax.vmap(eqx.combine(p2, static), in_axes=(None, 0))(ti, a_),
                               scale(i, a), p_)
            return out, vjp(g_)

        add("field-fwd", name, field_fwd, x, params, t)
        add("field-vjp", name, field_vjp, x, params, t, g)

    # the field on a channels-last state (H, W, C): what an ODE state kept in that
    # layout would cost (no layout change in or out)
    params, static = eqx.partition(field, eqx.is_array)
    hwc = lambda p_, t_, a_: jax.vmap(eqx.combine(p_, static).channels_last, in_axes=(None, 0))(t_, a_)

    def hwc_fwd(i, a, p_, t_):
        return hwc(p_, t_ + 1e-3 * i, scale(i, a))

    def hwc_vjp(i, a, p_, t_, g_):
        out, vjp = jax.vjp(lambda a_, p2: hwc(p2, t_ + 1e-3 * i, a_), scale(i, a), p_)
        return out, vjp(g_)

    add("field-fwd", "hwc-state", hwc_fwd, x_h, params, t)
    add("field-vjp", "hwc-state", hwc_vjp, x_h, params, t, g_h)
    return calls


def field_vjp_hlo(field, x, g, t, iters):
    """Optimized HLO text of the field's forward + VJP (wrt z and the parameters)
    summed over a lax.scan."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax import lax

    params, static = eqx.partition(field, eqx.is_array)

    def run(a, p_, t_, g_):
        def step(acc, i):
            f = lambda a_, p2: jax.vmap(eqx.combine(p2, static), in_axes=(None, 0))(t_ + i, a_)
            out, vjp = jax.vjp(f, a * (1 + 1e-3 * i), p_)
            return jax.tree_util.tree_map(jnp.add, acc, (out,) + vjp(g_)), None
        init = jax.tree_util.tree_map(jnp.zeros_like, (a, a, p_))
        return lax.scan(step, init, jnp.arange(iters, dtype=jnp.float32))[0]

    return jax.jit(run).lower(x, params, t, g).compile().as_text()


def hlo_summary(text: str) -> dict:
    """Counts of transposes, copies, convolutions and fusions in the while-loop body
    computations of an optimized HLO module, with the convolutions' dim_labels."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
    comps, name, lines = {}, None, []
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
        if m and line.rstrip().endswith("{"):
            name, lines = m.group(1), []
        elif line.startswith("}") and name is not None:
            comps[name] = lines
            name = None
        elif name is not None:
            lines.append(line)

    # everything reachable from the loop bodies (fusions, called computations)
    todo, seen = list(bodies), set()
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            todo += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
    top = [line for b in bodies for line in comps.get(b, [])]
    inner = [line for c in seen - bodies for line in comps.get(c, [])]

    def count(lines, op):
        return sum(1 for line in lines if re.search(rf"= \S+ {op}\(", line))

    convs = [re.search(r"dim_labels=(\S+?),?\s", line + " ") for line in top + inner if " convolution(" in line]
    return {
        "loop_bodies": sorted(bodies),
        "top_level": {op: count(top, op) for op in ("fusion", "convolution", "dot", "transpose", "copy", "reduce",
                                                    "custom-call")},
        "inside_fusions": {op: count(inner, op) for op in ("transpose", "copy", "reduce", "dot", "convolution")},
        "conv_dim_labels": [m.group(1) for m in convs if m],
    }


def block_steps(field, batch, size, seed=0, use_torch=True):
    """{variant: zero-argument call} of one training step of the suite's chen-block
    case (`benchmarks.suite.jax_steps` / `torch_steps`), with each field variant
    (same weights and batch) and the torch twin."""
    import equinox as eqx
    import jax
    import numpy as np

    from benchmarks import suite
    from benchmarks._suite_models import CASES, SIZES

    case = CASES["chen-block"]
    s = dict(SIZES["chen-block"]["paper"], batch=batch, channels=field.channels, hw=size)
    block, batch_np = case.build(s, 1e-3, jax.random.PRNGKey(seed), np.random.default_rng(seed))
    calls = {}
    for name, f in field_variants(field).items():
        if name not in ("jaxode", "chw"):
            continue
        model = eqx.tree_at(lambda m: m.field, block, f)
        train, _ = suite.jax_steps(case, model)
        calls[name] = (lambda train=train, model=model: jax.block_until_ready(train(model, *batch_np)))
    if use_torch:
        calls["torch"] = suite.torch_steps(case, case.torch_model(block), batch_np)[0]
    return calls


# ----------------------------------------------------------------------------- torch


def torch_pieces(field, x, xt, g, gt, t, iters):
    import torch

    from benchmarks.torch_ref import TorchConvODEFunc, to_torch

    tf = TorchConvODEFunc.from_jax(field)
    x_, xt_, g_, gt_ = (to_torch(a) for a in (x, xt, g, gt))
    w = tf.conv1.conv.weight.detach().clone()
    w64 = w[:, 1:].contiguous()
    gn = tf.norm1
    t_ = torch.tensor(float(t))
    aten_bwd = torch.ops.aten.convolution_backward

    def loop(body):
        def run():
            acc = None
            for i in range(iters):
                out = body(1.0 + 1e-3 * i)
                acc = out if acc is None else tuple(a + o for a, o in zip(acc, out))
            return acc
        return run

    def conv_calls(a, w_):
        mask_x, mask_w = [True, False, False], [False, True, False]
        with torch.no_grad():
            return {
                "conv-fwd": lambda s: (torch.nn.functional.conv2d(a * s, w_, padding=1),),
                "conv-dinput": lambda s: (aten_bwd(g_ * s, a, w_, None, [1, 1], [1, 1], [1, 1], False,
                                                    [0, 0], 1, mask_x)[0],),
                "conv-dweight": lambda s: (aten_bwd(g_, a * s, w_, None, [1, 1], [1, 1], [1, 1], False,
                                                     [0, 0], 1, mask_w)[1],),
            }

    calls = {}
    for name, (a, w_) in {"torch": (xt_, w), "torch-64ch": (x_, w64)}.items():
        for piece, body in conv_calls(a, w_).items():
            calls[(piece, name)] = loop(torch.no_grad()(body))

    @torch.no_grad()
    def gn_fwd(s):
        return (gn(x_ * s),)

    def gn_body(s):
        a = (x_ * s).requires_grad_(True)
        out = gn(a)
        return (out.detach(),) + torch.autograd.grad(out, (a, gn.weight, gn.bias), g_)

    def concat_body(s):
        a = (x_ * s).requires_grad_(True)
        tt = t_.clone().requires_grad_(True)
        out = torch.cat([torch.ones_like(a[:, :1]) * tt, a], 1)
        return (out.detach(),) + torch.autograd.grad(out, (a, tt), gt_)

    def relu_body(s):
        a = (x_ * s).requires_grad_(True)
        out = torch.relu(a)
        return (out.detach(),) + torch.autograd.grad(out, (a,), g_)

    params = tuple(tf.parameters())

    @torch.no_grad()
    def field_fwd(s):
        return (tf(t_ + (s - 1.0), x_ * s),)

    def field_vjp(s):
        # torchdiffeq's adjoint: d/d(t, y, params) of f(t, y) against the adjoint state
        a = (x_ * s).requires_grad_(True)
        tt = (t_ + (s - 1.0)).requires_grad_(True)
        out = tf(tt, a)
        return (out.detach(),) + torch.autograd.grad(out, (tt, a) + params, g_)

    for piece, body in (("groupnorm-fwd", gn_fwd), ("groupnorm", gn_body), ("concat", concat_body), ("relu", relu_body),
                        ("field-fwd", field_fwd), ("field-vjp", field_vjp)):
        calls[(piece, "torch")] = loop(body)
    return calls


# ----------------------------------------------------------------------------- main


def time_interleaved_cpu(calls, repeats, progress=None):
    """`benchmarks.common.time_interleaved` that also records the CPU time of this
    process during each call (all its threads: XLA's pool, torch's OpenMP threads).
    On a loaded shared CPU the wall time of a call swings with other jobs; the CPU
    time it consumed much less so.  Returns ({name: {median, min, max, cpu_median}}
    in seconds, {name: last output})."""
    import statistics

    outs, wall, cpu = {}, {k: [] for k in calls}, {k: [] for k in calls}
    for name, fn in calls.items():
        outs[name] = fn()
    if progress:
        progress("compiled; timing round-robin")
    for r in range(repeats):
        for name, fn in calls.items():
            w, c = time.perf_counter(), time.process_time()
            outs[name] = fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
        if progress:
            progress(f"round {r + 1}/{repeats} done")
    return ({k: {"median": statistics.median(wall[k]), "min": min(wall[k]), "max": max(wall[k]),
                 "cpu_median": statistics.median(cpu[k])} for k in calls}, outs)


def to_markdown(res: dict) -> str:
    from benchmarks.common import markdown_table

    c, m = res["config"], res["machine"]
    head = (f"Per-piece profile of the Chen conv ODE field, batch {c['batch']}, {c['channels']} channels, "
            f"{c['size']}x{c['size']}: ms per evaluation, median (min-max) of {c['repeats']} loops of "
            f"{c['iters']} evaluations after compilation, jaxode (in a jitted lax.scan) and torch "
            f"(Python loop) timed round-robin.\n\nMachine: {m['cpu']}, {m['cores']} cores; torch threads "
            f"{c.get('torch_threads')} (OMP_WAIT_POLICY={c.get('omp_wait_policy')}); XLA_FLAGS="
            f"{c.get('xla_flags') or '(none)'}; load average before/after: {m.get('load_average')} / "
            f"{res.get('load_average_after')}; {m['date']}; jax {m['jax']}, torch {m.get('torch')}.\n")
    rows = []
    for piece in c["pieces"]:
        r = res["pieces"].get(piece, {})
        ref = r.get("torch")
        for variant, tm in r.items():
            ratio = f"{tm['median'] / ref['median']:.2f}" if ref and variant != "torch" else "-"
            cpu = tm.get("cpu_median")
            cpu_ratio = f"{cpu / ref['cpu_median']:.2f}" if cpu and ref and variant != "torch" else "-"
            nfe = per_nfe = "-"
            if "nfe_fwd" in tm:
                nfe = f"{tm['nfe_fwd']}/{tm['nfe_bwd']}"
                per_nfe = f"{tm['per_nfe']:.2f} / {tm['cpu_per_nfe']:.2f}"
                if ref and variant != "torch":
                    per_nfe += (f" ({tm['per_nfe'] / ref['per_nfe']:.2f}x / "
                                f"{tm['cpu_per_nfe'] / ref['cpu_per_nfe']:.2f}x)")
            rows.append([piece, variant, f"{tm['median']:.3f} ({tm['min']:.3f}-{tm['max']:.3f})", ratio,
                         f"{cpu:.3f}" if cpu else "-", cpu_ratio, nfe, per_nfe])
    out = head + "\n" + markdown_table(["piece", "variant", "ms / evaluation", "ratio vs torch", "CPU ms",
                                        "CPU ratio", "NFE f/b", "ms per NFE wall / CPU (vs torch)"], rows)
    out += ("\n\nVariants: jaxode = the library's field (channels-last inside: conv2d_hwc, "
            "GroupNorm.channels_last); chw = the former channel-first evaluation (NCHW, layout copies "
            "around each convolution); eqx-gn = chw with Equinox's GroupNorm; hwc-state = the field on a "
            "channels-last state (no transposes in or out); tbias = the t channel as a bias-like term; "
            "nhwc = the canonical NHWC/HWIO convolution alone; 64ch = without the t channel; torch = the "
            "same piece in torch (NCHW, oneDNN); torch-64ch = without the t channel. conv-* pieces have no "
            "bias; block-step is ms per training step (not per evaluation) with its NFE forward/backward "
            "and ms per NFE (step time / (forward + backward NFE)); CPU ms = CPU time of this process "
            "during the call (median); ratio = variant / torch's same piece.")
    for name, h in res.get("hlo", {}).items():
        out += (f"\n\nOptimized HLO of the field VJP in a lax.scan ({name}): loop body top-level ops "
                f"{h['top_level']}; inside fusions {h['inside_fusions']}; convolutions "
                f"{h['conv_dim_labels']}.")
    return out


def run(args):
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        print("torch was imported before: OMP_WAIT_POLICY not applied", flush=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import common
    from jaxode.fields.conv_odefunc import ConvODEFunc

    info = common.describe_machine()
    threads = args.torch_threads or common.cpu_count()
    use_torch = not args.no_torch
    if use_torch:
        import torch

        torch.set_num_threads(threads)
    b, c, h = args.batch, args.channels, args.size
    key = jax.random.PRNGKey(0)
    field = ConvODEFunc(c, key=key)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, c, h, h)), jnp.float32)
    xt = jnp.asarray(rng.standard_normal((b, c + 1, h, h)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, c, h, h)), jnp.float32)
    gt = jnp.asarray(rng.standard_normal((b, c + 1, h, h)), jnp.float32)
    t = jnp.float32(0.5)
    print(f"{info['cpu']} ({info['cores']} cores), load {info.get('load_average')}; batch {b}, "
          f"{c} channels, {h}x{h}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; compiling...", flush=True)
    calls = {k: v for k, v in jax_pieces(field, x, xt, g, gt, t, args.iters, args.pieces).items()
             if k[0] in args.pieces}
    if use_torch:
        calls.update({k: v for k, v in torch_pieces(field, x, xt, g, gt, t, args.iters).items()
                      if k[0] in args.pieces})
    if "block-step" in args.pieces:
        calls.update({("block-step", k): v for k, v in
                      block_steps(field, b, h, use_torch=use_torch).items()})
    t0 = time.perf_counter()
    timings, outs = time_interleaved_cpu(calls, repeats=args.repeats,
                                         progress=lambda s: print(s, flush=True))
    per = {}
    for (piece, variant), tm in timings.items():
        n = 1 if piece == "block-step" else args.iters
        row = {k: 1e3 * tm[k] / n for k in ("median", "min", "max", "cpu_median")}
        if piece == "block-step":  # jax: (loss, nfe, backward nfe, grads); torch: (loss, nfe, backward nfe)
            nf, nb = int(outs[(piece, variant)][1]), int(outs[(piece, variant)][2])
            row |= {"nfe_fwd": nf, "nfe_bwd": nb, "per_nfe": row["median"] / (nf + nb),
                    "cpu_per_nfe": row["cpu_median"] / (nf + nb)}
        per.setdefault(piece, {})[variant] = row
    results = {"config": vars(args) | {"torch_threads": threads if use_torch else None,
                                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                       "xla_flags": os.environ.get("XLA_FLAGS", "")},
               "machine": info, "pieces": {p: per[p] for p in args.pieces if p in per},
               "timing_wall_s": time.perf_counter() - t0}
    if args.hlo:
        os.makedirs(args.out, exist_ok=True)
        results["hlo"] = {}
        for name, f in field_variants(field).items():
            if name == "tbias":
                continue
            text = field_vjp_hlo(f, x, g, t, args.iters)
            path = os.path.join(args.out, f"profile-field-hlo-{name}{'-' + args.tag if args.tag else ''}.txt")
            with open(path, "w") as fh:
                fh.write(text)
            results["hlo"][name] = hlo_summary(text) | {"file": path}
    tag = common.machine_tag(info)
    stem = f"profile-field-{tag}" + (f"-{args.tag}" if args.tag else "")
    common.report(results, args.out, stem, to_markdown)
    return results


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
