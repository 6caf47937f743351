"""The one trainer (`jaxode.train.fit`) with every task and optimiser of the project.

- The snippet in `jaxode.train`'s docstring (a new model family in ~15 lines) runs
  as written and learns.
- `freeze_all_but` leaves every parameter outside the chosen part bit-for-bit
  unchanged while the part moves (a frozen backbone).
- A checkpoint written before the optimiser became pluggable (optimiser state on a
  flat list of leaves) resumes under the new `fit`.
- The task metrics against direct computations: bits/dim = NLL / (D ln 2); mIoU from
  summed per-example confusion matrices equals mIoU of the whole set's matrix.
(The migrated experiments' smoke metrics against the code before the migration:
tests/test_fit_migrations.py.)
"""

import math
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxode.train
from jaxode.train import (DensityTask, RegressionTask, RunDir, SegmentationTask, TrainConfig,
                          fit, freeze_all_but, save_checkpoint, summarise)
from jaxode.train.seg_metrics import confusion_matrix, miou


def _docstring_snippet() -> str:
    doc = jaxode.train.__doc__
    start = doc.index("nothing else (this snippet is run by tests/test_fit_tasks.py)::")
    lines = doc[start:].splitlines()[2:]
    block = []
    for line in lines:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_docstring_snippet_trains_a_new_model_family(capsys):
    code = _docstring_snippet()
    assert 15 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 32
    scope: dict = {}
    # optax's Adam bias correction mixes dtypes, which the suite's strict promotion
    # refuses; a user's session runs with JAX's standard promotion
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "jaxode.train docstring", "exec"), scope)
    result = scope["result"]
    assert len(result.history) == 20
    # a label the initial model gets about half right, learnt by the trained one
    assert result.history[-1]["eval_acc"] > 0.85
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert str(result.history[-1]["eval_acc"]) in capsys.readouterr().out


class _Linear(eqx.Module):
    backbone: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None, inference=False):
        return jax.vmap(lambda v: self.head(jnp.tanh(self.backbone(v))))(x), {}


class _Mse(eqx.Module):
    def train_loss(self, model, batch, key):
        out, _ = model(batch["x"])
        loss = jnp.mean((out - batch["y"]) ** 2)
        return loss, {"loss": loss}

    def eval_metrics(self, model, batch, key):
        out, _ = model(batch["x"])
        return {"loss": jnp.mean((out - batch["y"]) ** 2, axis=-1)}


def _small():
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    model = _Linear(eqx.nn.Linear(3, 4, key=k1), eqx.nn.Linear(4, 2, key=k2))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(16, 3)).astype(np.float32),
            "y": rng.normal(size=(16, 2)).astype(np.float32)}
    return model, data


HEAD = lambda m: m.head  # noqa: E731 -- one object: the optimiser is cached per `where`


def test_frozen_backbone_stays_and_head_moves():
    model, data = _small()
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), freeze_all_but(HEAD))
    cfg = TrainConfig(epochs=3, progress=False, data_parallel=False)
    out = fit(model, _Mse(), lambda e: [data], config=cfg, optimizer=tx, log=lambda s: None).model
    for a, b in zip(jax.tree_util.tree_leaves(model.backbone),
                    jax.tree_util.tree_leaves(out.backbone)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(model.head.weight), np.asarray(out.head.weight))
    # control: without the freeze the same optimiser moves the backbone
    head_only = fit(model, _Mse(), lambda e: [data], config=cfg,
                    optimizer=optax.sgd(0.1, momentum=0.9), log=lambda s: None)
    assert not np.allclose(np.asarray(head_only.model.backbone.weight),
                           np.asarray(model.backbone.weight))


