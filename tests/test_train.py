"""The trainer: optimiser semantics against torch.optim.SGD, schedules, exact resume,
NaN stop with an intact checkpoint, solver phases, data parallelism on 4 host devices."""

import json
import math
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.data import load_dataset
from jaxode.models import Head, PreActBlock, ResNetClassifier, Sequence, odeonly_net
from jaxode.ode import SolveConfig
from jaxode.train import (
    ClassificationTask,
    NonFiniteLossError,
    PlateauState,
    RunDir,
    TrainConfig,
    dataset_batches,
    fit,
    latest_checkpoint,
    learning_rate,
    load_checkpoint,
)
from jaxode.train.optim import sgd_momentum
from jaxode.train.steplog import StepLog, read_steps

# ----------------------------------------------------------------- optimiser, schedules


def test_sgd_matches_torch():
    torch = pytest.importorskip("torch")
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    target = np.array([0.3, 0.1, -0.7], np.float32)
    lrs = [0.1, 0.1, 0.05, 0.05, 0.01]
    # ours
    tx = sgd_momentum(TrainConfig(momentum=0.9, weight_decay=1e-2))
    p = [jnp.asarray(w0)]
    state = tx.init(p)
    for lr in lrs:  # the step of `fit`: p + lr * u, u a descent direction
        g = [2 * (p[0] - target)]
        u, state = tx.update(g, state, p)
        p = [p[0] + lr * u[0]]
    # torch
    wt = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([wt], lr=lrs[0], momentum=0.9, weight_decay=1e-2)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        ((wt - torch.tensor(target)) ** 2).sum().backward()
        opt.step()
    np.testing.assert_allclose(np.asarray(p[0]), wt.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedules():
    c = TrainConfig(epochs=160, lr=0.1, lr_schedule="step", milestones=(60, 100, 140))
    assert learning_rate(c, 59, 0, 10) == pytest.approx(0.1)
    assert learning_rate(c, 60, 0, 10) == pytest.approx(0.01)
    assert learning_rate(c, 145, 3, 10) == pytest.approx(1e-4)
    cos = TrainConfig(epochs=10, lr=0.2, lr_schedule="cosine")
    assert learning_rate(cos, 0, 0, 4) == pytest.approx(0.2)
    assert learning_rate(cos, 5, 0, 4) == pytest.approx(0.1)
    assert learning_rate(cos, 7, 2, 4) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.75)))
    warm = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2)
    assert learning_rate(warm, 0, 0, 4) == pytest.approx(0.1 * 0.25 / 2)
    assert learning_rate(warm, 2, 0, 4) == pytest.approx(0.1)


def test_plateau_like_pytorch():
    torch = pytest.importorskip("torch")
    losses = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    c = TrainConfig(lr=1.0, lr_schedule="plateau", plateau_patience=2, gamma=0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    state = PlateauState()
    for v in losses:
        state = state.update(v, c)
        sched.step(v)
        assert learning_rate(c, 0, 0, 1, state.scale) == pytest.approx(opt.param_groups[0]["lr"])
    assert state.scale < 1.0


def test_bad_config_values():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="bad schedule entry"):
        TrainConfig(phases="rk4:3")


# ------------------------------------------------------------------ end-to-end loops

TASK = ClassificationTask()


@pytest.fixture(scope="module")
def digits():
    train = load_dataset("digits", "train").subset(slice(0, 96))
    test = load_dataset("digits", "test").subset(slice(0, 40))
    return train, test


def _tiny_ode(seed=0):
    return odeonly_net(10, in_channels=1, channels=8, stem_kernel=3, stem_stride=2,
                       stem_padding=1, dropout=0.0, solve=SolveConfig(rtol=1e-2, atol=1e-2),
                       key=jax.random.PRNGKey(seed))


class _Interrupt(Exception):
    pass


def _stop_after_epoch_1(line):
    if line.startswith("epoch 1 "):
        raise _Interrupt


