"""The parts of `benchmarks.gpu_campaign`, in order of value.

Each part is ``fn(ctx) -> dict`` (JSON-able); `ctx` is the campaign's `Context`
(sizes, budget, output folder).  A part measures in *units* (one check, one model,
one program) and asks ``ctx.stop_reason(part)`` before each: once the part's share of
the budget or the whole budget is spent, the remaining units are listed under
``skipped`` with the reason instead of being run.

1. `correctness`: device and versions; backsolve gradient = checkpoint gradient; the
   convolution path chosen for the backend (`jaxode.nn.conv.conv_path`) and both paths
   agreeing on this device; float32 loss and gradients equal to the CPU's.
2. `suite`: `benchmarks.suite.run_model` for each model family, torch on CUDA.
3. `mfu`: model FLOP utilisation of the DCN-ODE and Carrara ODE-only training steps.
4. `memory`: XLA's peak memory of SegNode against the residual HRNet baseline at the
   paper's batch (Table 2 of Khoshsirat & Kambhamettu).
5. `train`: a resumable DCN-ODE CIFAR-10 training chunk (`experiments.dcn classify
   --resume`, i.e. `jaxode.train.fit` and its checkpoints).
"""

from __future__ import annotations

import csv
import math
import os
import time
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

# Dense peak TFLOP/s by device kind (vendor data sheets; SXM unless named), for MFU.
PEAK_TFLOPS = {
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0},
    "H200": {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}
# Table 2 of the SegNode paper (V100 32 GB, CamVid 480x360): GB of the baseline / SegNode.
PAPER_MEMORY_GB = {"train": (31.9, 13.4), "test": (1.2, 0.7)}
PAPER_MEMORY_BATCH = 24


def device_peak(kind: str) -> dict | None:
    """Peak TFLOP/s of a device kind (e.g. ``NVIDIA H100 80GB HBM3``), None if unknown."""
    k = kind.upper()
    if "H100" in k and "PCIE" in k:
        return PEAK_TFLOPS["H100 PCIe"]
    for name in ("H200", "H100", "A100"):
        if name in k:
            return PEAK_TFLOPS[name]
    return None


def _rel(a, b) -> float:
    """Norm-wise relative difference ||a - b|| / ||b|| over all leaves."""
    import jax

    la = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(a)]
    lb = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(b)]
    da = np.concatenate(la) - np.concatenate(lb)
    return float(np.linalg.norm(da) / max(np.linalg.norm(np.concatenate(lb)), 1e-30))


def _check(value: float, tolerance: float, **info) -> dict:
    return dict(value=value, tolerance=tolerance, passed=bool(value <= tolerance), **info)


# ------------------------------------------------------------------ 1. correctness


def device_info() -> dict:
    """Device, backend, JAX / jaxlib / CUDA / torch versions."""
    import jax
    import jaxlib

    from benchmarks.common import describe_machine

    info = describe_machine()
    info["jaxlib"] = jaxlib.__version__
    info["devices"] = [str(d) for d in jax.devices()]
    try:
        info["platform_version"] = jax.devices()[0].client.platform_version
    except Exception as e:  # noqa: BLE001 - informational only
        info["platform_version"] = f"unknown ({type(e).__name__})"
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_sees_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch_cuda"] = None
    return info


def _ode_problem(adjoint: str, solver="dopri5", tol=1e-6, channels=8, hw=6, batch=4,
                 num_steps=None, activation=None):
    """A Chen-style conv ODE block, a batch z0 and a fixed random R for sum(R * z1)."""
    import jax

    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.ode import ODEBlock, SolveConfig

    key = jax.random.PRNGKey(0)
    cfg = SolveConfig(solver=solver, rtol=tol, atol=tol, adjoint=adjoint, num_steps=num_steps)
    field = ConvODEFunc(channels, key=key, activation=activation or jax.nn.relu)
    block = ODEBlock(field, 0.0, 1.0, cfg)
    kz, kr = jax.random.split(jax.random.fold_in(key, 1))
    z0 = jax.random.normal(kz, (batch, channels, hw, hw))
    r = jax.random.normal(kr, z0.shape)
    return block, z0, r


