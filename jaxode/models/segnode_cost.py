"""Table 2 of Khoshsirat & Kambhamettu: parameters, training and testing memory, the
largest training batch within a memory budget and the training / testing times of
SegNode and its residual baseline.

Memory is XLA's buffer assignment of the compiled programs (`compiled_bytes`), read
without running them, so the paper's 360x480 crops can be measured on any machine;
times are medians of three runs of the compiled training step (`jaxode.train.fit`'s)
and of the forward pass.
"""

from __future__ import annotations

import json
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxode.models.segnode import build_model, count_params
from jaxode.models.segnode_analysis import predict
from jaxode.models.segnode_train import MODELS
from jaxode.train import SegmentationTask, TrainConfig, train_state
from jaxode.train.loop import train_step

__all__ = ["measure_table2", "compiled_bytes", "CAMVID_TRAIN_IMAGES"]

CAMVID_TRAIN_IMAGES = 367  # one epoch, for the training time per epoch


def compiled_bytes(compiled) -> int:
    """Peak bytes of a compiled program by XLA's buffer assignment: arguments + outputs
    + temporaries - aliased (donated) bytes."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _median_seconds(step, state, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of `repeats` calls ``state = step(state)`` (each call continues
    from the previous output, as training does) and the last output."""
    times = []
    for _ in range(repeats):
        t0 = time.time()
        state = jax.block_until_ready(step(state))
        times.append(time.time() - t0)
    return float(np.median(times)), state


def _measure(name, config, opt, crop, batch, budget_gb, timing, two_batches, key):
    model = build_model(name, config, key=key)
    opt_state = train_state(model, TrainConfig(), opt)["opt_state"]
    classes = config.num_classes
    task = SegmentationTask(classes, classes, crop, (1.0, 1.0))
    # jax.jit over the model's arrays (equinox's filter_jit would treat the
    # ShapeDtypeStructs used for lowering as static constants)
    params, static = eqx.partition(model, eqx.is_array)

    def raw_step(d, o, i, l, k):  # the training step of `jaxode.train.fit`
        m, o2, _, loss, metrics, _ = train_step(
            eqx.combine(d, static), o, None, {"image": i, "label": l}, k,
            jnp.ones((), jnp.float32), task, opt, None)
        return eqx.filter(m, eqx.is_array), o2, loss, metrics["nfe"], metrics["nfe_backward"]

    raw_predict = jax.jit(lambda d, x: predict(eqx.combine(d, static), x))
    mem, args_bytes, compiled = {}, {}, {}
    for b in ((batch, 2 * batch) if two_batches else (batch,)):
        imgs = jax.ShapeDtypeStruct((b,) + crop + (3,), jnp.uint8)
        labs = jax.ShapeDtypeStruct((b,) + crop, jnp.uint8)
        t0 = time.time()
        compiled[b] = jax.jit(raw_step).lower(params, opt_state, imgs, labs, key).compile()
        mem[b] = compiled_bytes(compiled[b])
        args_bytes[b] = int(compiled[b].memory_analysis().argument_size_in_bytes)
        print(f"[{name}] train step batch {b}: {mem[b] / 2**30:.3f} GiB "
              f"(compiled in {time.time() - t0:.0f} s)", flush=True)
    if two_batches:  # memory is affine in the batch: fit it through two points
        per_image = (mem[2 * batch] - mem[batch]) / batch
        fixed = mem[batch] - per_image * batch
    else:  # one point: the fixed part is the arguments (parameters, optimiser state)
        fixed = args_bytes[batch]
        per_image = (mem[batch] - fixed) / batch
    max_batch = int((budget_gb * 2**30 - fixed) // per_image) if per_image > 0 else None
    x1 = jax.ShapeDtypeStruct((1,) + crop + (3,), jnp.uint8)
    test_c = raw_predict.lower(params, x1).compile()
    row = dict(params=count_params(model), train_mem_gib=mem[batch] / 2**30,
               train_mem_per_image_gib=per_image / 2**30,
               max_batch=max_batch, test_mem_one_image_gib=compiled_bytes(test_c) / 2**30)
    if timing:
        imgs = jnp.zeros((batch,) + crop + (3,), jnp.uint8)
        labs = jnp.zeros((batch,) + crop, jnp.uint8)
        step_s, (_, _, _, nf, nb) = _median_seconds(
            lambda s: compiled[batch](s[0], s[1], imgs, labs, key), (params, opt_state))
        row["train_step_s"] = step_s
        row["train_epoch_s"] = step_s * math.ceil(CAMVID_TRAIN_IMAGES / batch)
        x = jnp.zeros((1,) + crop + (3,), jnp.uint8)
        row["test_ms_per_image"] = 1e3 * _median_seconds(lambda _: test_c(params, x), None)[0]
        if name == "segnode":
            row["nfe_forward_train"] = int(nf)
            row["nfe_backward_train"] = float(nb)
    return row


def measure_table2(models: dict, crop: tuple[int, int], batch: int, budget_gb: float, *,
                   timing: bool = True, two_batches: bool = False, key=None) -> dict:
    """Table 2 for both models, `models` = ``{"segnode": (SegNodeConfig, optimiser),
    "baseline": (BaselineConfig, optimiser)}``, at the `crop` size: parameters,
    training memory at `batch`, the largest batch within `budget_gb` (memory is affine
    in the batch: through batch and 2*batch with `two_batches`, else with the arguments
    as the fixed part), memory to test one image, training time per epoch (367 images)
    and testing time per image (with `timing`).  Adds ``ratios``: how much less SegNode
    needs."""
    key = jax.random.PRNGKey(0) if key is None else key
    rows = {}
    for name in MODELS:
        rows[name] = _measure(name, *models[name], tuple(crop), batch, budget_gb, timing,
                              two_batches, key)
        print(f"[{name}] {json.dumps(rows[name])}", flush=True)
    b, s = rows["baseline"], rows["segnode"]
    rows["ratios"] = dict(
        params_less=1 - s["params"] / b["params"],
        train_mem_less=1 - s["train_mem_gib"] / b["train_mem_gib"],
        test_mem_less=1 - s["test_mem_one_image_gib"] / b["test_mem_one_image_gib"],
    )
    return rows