def _tiny_resnet(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    stem = Sequence((eqx.nn.Conv2d(1, 8, 3, 1, 1, key=k1),))
    return ResNetClassifier(stem, (PreActBlock(8, 8, 1, key=k2),), Head(8, 10, key=k3), 1)


def _fit(model, data, cfg, run=None, resume=False, log=lambda s: None):
    train, test = data
    return fit(model, TASK,
               lambda e: dataset_batches(train, cfg.batch_size, seed=(cfg.seed, e), drop_last=True),
               lambda: dataset_batches(test, 20, shuffle=False),
               config=cfg, run=run, resume=resume, log=log)


def test_resume_reproduces_uninterrupted_run(digits, tmp_path):
    """2 epochs (Euler phase, then dopri5 + adjoint) == 1 epoch + resume for 1 more."""
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, weight_decay=1e-4, progress=False,
                      lr_schedule="cosine", phases="euler:1,adjoint:1", euler_steps=2, seed=3)
    full = _fit(_tiny_ode(), digits, cfg, RunDir(str(tmp_path / "full"), {}))
    with pytest.raises(_Interrupt):  # a run stopped after its first epoch
        _fit(_tiny_ode(), digits, cfg, RunDir(str(tmp_path / "part"), {}), log=_stop_after_epoch_1)
    assert latest_checkpoint(str(tmp_path / "part" / "checkpoints")) == 1
    # a crash in epoch 2 after a flush of steps.csv: rows past the checkpoint's step 3
    with open(tmp_path / "part" / "steps.csv", "r+") as f:
        header = f.readline().strip().split(",")
        f.seek(0, os.SEEK_END)
        f.write(",".join({"step": "4", "epoch": "2"}.get(k, "999") for k in header) + "\n")
    assert read_steps(str(tmp_path / "part"))[-1]["nfe"] == 999
    # resume: the same run folder, now asking for 2 epochs
    resumed = _fit(_tiny_ode(), digits, cfg, RunDir(str(tmp_path / "part"), {}), resume=True)
    assert [r["phase"] for r in full.history] == ["euler", "adjoint"]
    assert full.history[0]["train_nfe"] == 2  # Euler: one evaluation per step
    assert full.history[1]["train_nfe_backward"] > 0  # adjoint solve counted
    for a, b in zip(full.history, resumed.history):
        for k in a:
            if not k.endswith("time_s"):
                assert a[k] == b[k], (k, a[k], b[k])
    la = jax.tree_util.tree_leaves(eqx.filter(full.model, eqx.is_inexact_array))
    lb = jax.tree_util.tree_leaves(eqx.filter(resumed.model, eqx.is_inexact_array))
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)
    # the run folder holds the promised files
    folder = tmp_path / "part"
    for name in ("config.json", "metrics.csv", "loss.png", "acc.png", "nfe.png"):
        assert (folder / name).exists(), name
    assert latest_checkpoint(str(folder / "checkpoints")) == 2
    assert open(folder / "metrics.csv").read().count("\n") == 3  # header + 2 epochs
    # steps.csv: one row per step (3 per epoch), the same in the resumed run as in the
    # uninterrupted one (the stale row 4 replaced), its epoch means those of metrics.csv
    steps_full, steps_part = read_steps(str(tmp_path / "full")), read_steps(str(folder))
    assert [r["step"] for r in steps_part] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in steps_part] == [1, 1, 1, 2, 2, 2]
    for a, b in zip(steps_full, steps_part):
        assert {k: v for k, v in a.items() if k != "step_time_s"} == \
            {k: v for k, v in b.items() if k != "step_time_s"}
    assert [r["nfe"] for r in steps_part[:3]] == [2, 2, 2]  # 2 Euler steps, 1 eval each
    for epoch, row in enumerate(resumed.history, 1):
        rows = [r for r in steps_part if r["epoch"] == epoch]
        for k in ("nfe", "nfe_backward", "loss"):
            assert np.mean([r[k] for r in rows]) == pytest.approx(row[f"train_{k}"], rel=1e-5)
    assert steps_part[-1]["nfe_backward"] > 0