def _value_and_grads(block, z0, r):
    """loss = sum(R * z(1)) and its gradients w.r.t. the field's parameters and z0, by a
    fresh jit (traced under the conv path and precision in force now, on the device
    the arrays are on)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    params, static = eqx.partition(block.field, eqx.is_inexact_array)

    def loss(p, z):
        z1, _ = eqx.tree_at(lambda b: b.field, block, eqx.combine(p, static)).batched(z)
        return jnp.sum(r * z1)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))(params, z0)


def check_adjoints(ctx) -> dict:
    """Backsolve (continuous adjoint, solved backwards) gradient = checkpoint (exact
    gradient of the discrete forward solve), float32, rk4 with 8 steps on [0, 1]: they
    differ by the discretisation error of the backward solve only.  The field uses tanh:
    at a ReLU kink the adjoint's right-hand side jumps and the two differ by more
    (as in tests/test_ode_gradients.py)."""
    import jax

    out = {}
    for adjoint in ("backsolve", "checkpoint"):
        out[adjoint] = _value_and_grads(*_ode_problem(adjoint, solver="rk4", num_steps=8,
                                                      activation=jax.nn.tanh))
    return _check(_rel(out["backsolve"][1], out["checkpoint"][1]), 1e-3,
                  what="||g_backsolve - g_checkpoint|| / ||g_checkpoint||, params and z0, rk4 x 8")


def check_conv_path(ctx) -> dict:
    """The path `conv2d` traces here, the one expected for this backend, and both
    paths' outputs and gradients on this device (float32, highest precision)."""
    import jax
    import jax.numpy as jnp

    from jaxode.nn.conv import conv2d, conv_path, force_conv_path

    backend = jax.default_backend()
    expected = "custom_jvp" if backend == "cpu" else "xla"
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(k1, (8, 16, 12, 12))
    w = jax.random.normal(k2, (16, 16, 3, 3)) / 12.0
    traced = "custom_jvp_call" in str(jax.make_jaxpr(jax.vmap(lambda xi: conv2d(xi, w, 1, 1)))(x))

    def run(path):
        with force_conv_path(path), jax.default_matmul_precision("highest"):
            def loss(x_, w_):
                y = jax.vmap(lambda xi: conv2d(xi, w_, 1, 1))(x_)
                return jnp.sum(jnp.tanh(y)), y
            (_, y), g = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, w)
        return y, g

    diff = _rel(run("custom_jvp"), run("xla"))
    res = _check(diff, 1e-5, what="custom_jvp vs xla path: outputs and gradients, rel. diff")
    res.update(backend=backend, chosen=conv_path(), expected=expected,
               traced_custom_jvp=traced)
    res["passed"] = bool(res["passed"] and conv_path() == expected
                         and traced == (expected == "custom_jvp"))
    return res


def check_against_cpu(ctx) -> dict:
    """float32 loss and gradients of a conv ODE block (Euler, 4 steps, backsolve) on the
    default device (the path `conv_path` picks for a GPU: plain XLA convolutions) equal
    the CPU's (custom-JVP convolutions): at highest precision within 1e-4 (checked); at
    the default precision (TF32 on recent GPUs) the difference is recorded only.  In the
    dry run both run on the CPU, so only the two convolution paths are compared."""
    import jax

    from jaxode.nn.conv import force_conv_path

    # Euler: the devices are compared, not the solver, and one stage compiles fastest
    block, z0, r = _ode_problem("backsolve", solver="euler", num_steps=4, channels=16, hw=8, batch=8)
    cpu = jax.devices("cpu")[0]

    def run(device, path, precision):
        with force_conv_path(path), jax.default_matmul_precision(precision):
            args = jax.device_put((block, z0, r), device)
            return jax.device_get(_value_and_grads(*args))

    here = jax.devices()[0]
    ref = run(cpu, "custom_jvp", "highest")
    what = f"{here.platform} vs cpu, loss and gradients, rel. diff (highest precision)"
    res = _check(_rel(run(here, "xla", "highest"), ref), 1e-4, what=what)
    if here.platform != "cpu":
        res["default_precision_rel_diff"] = _rel(run(here, "xla", "default"), ref)
    return res


