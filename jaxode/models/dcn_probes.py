"""Probes of trained deep continuous networks (Tomen, Pintea & van Gemert, ICML 2021):
input contrast and integration time (Sec. 3.3, Fig. 5), pattern completion
(Sec. 3.2, Fig. 3c, Fig. 4, supplement A.5) and the reconstruction task (Sec. 3.1,
Table 3, supplement A.4).

Contrast (Sec. 3.3).  For an image H (floats in [0, 1]) the network input at contrast
c is

    H_hat = c H.

"Naive": the trained network sees H_hat unchanged.  "Robust": the integration interval
of ODE block 1 is scaled with the contrast, [0, T] -> [0, c T] (the field's time
channel then runs over [0, c T] too).  "All blocks" (Fig. 5, bottom, "DCN:3"): every
ODE block integrates over [0, c T_i] and the input feature maps of blocks 2, 3, ... are
multiplied by c as well (block 1's input already carries the contrast of H_hat).

Because `ODEBlock.t0` / `t1` are arrays, `scale_ode_times` changes them with
`eqx.tree_at` and a jitted evaluation does not recompile (only values change).

Pattern completion (Sec. 3.2).  An n x n square of zero pixels at the image centre
(`centre_mask`).  Within ODE block 1 the feature maps of the intact image h_im(t) and
of the masked image h_im^masked(t) are compared by (eq. 4)

    D(t) = (1 / A) sum_{c,x,y} | h_im(t) - h_im^masked(t) |,

with A the amplitude of the intact image's feature maps.  The paper does not spell A
out; here A(t) = sum_{c,x,y} | h_im(t) | (the same sum, over the intact maps at the same
t), so D(t) is a relative L1 distance: D = 0 for identical maps, D = 1 when the masked
maps are zero.

Reconstruction (supplement A.4): `ReconstructionTask` trains a `DCNAutoencoder` with
the mean squared error against the centre 28 x 28 crop of the input.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxode.data import augment as aug
from jaxode.models.dcn import centre_crop
from jaxode.ode import ODEBlock, is_ode_block

__all__ = [
    "CONTRAST_MODES",
    "apply_contrast",
    "scale_ode_times",
    "contrast_scales",
    "scaled_forward",
    "contrast_forward",
    "centre_mask",
    "feature_difference",
    "block1_trajectory",
    "ReconstructionTask",
    "probe_batches",
    "probe_step",
    "probe_pass",
    "PROBE_TRACES",
]

#: naive: only the input changes; block1: T_1 -> c T_1; all: T_i -> c T_i in every ODE
#: block and the inputs of blocks 2.. multiplied by c.
CONTRAST_MODES = ("naive", "block1", "all")


def apply_contrast(x, c):
    """H_hat = c H (Sec. 3.3): the input at contrast c of a float image batch."""
    return jnp.asarray(c, x.dtype) * x


_is_block = is_ode_block


def scale_ode_times(tree, c, blocks=None):
    """`tree` with the interval [t0, t1] of each selected ODE block replaced by
    [t0, t0 + c (t1 - t0)] (Sec. 3.3: T -> c T for blocks starting at 0).

    `blocks`: positions among the ODE blocks of `tree` in PyTree order (for a
    `DCNClassifier` position i is ``model.blocks[i]``); None = all.  `c` may be a traced
    scalar.  Scaling is relative to the intervals in `tree` (apply it to the trained
    model, not to an already scaled one).
    """
    counter = iter(range(1 << 30))
    selected = None if blocks is None else set(int(b) for b in blocks)

    def fix(node):
        if not _is_block(node):
            return node
        i = next(counter)
        if selected is not None and i not in selected:
            return node
        t1 = node.t0 + jnp.asarray(c, node.t1.dtype) * (node.t1 - node.t0)
        return eqx.tree_at(lambda b: b.t1, node, t1)

    return jax.tree_util.tree_map(fix, tree, is_leaf=_is_block)


def contrast_scales(c, mode: str, n_blocks: int):
    """Per-block factors ``(time_scale, input_scale)``, each (n_blocks,), of contrast
    `c` under `mode` (one of `CONTRAST_MODES`, see the module docstring):

    - naive:  T_i -> T_i for all i; no input scaling;
    - block1: T_1 -> c T_1;
    - all:    T_i -> c T_i for all i; inputs of blocks 2.. multiplied by c.
    """
    if mode not in CONTRAST_MODES:
        raise ValueError(f"contrast mode must be one of {', '.join(CONTRAST_MODES)}, got {mode!r}.")
    c = jnp.asarray(c, jnp.float32)
    ones = jnp.ones((n_blocks,), jnp.float32)
    if mode == "naive":
        return ones, ones
    if mode == "block1":
        return ones.at[0].set(c), ones
    return ones * c, ones.at[1:].set(c)


def scaled_forward(model, x, c, time_scale, input_scale):
    """Logits and per-ODE-block `SolveStats` of a `DCNClassifier` for the input
    ``apply_contrast(x, c)``, with block i integrated over [t0, t0 + time_scale[i]
    (t1 - t0)] and its input multiplied by ``input_scale[i]``.  All arguments but the
    model's structure may be traced: one compiled program serves every contrast and
    mode.  (Residual blocks have no interval; their time_scale is ignored.)"""
    for i, block in enumerate(model.blocks):
        if isinstance(block, ODEBlock):
            t1 = block.t0 + time_scale[i].astype(block.t1.dtype) * (block.t1 - block.t0)
            model = eqx.tree_at(lambda m: m.blocks[i].t1, model, t1)
    return model.forward_with_stats(apply_contrast(x, c), input_scales=input_scale)


def contrast_forward(model, x, c, mode: str = "naive"):
    """`scaled_forward` with the factors of `contrast_scales` (`mode` is static)."""
    return scaled_forward(model, x, c, *contrast_scales(c, mode, len(model.blocks)))


def centre_mask(x, n):
    """x (N, C, H, W) with the centre n x n square set to zero (Sec. 3.2: "masks have
    zero pixel values, and are placed at the center of the image").  The square covers
    rows top .. top + n - 1 with top = (H - n) // 2 (columns likewise); `n` may be
    traced (one program for all sizes); n = 0 leaves x unchanged."""
    h, w = x.shape[-2:]
    n = jnp.asarray(n, jnp.int32)
    top, left = (h - n) // 2, (w - n) // 2
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= top) & (rows < top + n) & (cols >= left) & (cols < left + n)
    return jnp.where(inside, jnp.zeros((), x.dtype), x)


def feature_difference(h, h_masked, axes=(-3, -2, -1)):
    """D = sum |h - h_masked| / sum |h| over `axes` (eq. 4 with A = sum |h|, see the
    module docstring); for trajectories (N, T, C, H, W) the result is (N, T)."""
    num = jnp.sum(jnp.abs(h - h_masked), axis=axes)
    den = jnp.sum(jnp.abs(h), axis=axes)
    return num / jnp.maximum(den, jnp.finfo(h.dtype).tiny)


def block1_trajectory(model, x, ts):
    """Feature maps h(t) inside the first block of a `DCNClassifier`, shape
    (N, len(ts), C, H, W), and the block's `SolveStats` (None for a residual block).

    ODE block: the state at each time of `ts` (within the block's [t0, t1]) from one
    dense solve.  Residual block (no trajectory): the input and the output, stacked
    (`ts` ignored; two "times", as in supplement A.5)."""
    model._check(x)
    h0 = jax.vmap(model.stem)(x)
    block = model.blocks[0]
    if isinstance(block, ODEBlock):
        return block.batched(h0, ts=ts)
    return jnp.stack([h0, jax.vmap(block)(h0)], axis=1), None


@dataclasses.dataclass(frozen=True)
class ReconstructionTask:
    """Image reconstruction with MSE (supplement A.4): the model (a `DCNAutoencoder`)
    maps the float input (N, 3, 32, 32) in [0, 1] to (N, 3, 28, 28); the loss is

        L = mean_{n,c,x,y} (model(x) - crop_28(x))^2,

    crop_28 the centre 28 x 28 crop.  No augmentation (the paper names none).
    Training metrics: ``loss``, ``nfe``; evaluation metrics per example: ``loss``
    (the image's MSE) and ``nfe``.  Satisfies the trainer's task contract
    (`jaxode.train`)."""

    size: int = 28

    def _mse(self, model, batch, key):
        x = aug.to_model_input(batch["image"])
        y, aux = model(x, key=key)
        err = jnp.mean((y - centre_crop(x, self.size)) ** 2, axis=(1, 2, 3))
        n = x.shape[0]
        nfe = jnp.broadcast_to(jnp.asarray(aux.get("nfe", 0.0), jnp.float32), (n,))
        return err, nfe

    def train_loss(self, model, batch, key):
        err, nfe = self._mse(model, batch, key)
        loss = jnp.mean(err)
        return loss, {"loss": loss, "nfe": jnp.mean(nfe)}

    def eval_metrics(self, model, batch, key):
        err, nfe = self._mse(model, batch, key)
        return {"loss": err, "nfe": nfe}


# ------------------------------------------------------------- a whole test set


def probe_batches(test, batch_size: int):
    """Fixed-size float batches (N, 3, H, W) of a `Dataset`, the last one padded by
    repeating images (one compiled program for every batch); yields
    ``(x, labels, n_real)``."""
    n = len(test)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        yield aug.to_model_input(test.images[idx]), test.labels[idx], min(batch_size, n - start)


PROBE_TRACES: list = []  # one entry per trace (= compilation) of `probe_step`


@eqx.filter_jit
def probe_step(model, x, y, c, time_scale, input_scale, mask_size):
    """Correct predictions, forward NFE per ODE block (batch mean) and step-limit flags
    for the input ``c * centre_mask(x, mask_size)`` with block-wise time and input
    factors (`scaled_forward`).  c, the factors, the mask size and the blocks' t1 are
    traced: one compiled program per model shape serves every contrast, mode and mask."""
    PROBE_TRACES.append(1)
    logits, stats = scaled_forward(model, centre_mask(x, mask_size), c, time_scale, input_scale)
    correct = jnp.argmax(logits, -1) == y
    nfe = jnp.stack([jnp.asarray(s.nfe, jnp.float32).mean() for s in stats] or [0.0])
    hit = jnp.stack([jnp.asarray(s.max_steps_reached).any() for s in stats] or [False])
    return correct, nfe, hit


def probe_pass(model, test, batch_size: int, c, time_scale, input_scale, mask_size=0):
    """``(accuracy, mean forward NFE per ODE block, batches that hit the step limit)``
    of `model` over the whole `test` set under contrast `c` and a centre mask."""
    correct, count, nfes, hits = 0, 0, [], []
    for x, y, n in probe_batches(test, batch_size):
        ok, nfe, hit = jax.device_get(probe_step(
            model, x, jnp.asarray(y), jnp.float32(c), time_scale, input_scale,
            jnp.int32(mask_size)))
        correct += int(np.sum(ok[:n]))
        count += n
        nfes.append(nfe)
        hits.append(hit)
    return correct / count, np.mean(nfes, axis=0), int(np.sum(np.any(hits, axis=1)))