def test_step_log_flushes_every_k_and_truncates_on_resume(tmp_path):
    path = str(tmp_path / "steps.csv")
    log = StepLog(path, every=3)
    log.start(0)
    for i in range(1, 6):
        log.add({"epoch": 1, "step": i, "nfe": 10.0 + i, "nfe_backward": 20.0})
        written = len(read_steps(path)) if os.path.exists(path) else 0
        assert written == 3 * (i // 3), (i, written)
    log.flush()
    assert [r["nfe"] for r in read_steps(path)] == [11, 12, 13, 14, 15]
    with open(path, "a") as f:
        f.write("1")  # a kill while appending row 16: its first digit written
    StepLog(path).start(3)  # resuming from a checkpoint after step 3
    assert [r["step"] for r in read_steps(path)] == [1, 2, 3]
    log = StepLog(path)
    log.start(3)
    log.add({"step": 4, "epoch": 2, "nfe": 7.0, "extra": 1.0})  # no nfe_backward: empty
    log.flush()
    assert read_steps(path)[-1] == {"step": 4, "epoch": 2, "nfe": 7}
    StepLog(path).start(0)  # a fresh run starts the file afresh
    assert not os.path.exists(path)


def test_nan_stops_with_message_and_keeps_checkpoint(digits, tmp_path):
    model = _tiny_resnet()
    # epoch 2 runs at an infinite learning rate: the update is not finite
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, lr_schedule="step", milestones=(1,),
                      gamma=math.inf, progress=False)
    run = RunDir(str(tmp_path / "nan"), {})
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1\b.*lower learning rate"):
        _fit(model, digits, cfg, run)
    ckpt = run.checkpoints
    assert latest_checkpoint(ckpt) == 1
    from jaxode.train import train_state

    template = train_state(model, cfg)
    state, meta = load_checkpoint(ckpt, 1, template)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    leaves = jax.tree_util.tree_leaves(eqx.filter(state["model"], eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_ema_weights_differ_and_are_averages(digits):
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, ema_decay=0.5, progress=False)
    model = _tiny_resnet()
    res = _fit(model, digits, cfg)
    w0 = model.head.linear.weight
    w = res.model.head.linear.weight
    e = res.eval_model.head.linear.weight
    assert not np.allclose(w, e)
    # an EMA of weights on the path from w0 to w stays within their bounding box
    lo, hi = np.minimum(w0, w), np.maximum(w0, w)
    assert np.mean((e >= lo - 0.05) & (e <= hi + 0.05)) > 0.9


# ------------------------------------------------------------------ data parallelism

_DP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    from jaxode.data import load_dataset
    from jaxode.models import odeonly_net
    from jaxode.ode import SolveConfig
    from jaxode.train import ClassificationTask, TrainConfig, dataset_batches, fit
    assert jax.device_count() == 4, jax.devices()
    train = load_dataset("digits", "train").subset(slice(0, 64))
    out = {}
    for dp in (False, True):
        model = odeonly_net(10, in_channels=1, channels=8, stem_kernel=3, stem_stride=2,
                            stem_padding=1, solve=SolveConfig(rtol=1e-2, atol=1e-2),
                            key=jax.random.PRNGKey(0))
        cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, progress=False, data_parallel=dp)
        res = fit(model, ClassificationTask(),
                  lambda e: dataset_batches(train, 32, seed=(0, e), drop_last=True), None,
                  config=cfg, log=lambda s: None)
        sharding = res.model.head.linear.weight.sharding
        out[str(dp)] = {"loss": res.history[0]["train_loss"],
                        "nfe": res.history[0]["train_nfe"],
                        "w": np.asarray(res.model.head.linear.weight).ravel().tolist(),
                        "devices": len(sharding.device_set)}
    print("RESULT" + json.dumps(out))
""")


def test_data_parallel_four_host_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _DP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT")][0]
    out = json.loads(line[len("RESULT"):])
    one, four = out["False"], out["True"]
    assert one["devices"] == 1 and four["devices"] == 4
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert four["nfe"] == one["nfe"]
    np.testing.assert_allclose(four["w"], one["w"], rtol=1e-4, atol=1e-6)