def correctness(ctx) -> dict:
    out: dict[str, Any] = {"device": device_info(), "checks": {}, "skipped": {}}
    for name, fn in (("backsolve_equals_checkpoint", check_adjoints),
                     ("conv_path", check_conv_path), ("float32_equals_cpu", check_against_cpu)):
        why = ctx.stop_reason("correctness")
        if why:
            out["skipped"][name] = why
            continue
        t = time.perf_counter()
        out["checks"][name] = fn(ctx) | {"seconds": time.perf_counter() - t}
        ctx.say(f"  {name}: {'passed' if out['checks'][name]['passed'] else 'FAILED'} "
                f"({out['checks'][name]['value']:.2e} <= {out['checks'][name]['tolerance']:g}?)")
    out["passed"] = all(c["passed"] for c in out["checks"].values())
    return out


# ------------------------------------------------------------------------- 2. suite


def suite(ctx) -> dict:
    """`benchmarks.suite.run_model` for each model, torch on CUDA where it runs; the
    rows are written to ``suite.json`` / ``suite.md`` after every model."""
    import argparse

    from benchmarks import common
    from benchmarks import suite as bench

    sargs = argparse.Namespace(size=ctx.size, models=list(ctx.models), tol=1e-3,
                               repeats=ctx.repeats, no_torch=False, torch_threads=None,
                               seed=0, out=str(ctx.out), torch_device="auto")
    use_torch, threads = bench.prepare_torch(sargs)
    sargs.torch_device = sargs.torch_device if use_torch else None
    results = {"config": vars(sargs) | {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                        "torch_threads": threads if use_torch else None},
               "machine": common.describe_machine(), "rows": [], "skipped": {}, "failed": {}}
    t0 = time.perf_counter()
    for name in ctx.models:
        why = ctx.stop_reason("suite")
        if why:
            results["skipped"][name] = why
            continue
        try:
            row = bench.run_model(name, sargs, use_torch, lambda m: ctx.say("  " + m))
        except Exception as e:  # noqa: BLE001 - one model's failure must not stop the rest
            results["failed"][name] = f"{type(e).__name__}: {e}"[:2000]
            ctx.say(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        results["rows"].append(row)
        ratio = f"{row['ratio_train']:.2f}x torch" if "ratio_train" in row else row["torch"]
        ctx.say(f"  {name}: train {row['jax']['train']['median']:.4f} s ({ratio}), NFE "
                f"{row['jax']['nfe_fwd']}/{row['jax']['nfe_bwd']}")
        results["wall_s"] = time.perf_counter() - t0
        common.write_results(ctx.out, "suite", results, bench.to_markdown(results))
    return {"rows": [_suite_summary(r) for r in results["rows"]], "skipped": results["skipped"],
            "failed": results["failed"], "files": ["suite.json", "suite.md"],
            "torch_device": sargs.torch_device, "size": ctx.size}


def _suite_summary(row) -> dict:
    j = row["jax"]
    out = {"model": row["model"], "setting": row["setting"], "jax_train_s": j["train"]["median"],
           "jax_infer_s": j["infer"]["median"], "nfe_jax": [j["nfe_fwd"], j["nfe_bwd"]],
           "compile_train_s": j["compile_train_s"]}
    if "ratio_train" in row:
        t = row["torch_result"]
        out.update(torch_train_s=t["train"]["median"], torch_infer_s=t["infer"]["median"],
                   nfe_torch=[t["nfe_fwd"], t["nfe_bwd"]], ratio_train=row["ratio_train"],
                   ratio_infer=row["ratio_infer"], ratio_train_per_nfe=row["ratio_train_per_nfe"])
    return out


# --------------------------------------------------------------------------- 3. MFU


def _flops(fn: Callable, *args) -> float | None:
    """XLA's cost-analysis FLOPs of ``jit(fn)(*args)`` (None if the backend gives none)."""
    import jax

    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return float(ca["flops"]) if ca and "flops" in ca else None


def field_inputs(model, x) -> list[tuple]:
    """The per-example state shape and dtype each ODE block's field is called with,
    read by tracing the model's forward pass (`jax.eval_shape`; nothing runs)."""
    import equinox as eqx

    from jaxode.train.utils import ode_blocks

    seen: dict[int, tuple] = {}

    class _Probe(eqx.Module):
        field: Any
        index: int = eqx.field(static=True)

        def __call__(self, t, z, *rest):
            seen.setdefault(self.index, (tuple(z.shape), z.dtype))
            return self.field(t, z, *rest)

    blocks = ode_blocks(model)
    probed = eqx.tree_at(lambda m: [b.field for b in ode_blocks(m)], model,
                         [_Probe(b.field, i) for i, b in enumerate(blocks)])
    eqx.filter_eval_shape(lambda m, xx: m(xx, inference=True), probed, x)
    return [seen[i] for i in range(len(blocks))]


def field_flops(field, shape, dtype, batch: int) -> tuple[float | None, float | None]:
    """XLA FLOPs of one evaluation of `field` on a batch (the forward solve's cost per
    NFE) and of one evaluation with its vector-Jacobian product w.r.t. the state and the
    parameters (the backsolve adjoint's cost per backward NFE)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    params, static = eqx.partition(field, eqx.is_inexact_array)
    t = jnp.asarray(0.5, dtype)
    z = jnp.zeros((batch,) + shape, dtype)

    def fwd(p, zz):
        return jax.vmap(lambda zi: eqx.combine(p, static)(t, zi))(zz)

    def bwd(p, zz, a):
        return jax.vjp(fwd, p, zz)[1](a)

    return _flops(fwd, params, z), _flops(bwd, params, z, z)


def _classifier_step(model, x, y):
    """Loss, per-block forward NFE, per-block backward NFE and gradients (jitted once)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from jaxode.train.utils import ode_blocks

    def step(params, x, y):
        def loss(p):
            logits, aux = eqx.combine(p, static)(x, inference=False)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), aux

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        keys = sorted(k for k in aux if k.startswith("nfe_block")) or ["nfe"]
        fwd = jnp.stack([aux[k][0] for k in keys])
        bwd = jnp.stack([b.nfe_probe for b in ode_blocks(grads)])
        return value, fwd, bwd, grads

    params, static = eqx.partition(model, eqx.is_inexact_array)
    return jax.jit(step), params


