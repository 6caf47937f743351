"""Micro-benchmark behind `jaxode.nn.conv`: a convolution and its two gradients
inside a ``lax.scan`` (as in every Diffrax solve) versus the same work unrolled.

For each implementation -- ``eqx`` (``lax.conv_general_dilated`` in NCHW / OIHW, as
Equinox's ``Conv2d``) and ``fast`` (`jaxode.nn.conv.conv2d`) -- and each piece --
forward, input gradient, weight gradient, both gradients -- it prints the time per
iteration of a jitted loop of `--iters` iterations (median of `--repeats`).  The
convolution is applied per example under `jax.vmap`, as the ODE fields do.

    python -m benchmarks.conv_in_loop                  # 64(+1) channels, 7x7, batch 128
"""

from __future__ import annotations

import argparse


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_in_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels", type=int, default=64, help="output channels; input has one more (the t channel)")
    p.add_argument("--size", type=int, default=7)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from jax import lax

    from benchmarks import common
    from jaxode.nn.conv import conv2d, reference_conv2d

    b, o, h = args.batch, args.channels, args.size
    c = o + 1
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (b, c, h, h))
    w = jax.random.normal(k2, (o, c, 3, 3)) / (9 * c) ** 0.5
    g = jax.random.normal(k3, (b, o, h, h))

    def piece(fn, what):
        def f(i, x, w):
            xs = x * (1.0 + 1e-3 * i)  # differs per iteration: nothing to hoist
            conv = lambda x_, w_: jax.vmap(lambda xi: fn(xi, w_, 1, 1))(x_)  # noqa: E731
            if what == "forward":
                return (conv(xs, w),)
            _, vjp = jax.vjp(conv, xs, w)
            gx, gw = vjp(g)
            return {"input grad": (gx,), "weight grad": (gw,), "both grads": (gx, gw)}[what]
        return f

    def looped(f, unroll):
        def run(x, w):
            init = jax.tree_util.tree_map(jnp.zeros_like, f(0.0, x, w))
            if unroll:
                acc = init
                for i in range(args.iters):
                    acc = jax.tree_util.tree_map(jnp.add, acc, f(float(i), x, w))
                return acc

            def body(acc, i):
                return jax.tree_util.tree_map(jnp.add, acc, f(i, x, w)), None

            return lax.scan(body, init, jnp.arange(args.iters, dtype=jnp.float32))[0]
        return jax.jit(run)

    info = common.describe_machine()
    print(f"{info['cpu']} ({info['cores']} cores), load {info.get('load_average')}; "
          f"batch {b}, {c}->{o} channels, {h}x{h}, 3x3; ms per iteration")
    print(f"{'piece':12s} {'conv':5s} {'in scan':>9s} {'unrolled':>9s}")
    for what in ("forward", "input grad", "weight grad", "both grads"):
        for name, fn in (("eqx", reference_conv2d), ("fast", conv2d)):
            res = []
            for unroll in (False, True):
                fj = looped(piece(fn, what), unroll)
                timing, _ = common.time_jax(fj, x, w, repeats=args.repeats)
                res.append(1e3 * timing["median"] / args.iters)
            print(f"{what:12s} {name:5s} {res[0]:9.2f} {res[1]:9.2f}", flush=True)


if __name__ == "__main__":
    main()
