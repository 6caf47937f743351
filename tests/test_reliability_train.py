"""Issue 9, training reliability: divergence, a solver out of steps, damaged or
half-written checkpoints, a training process killed at a random moment and resumed,
and determinism (same seed and config -> identical metrics on the CPU).

Everything uses sklearn's 8x8 digits, a 4-channel ODE-only net and a 2-step Euler
solve, so one compiled train step serves the in-process tests.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

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
    from jaxode.ode import trainable
    from jaxode.train.loop import _Optim

    model = _model()
    params = jax.tree_util.tree_leaves(eqx.filter(model, trainable(model)))
    opt = _Optim.from_config(_cfg()).tx().init(params)
    return {"model": model, "opt_state": opt, "ema": None}


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


# ------------------------------------------------------------- kill a real subprocess

_CLI = ["-m", "experiments.classify", "--config", "smoke-digits", "--channels", "4",
        "--epochs", "5", "--batch-size", "16", "--max-train-batches", "3",
        "--train-limit", "120", "--test-limit", "40", "--eval-batch-size", "40",
        "--tol-sweep", "", "--no-per-sample", "--solver", "euler", "--euler-steps", "2",
        "--no-progress", "--no-data-parallel"]


def _start(runs, name, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, *_CLI, "--runs-dir", str(runs), "--name", name,
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _metrics(path):
    with open(os.path.join(path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    """SIGKILL a real `python -m experiments.classify` at a random moment after its
    first checkpoint, leave debris of a half-written next checkpoint, ``--resume``:
    the metrics equal those of an uninterrupted run of the same command (run in this
    process, in a thread, while the victim trains)."""
    import threading

    from experiments.classify import build_parser, config_from_args, run

    runs = tmp_path / "runs"
    victim = _start(runs, "victim")
    args = build_parser().parse_args(_CLI[2:] + ["--runs-dir", str(runs), "--name", "full"])
    ref: dict = {}
    thread = threading.Thread(target=lambda: ref.update(
        run(config_from_args(args), progress=False, log=lambda s: None)))
    thread.start()
    ckdir = runs / "victim" / "checkpoints"
    deadline = time.time() + 300
    while not (ckdir / "latest.json").exists():
        assert victim.poll() is None, victim.communicate()[0][-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.3))  # a random moment after the first one
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = victim.returncode == -signal.SIGKILL
    survivors = latest_checkpoint(str(ckdir))
    assert survivors is not None and survivors >= 1
    # simulate a death during the next checkpoint write: a half-written temp file and
    # a truncated array file that latest.json does not point at yet
    nxt = survivors + 1
    (ckdir / f"ckpt-{nxt:04d}.eqx.tmp-999999").write_bytes(b"\x93NUMPY\x01\x00half")
    if not (ckdir / f"ckpt-{nxt:04d}.eqx").exists():
        (ckdir / f"ckpt-{nxt:04d}.eqx").write_bytes(b"\x93NUMPY\x01\x00trunc")
    resumed = _start(runs, "victim", "--resume")
    out_r = resumed.communicate(timeout=400)[0]
    thread.join(timeout=400)
    assert resumed.returncode == 0, out_r[-3000:]
    assert ref.get("epochs") == 5, "the reference run failed"
    if killed and survivors < 5:
        assert "resuming" in out_r and f"after epoch {survivors}" in out_r
    assert _metrics(runs / "victim") == _metrics(runs / "full")
    s_v = json.loads((runs / "victim" / "summary.json").read_text())
    assert s_v["test_accuracy"] == ref["test_accuracy"]
    assert s_v["epochs"] == 5
    if survivors < 5:  # a checkpoint was written after the resume: temp files gone
        assert not [n for n in os.listdir(ckdir) if ".tmp-" in n]