def mfu(ctx) -> dict:
    """FLOPs per training step = sum over ODE blocks of (forward NFE x FLOPs of one field
    evaluation + backward NFE x FLOPs of one evaluation with its VJP), each from XLA's
    cost analysis of that computation alone (a step's own cost analysis counts a while
    loop's body once, whatever the number of solver steps).  The stem, head and solver
    arithmetic are left out, so the FLOPs and the MFU are lower bounds."""
    import jax

    from benchmarks import common
    from benchmarks._suite_models import CASES, SIZES, describe
    from jaxode.train.utils import ode_blocks, with_solve_config

    kind = str(getattr(jax.devices()[0], "device_kind", jax.devices()[0]))
    peak = device_peak(kind)
    out: dict[str, Any] = {"device": kind, "peak_tflops": peak, "rows": [], "skipped": {},
                           "matmul_precision": str(jax.config.jax_default_matmul_precision)}
    # the dry run measures DCN-ODE alone (several blocks: the general code path)
    for name in ("dcn-ode",) if ctx.dry_run else ("dcn-ode", "carrara-odeonly"):
        why = ctx.stop_reason("mfu")
        if why:
            out["skipped"][name] = why
            continue
        s = SIZES[name][ctx.size]
        model, (x, y) = CASES[name].build(s, 1e-3, jax.random.PRNGKey(0), np.random.default_rng(0))
        if ctx.dry_run:  # the code path, not the numbers: 2 Euler steps compile fast
            model = with_solve_config(model, solver="euler", num_steps=2)
        x, y = jax.device_put((x, y))  # once, not at every timed call
        step, params = _classifier_step(model, x, y)
        timing, (loss, nfe_f, nfe_b, _) = common.time_jax(step, params, x, y, repeats=ctx.repeats)
        per_block = []
        total = 0.0
        for block, (shape, dtype), nf, nb in zip(ode_blocks(model), field_inputs(model, x),
                                                 np.asarray(nfe_f), np.asarray(nfe_b)):
            cf, cb = field_flops(block.field, shape, dtype, x.shape[0])
            flops = float(nf) * (cf or 0.0) + float(nb) * (cb or 0.0)
            total += flops
            per_block.append(dict(state=list(shape), nfe_fwd=float(nf), nfe_bwd=float(nb),
                                  flops_field=cf, flops_field_vjp=cb, flops=flops))
        tflops = total / timing["median"] / 1e12
        row = dict(model=name, setting=describe(name, ctx.size), step_s=timing["median"],
                   compile_s=timing["first"] - timing["median"], loss=float(loss),
                   blocks=per_block, flops_per_step=total, achieved_tflops=tflops)
        if peak:
            row.update({f"mfu_vs_{k}": tflops / v for k, v in peak.items()})
        out["rows"].append(row)
        ctx.say(f"  {name}: {total / 1e9:.2f} GFLOP/step in {timing['median']:.4f} s = "
                f"{tflops:.3f} TFLOP/s" + (f" (MFU {row['mfu_vs_tf32']:.2%} of TF32 peak)"
                                            if peak else " (peak unknown for this device)"))
    return out


