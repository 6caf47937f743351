"""Issue 9, training reliability: divergence, a solver out of steps, damaged or
half-written checkpoints, a training process killed at a random moment and resumed,
and determinism (same seed and config -> identical metrics on the CPU).

Everything uses sklearn's 8x8 digits, a 4-channel ODE-only net and a 2-step Euler
solve, so one compiled train step serves the in-process tests.
"""

from __future__ import annotations

import dataclasses
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.data.digits import load_digits
from jaxode.models.classifiers import make_model
from jaxode.ode import SolveConfig
from jaxode.train import (ClassificationTask, NonFiniteLossError, RunDir, TrainConfig,
                          dataset_batches, fit)
from jaxode.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 16


@dataclasses.dataclass(frozen=True)
class PoisonTask(ClassificationTask):
    """Classification whose loss turns NaN on batches flagged ``poison`` (a test
    double for a run that diverges at a known step)."""

    def train_loss(self, model, batch, key):
        loss, metrics = super().train_loss(model, batch, key)
        bad = jnp.any(batch["poison"] > 0)
        return jnp.where(bad, jnp.asarray(jnp.nan, loss.dtype), loss), metrics


@pytest.fixture(scope="module")
def digits():
    return load_digits("train").subset(slice(0, 96))


def _model(solve=None):
    return make_model("carrara-odeonly", num_classes=10, in_channels=1, channels=4,
                      stem_kernel=3, stem_stride=2, stem_padding=1, dropout=0.0,
                      solve=solve or SolveConfig(solver="euler", num_steps=2),
                      key=jax.random.PRNGKey(0))


def _batches(data, poison_at=None):
    def make(epoch):
        out = []
        for i, b in enumerate(dataset_batches(data, BATCH, seed=(0, epoch), drop_last=True)):
            hit = poison_at == (epoch, i)
            out.append({**b, "poison": np.full((BATCH,), float(hit), np.float32)})
        return out[:3]
    return make


def _cfg(**kw):
    base = dict(epochs=2, batch_size=BATCH, lr=0.05, seed=0, progress=False,
                data_parallel=False, lr_schedule="cosine")
    base.update(kw)
    return TrainConfig(**base)


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def test_divergence_stops_with_step_and_keeps_last_checkpoint(digits, tmp_path):
    task = PoisonTask()
    quiet = lambda s: None  # noqa: E731
    cfg = _cfg(lr_schedule="constant")
    # a run poisoned at epoch 2, step 2
    run = RunDir(str(tmp_path / "bad"), {})
    with pytest.raises(NonFiniteLossError) as info:
        fit(_model(), task, _batches(digits, poison_at=(1, 1)), config=cfg, run=run, log=quiet)
    msg = str(info.value)
    assert "epoch 2, step 2" in msg and "nan" in msg
    assert "lower learning rate" in msg and "--lr 0.005" in msg
    assert "tolerance" in msg and "ckpt-0001.eqx" in msg
    ckpt = run.checkpoints
    assert latest_checkpoint(ckpt) == 1
    state, meta = load_checkpoint(ckpt, 1, _template(digits))
    assert meta["epoch"] == 1
    # the surviving checkpoint equals one clean epoch, bit for bit
    one = fit(_model(), task, _batches(digits), config=cfg.replace(epochs=1), log=quiet)
    for a, b in zip(_arrays(state["model"]), _arrays(one.model)):
        np.testing.assert_array_equal(a, b)
    assert _strip(meta["history"]) == _strip(one.history)
    # determinism: two clean runs with the same seed and config give identical metrics
    # and weights (and their first epoch is the checkpointed one)
    a = fit(_model(), task, _batches(digits), config=cfg, log=quiet)
    b = fit(_model(), task, _batches(digits), config=cfg, log=quiet)
    assert _strip(a.history) == _strip(b.history) and len(a.history) == 2
    assert _strip(a.history[:1]) == _strip(one.history)
    for x, y in zip(_arrays(a.model), _arrays(b.model)):
        np.testing.assert_array_equal(x, y)


def _template(digits):
    from jaxode.train import train_state

    return train_state(_model(), _cfg())


def _strip(history):
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in history]


def test_real_divergence_from_a_huge_learning_rate(digits):
    # lr 1e8 only drives the loss to ~1e26 (finite: GroupNorm rescales the exploding
    # weights); at 1e20 the float32 updates overflow within two steps
    with pytest.raises(NonFiniteLossError) as info:
        fit(_model(), PoisonTask(), _batches(digits), config=_cfg(epochs=3, lr=1e20, lr_schedule="constant"),
            log=lambda s: None)
    msg = str(info.value)
    assert "epoch " in msg and "step " in msg and "1e+20" in msg and "--lr 1e+19" in msg


def test_solver_out_of_steps_is_reported_with_the_step(digits):
    solve = SolveConfig(solver="dopri5", rtol=1e-7, atol=1e-7, max_steps=2)
    with pytest.raises(NonFiniteLossError) as info:
        fit(_model(solve), PoisonTask(), _batches(digits), config=_cfg(epochs=1),
            log=lambda s: None)
    msg = str(info.value)
    assert "epoch 1, step 1" in msg and "max_steps=2" in msg and "learning rate" in msg


def test_checkpoint_folder_survives_damage(tmp_path):
    tree = {"w": jnp.arange(6.0), "b": jnp.ones((2, 3))}
    folder = str(tmp_path / "ck")
    for e in (1, 2):
        save_checkpoint(folder, e, jax.tree_util.tree_map(lambda x: x * e, tree), {"epoch": e})
    # a writer killed mid-write leaves a temp file and no pointer update
    with open(os.path.join(folder, "ckpt-0003.eqx.tmp-4242"), "wb") as f:
        f.write(b"\x93NUMPY partial")
    assert latest_checkpoint(folder) == 2
    t, meta = load_checkpoint(folder, 2, tree)
    np.testing.assert_array_equal(t["w"], 2 * np.arange(6.0))
    # the next save clears the stale temp file
    save_checkpoint(folder, 3, tree, {"epoch": 3})
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]
    assert sorted(n for n in os.listdir(folder) if n.endswith(".eqx")) == [
        "ckpt-0002.eqx", "ckpt-0003.eqx"]
    # a damaged pointer falls back to the newest complete checkpoint
    with open(os.path.join(folder, "latest.json"), "w") as f:
        f.write('{"epo')
    assert latest_checkpoint(folder) == 3
    # a truncated array file is reported by name, as a ValueError
    path = os.path.join(folder, "ckpt-0003.eqx")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="ckpt-0003"):
        load_checkpoint(folder, 3, tree)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(folder, 2, {"w": jnp.zeros(5), "b": jnp.ones((2, 3))})


# The SIGKILL-and-resume test of a real `python -m experiments.classify` moved to
# tests/test_reliability_kill.py (issue 18): kills at a random moment and inside
# checkpoint writes, through benchmarks/kill_resume.py.
