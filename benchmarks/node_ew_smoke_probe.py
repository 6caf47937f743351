"""Forward and backward (adjoint) solver work of one gradient of the NODE-EW smoke nets.

One batch of 64 digits, optionally with every pixel repeated k x k times, through
`node_ew_mnist` (NODE-EW) or `chen_odenet` (fixed weights); one `jax.value_and_grad`
with the backsolve adjoint and ``on_max_steps="flag"``; prints the forward steps / NFE,
the backward NFE and whether the gradients are finite.  Each case is
``MODEL[:key=value...]`` with SolveConfig settings, e.g.::

    python -m benchmarks.node_ew_smoke_probe --upsample 1 nodeew odenet:max_steps=300
    python -m benchmarks.node_ew_smoke_probe --upsample 3 nodeew:seminorm=True

(Issue 18: why ``experiments.node_ew_mnist --smoke`` ran out of steps.)
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _value(v: str):
    if v in ("True", "False"):
        return v == "True"
    return int(v) if v.isdigit() else float(v)


def probe(case: str, x, y):
    from jaxode.models.node_ew import chen_odenet, node_ew_mnist
    from jaxode.ode import SolveConfig, backward_nfe

    kind, *opts = case.split(":")
    kw = {"rtol": 1e-3, "atol": 1e-3, "on_max_steps": "flag"}
    kw.update({k: _value(v) for k, v in (o.split("=") for o in opts)})
    build = {"nodeew": node_ew_mnist, "odenet": chen_odenet}[kind]
    key = jax.random.PRNGKey(0)
    model = build(in_channels=1, solve=SolveConfig(**kw), key=key)
    diff, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def step(d, x):
        def loss(d):
            logits, aux = eqx.combine(d, static)(x, key=key, inference=False)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(y)), y]), aux

        (_, aux), g = jax.value_and_grad(loss, has_aux=True)(d)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(g)]))
        return aux, backward_nfe(g), finite

    t = time.perf_counter()
    aux, nfe_b, finite = step(diff, x)
    return {"case": case, "steps": float(jnp.mean(aux["steps"])),
            "nfe_forward": float(jnp.mean(aux["nfe"])), "nfe_backward": int(nfe_b),
            "grads_finite": bool(finite), "seconds": time.perf_counter() - t}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.node_ew_smoke_probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", help="MODEL[:key=value...], MODEL in nodeew, odenet")
    p.add_argument("--upsample", type=int, default=1, help="repeat each pixel k x k times")
    args = p.parse_args(argv)
    from jaxode.data import load_dataset
    from jaxode.data.augment import to_model_input

    train = load_dataset("digits", "train")
    k = args.upsample
    images = np.repeat(np.repeat(train.images[:64], k, axis=1), k, axis=2)
    x, y = to_model_input(jnp.asarray(images)), jnp.asarray(train.labels[:64])
    for case in args.cases:
        print(probe(case, x, y), flush=True)


if __name__ == "__main__":
    main()