# ------------------------------------------------------------------------ 4. memory


def _seg_batch(ctx, batch: int, crop: int | None):
    """(images (B, 3, H, W) float32, labels (B, H, W) int32) from the CamVid copy."""
    import jax.numpy as jnp

    from jaxode.data.camvid import load_camvid, normalize

    path = os.path.join(ctx.data, "camvid-segnet.zip")
    split = load_camvid(path, splits=("train",), limit=batch)["train"]
    images, labels = split.images, split.labels
    reps = math.ceil(batch / len(images))  # fewer pairs staged than the batch: repeat them
    images, labels = np.concatenate([images] * reps)[:batch], np.concatenate([labels] * reps)[:batch]
    if crop:
        images, labels = images[:, :crop, :crop], labels[:, :crop, :crop]
    return normalize(jnp.asarray(images)), jnp.asarray(labels.astype(np.int32))


def _seg_train_step(model, x, y):
    """Mean cross-entropy over the labelled pixels (void, index 11, left out)."""
    import jax.numpy as jnp
    import optax

    from jaxode.data.camvid import IGNORE_LABEL

    scores = jnp.moveaxis(model.batched(x)[0], 1, -1)
    valid = y != IGNORE_LABEL
    ce = optax.softmax_cross_entropy_with_integer_labels(scores, jnp.where(valid, y, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)


def memory(ctx) -> dict:
    """Peak memory (XLA's buffer assignment of the compiled program: arguments +
    outputs + temporaries - aliased) of a SegNode and a residual-baseline training step
    at the paper's batch (24 CamVid images, 360x480) and of a one-image forward pass."""
    import equinox as eqx
    import jax

    from benchmarks.common import compile_with_memory
    from jaxode.models.segnode import BaselineConfig, SegNodeConfig, build_model

    if ctx.dry_run:
        small = dict(widths=(4, 8), blocks=1, stem_channels=8)  # two branches: compiles fast
        configs = {"segnode": SegNodeConfig(**small, solver="euler", num_steps=2),
                   "baseline": BaselineConfig(**small, modules=1)}
        batch, crop = 2, 64
    else:
        configs = {"segnode": SegNodeConfig(), "baseline": BaselineConfig()}
        batch, crop = PAPER_MEMORY_BATCH, None
    x, y = _seg_batch(ctx, batch, crop)
    out: dict[str, Any] = {"batch": batch, "image": list(x.shape[2:]), "rows": {}, "skipped": {},
                           "configs": {k: repr(v) for k, v in configs.items()}}

    def grad_step(m, xx, yy):
        return eqx.filter_grad(lambda mm: _seg_train_step(mm, xx, yy))(m)

    units = [(f"{n}-{w}", n, w) for w in ("train", "test") for n in ("segnode", "baseline")]
    for label, name, what in units:
        why = ctx.stop_reason("memory")
        if why:
            out["skipped"][label] = why
            continue
        model = build_model(name, configs[name], key=jax.random.PRNGKey(0))
        t = time.perf_counter()
        if what == "train":
            _, mem = compile_with_memory(grad_step, model, x, y)
        else:
            _, mem = compile_with_memory(lambda m, xx: m.batched(xx)[0], model, x[:1])
        out["rows"][label] = dict(memory=mem, compile_s=time.perf_counter() - t)
        ctx.say(f"  {label}: {mem['total'] / 2**30:.3f} GiB" if mem else f"  {label}: no analysis")
    for what, (base_gb, seg_gb) in PAPER_MEMORY_GB.items():
        a, b = out["rows"].get(f"segnode-{what}"), out["rows"].get(f"baseline-{what}")
        if a and b and a["memory"] and b["memory"]:
            out[f"{what}_reduction"] = 1.0 - a["memory"]["total"] / b["memory"]["total"]
        out[f"paper_{what}_reduction"] = 1.0 - seg_gb / base_gb
    return out


# ------------------------------------------------------------------------- 5. train


def _epoch_estimate(ctx, steps: int, eval_steps: int) -> tuple[float, float] | None:
    """(seconds per epoch, compile seconds) of DCN-ODE at batch 128 from the step time
    the MFU part measured at the paper size, or None."""
    rows = (ctx.results.get("mfu") or {}).get("rows", [])
    row = next((r for r in rows if r["model"] == "dcn-ode"), None)
    if row is None or ctx.size != "paper":
        return None
    # the trainer's step adds the update and the data; evaluation runs the forward only
    return 1.3 * row["step_s"] * steps + 0.5 * row["step_s"] * eval_steps, 2.0 * row["compile_s"]


def train(ctx) -> dict:
    """One chunk of DCN-ODE training on CIFAR-10 (paper config: batch 128, SGD, lr 0.1
    with x0.1 at epochs 40 and 70, 100 epochs in all) through ``experiments.dcn classify
    --resume``: as many whole epochs as the budget allows, continuing the run folder
    ``DIR/dcn-train`` (copied there from ``--resume-train``)."""
    from benchmarks.common import run_program
    from jaxode.train.checkpoint import latest_checkpoint
    from jaxode.train.runs import checkpoint_dir, read_summary

    run = os.path.join(ctx.out, "dcn-train")
    done = latest_checkpoint(checkpoint_dir(run)) or 0
    total = 100 if not ctx.dry_run else 2
    if done >= total:
        return {"skipped": {"train": f"the run in {run} has finished all {total} epochs"}}
    data = ctx.data
    if ctx.dry_run:  # a 48-image copy of CIFAR-10 (stage_data's code): nothing big to decode
        from benchmarks.stage_data import CIFAR, cifar_members, write_zip

        data = os.path.join(ctx.out, "dry-run-data")
        os.makedirs(data, exist_ok=True)
        with zipfile.ZipFile(os.path.join(ctx.data, CIFAR)) as zf:
            write_zip(zf, os.path.join(data, CIFAR), cifar_members(zf, 32, 16))
        epochs, argv = 1, ["--config", "smoke", "--solver", "euler", "--num-steps", "2"]
    else:
        argv = ["--config", "paper"]
        left = ctx.budget.left() - 45.0  # decoding the 52,000 JPEGs, writing, a margin
        est = _epoch_estimate(ctx, steps=50000 // 128, eval_steps=math.ceil(2000 / 128))
        if ctx.train_epochs:
            epochs = ctx.train_epochs
        elif est is None:
            epochs = 1 if left > 240 else 0
        else:
            epochs = int((left - est[1]) // est[0])
        if epochs < 1:
            how = (f"an epoch takes ~{est[0]:.0f} s + {est[1]:.0f} s compile by the measured "
                   "step time" if est else "no step time measured and under 240 s")
            return {"skipped": {"train": f"{left:.0f} s left: {how}; run `--parts train` alone"}}
    epochs = min(done + epochs, total)
    cmd = ["classify", "--model", "dcn_ode", *argv, "--epochs", str(epochs), "--name", run,
           "--data-root", data, "--resume"]
    ctx.say(f"  python -m experiments.dcn {' '.join(cmd)}")
    t = time.perf_counter()
    status = run_program("experiments.dcn", cmd)
    if status != 0:
        raise RuntimeError(f"experiments.dcn exited with {status}")
    summary = read_summary(run)
    metrics = os.path.join(run, "metrics.csv")
    out = {"run": "dcn-train", "epochs_before": done, "epochs_after": epochs,
           "seconds": time.perf_counter() - t,
           "command": "python -m experiments.dcn " + " ".join(cmd)}
    if summary is not None:
        out["summary"] = {k: v for k, v in summary.items() if k != "learned_sigma"}
    if os.path.isfile(metrics):
        with open(metrics, newline="") as f:
            out["history"] = list(csv.DictReader(f))
    return out