def test_old_flat_list_checkpoint_resumes(tmp_path):
    """Checkpoints of runs started before this change (the MNIST run of issue 17)
    hold the SGD momentum buffer on a flat list of leaves; they must resume, and
    resuming must continue exactly as the uninterrupted run."""
    from jaxode.ode import trainable

    model, data = _small()
    cfg = TrainConfig(epochs=2, lr=0.05, weight_decay=1e-3, progress=False, data_parallel=False)
    whole = fit(model, _Mse(), lambda e: [data], config=cfg, log=lambda s: None)
    one = fit(model, _Mse(), lambda e: [data], config=cfg.replace(epochs=1), log=lambda s: None)
    # the state as the earlier trainer saved it: optax.chain(add_decayed_weights, trace)
    # over the list of trainable leaves
    leaves = jax.tree_util.tree_leaves(eqx.filter(one.model, trainable(one.model)))
    old_tx = optax.chain(optax.add_decayed_weights(1e-3), optax.trace(decay=0.9))
    old_state = old_tx.init(leaves)
    buf = jax.tree_util.tree_leaves(one.opt_state)
    old_state = (old_state[0], old_state[1]._replace(trace=list(buf)))
    run = RunDir(str(tmp_path / "old"), {})
    save_checkpoint(run.checkpoints, 1, {"model": one.model, "opt_state": old_state, "ema": None},
                    {"epoch": 1, "history": one.history,
                     "plateau": {"best": None, "bad_epochs": 0, "scale": 1.0}})
    resumed = fit(model, _Mse(), lambda e: [data], config=cfg, run=run, resume=True,
                  log=lambda s: None)
    for a, b in zip(jax.tree_util.tree_leaves(whole.model), jax.tree_util.tree_leaves(resumed.model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Gauss(eqx.Module):
    """A 'flow' with a known density: N(mu, I) in D dims, log p in closed form."""

    mu: jax.Array

    def log_prob_batched(self, xs, key=None):
        d = xs.shape[-1]
        logp = -0.5 * jnp.sum((xs - self.mu) ** 2, -1) - 0.5 * d * math.log(2 * math.pi)
        return logp, {"nfe": jnp.zeros(())}

    def with_trace(self, trace):
        return self


def test_density_task_nll_and_bits_per_dim():
    xs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    flow = _Gauss(jnp.zeros(3))
    per = DensityTask().eval_metrics(flow, {"x": xs}, None)
    nll = 0.5 * (xs ** 2).sum(-1) + 1.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(per["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(per["bits_per_dim"], nll / (3 * math.log(2)), rtol=1e-5)
    loss, m = DensityTask().train_loss(flow, {"x": xs}, None)
    np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-5)
    # maximum likelihood of the mean: Adam moves mu towards the sample mean
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes dtypes
        res = fit(_Gauss(jnp.full(3, 2.0)), DensityTask(), lambda e: [{"x": xs}],
                  config=TrainConfig(epochs=60, progress=False, data_parallel=False),
                  optimizer=optax.adam(0.1), log=lambda s: None)
    np.testing.assert_allclose(np.asarray(res.model.mu), xs.mean(0), atol=0.1)


def test_regression_task_is_the_sum_of_squares():
    class Line(eqx.Module):
        a: jax.Array

        def __call__(self, x, ts):
            return x + self.a * ts[:, None], {}

    ts = jnp.linspace(0.0, 1.0, 5)
    batch = {"x": jnp.ones(2), "ts": ts, "y": jnp.ones((5, 2)) + 3.0 * ts[:, None]}
    loss, m = RegressionTask().train_loss(Line(jnp.asarray(1.0)), batch, None)
    np.testing.assert_allclose(float(loss), float(jnp.sum((2.0 * ts[:, None]) ** 2 * jnp.ones(2))),
                               rtol=1e-6)
    np.testing.assert_allclose(float(m["mse"]), float(loss) / 10, rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        RegressionTask(reduction="max")


def test_segmentation_summary_is_the_whole_sets_miou():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 5, 7)).astype(np.int32)
    labels[0, 0, :3] = 255
    logits = rng.normal(size=(6, 3, 5, 7)).astype(np.float32)

    class Fixed(eqx.Module):
        out: jax.Array

        def batched(self, x):
            return self.out, None

    task = SegmentationTask(num_classes=3, ignore_label=255, crop=(5, 7))
    per = task.eval_metrics(Fixed(jnp.asarray(logits)),
                            {"image": np.zeros((6, 5, 7, 3), np.uint8), "label": labels}, None)
    got = summarise(task, {k: np.asarray(v) for k, v in per.items()})
    whole = confusion_matrix(jnp.asarray(labels), jnp.asarray(logits.argmax(1)), 3, 255)
    assert got["miou"] == pytest.approx(miou(np.asarray(whole)))


def test_sgd_settings_with_another_optimizer_are_refused():
    from jaxode.train import make_optimizer

    with pytest.raises(ValueError, match="weight_decay.*optax.add_decayed_weights"):
        make_optimizer(TrainConfig(weight_decay=1e-4), optax.adam(1e-3))
    assert make_optimizer(TrainConfig(weight_decay=1e-4)) is make_optimizer(
        TrainConfig(weight_decay=1e-4))  # cached: one compiled step per setting
