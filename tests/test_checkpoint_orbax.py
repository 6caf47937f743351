"""Orbax checkpoints (`jaxode.train.checkpoint_orbax`) behind the same functions as the
``.eqx`` ones: round trip, keep-N, fallback past a damaged newest step, conversion of
``.eqx`` checkpoints (kept readable), and a run killed with SIGKILL that resumes to the
uninterrupted run's numbers."""

import os
import signal
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

from jaxode.train import checkpoint as ckpt  # noqa: E402
from jaxode.train.checkpoint_orbax import convert_to_orbax, is_orbax, use_orbax  # noqa: E402


def _tree(seed):
    k = jax.random.PRNGKey(seed)
    return {"model": eqx.nn.MLP(3, 2, 4, 1, key=k), "opt": [jnp.arange(3.0) + seed, None]}


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def test_orbax_roundtrip_keep_and_fallback(tmp_path):
    folder = str(tmp_path / "ck")
    use_orbax(folder)
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(folder, epoch, _tree(epoch), {"epoch": epoch}, keep=2)
    assert ckpt.saved_epochs(folder) == [2, 3] and ckpt.latest_checkpoint(folder) == 3
    tree, meta = ckpt.load_checkpoint(folder, 3, _tree(0))
    assert meta == {"epoch": 3}
    for a, b in zip(_arrays(tree), _arrays(_tree(3))):
        np.testing.assert_array_equal(a, b)
    assert tree["opt"][1] is None and callable(tree["model"].activation)
    # damage every file of the newest step's arrays: the older step is used, nothing deleted
    for root, _, names in os.walk(os.path.join(folder, "3", "state")):
        for n in names:
            with open(os.path.join(root, n), "wb") as f:
                f.write(b"\0garbage")
    logs = []
    epoch, tree, _ = ckpt.load_newest_intact(folder, lambda e: _tree(0), log=logs.append)
    assert epoch == 2 and "Falling back to checkpoint 2" in logs[0]
    np.testing.assert_array_equal(_arrays(tree)[0], _arrays(_tree(2))[0])
    assert ckpt.saved_epochs(folder) == [2, 3]
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt.load_checkpoint(folder, 2, {"model": eqx.nn.MLP(3, 2, 5, 1, key=jax.random.PRNGKey(0)),
                                         "opt": [jnp.zeros(3), None]})


def test_convert_eqx_checkpoints_to_orbax(tmp_path):
    folder = str(tmp_path / "ck")
    for epoch in (1, 2):
        ckpt.save_checkpoint(folder, epoch, _tree(epoch), {"epoch": epoch}, keep=5)
    eqx_files = sorted(n for n in os.listdir(folder) if n.endswith(".eqx"))
    with pytest.raises(FileExistsError, match="convert_to_orbax"):
        use_orbax(folder)
    assert convert_to_orbax(folder, lambda e: _tree(0), log=lambda s: None) == [1, 2]
    assert is_orbax(folder) and ckpt.saved_epochs(folder) == [1, 2]
    assert sorted(n for n in os.listdir(folder) if n.endswith(".eqx")) == eqx_files  # kept
    for epoch in (1, 2):
        tree, meta = ckpt.load_checkpoint(folder, epoch, _tree(0))
        assert meta == {"epoch": epoch}
        for a, b in zip(_arrays(tree), _arrays(_tree(epoch))):
            np.testing.assert_array_equal(a, b)
    os.remove(os.path.join(folder, "format.json"))  # the .eqx files still read
    tree, _ = ckpt.load_checkpoint(folder, 2, _tree(0))
    np.testing.assert_array_equal(_arrays(tree)[-1], _arrays(_tree(2))[-1])


_RUN = textwrap.dedent("""
    import os, signal, sys
    import jax
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    sys.path.insert(0, os.path.dirname(sys.argv[2]))
    from test_checkpoint_orbax import run_fit
    def log(line):
        if line.startswith("epoch 2 "):  # checkpoint 2 is written: kill -9 now
            os.kill(os.getpid(), signal.SIGKILL)
    run_fit(sys.argv[1], resume=False, log=log)
""")


def run_fit(path, resume, log=lambda s: None):
    from jaxode.data import load_dataset
    from jaxode.models import Head, PreActBlock, ResNetClassifier, Sequence
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    model = ResNetClassifier(Sequence((eqx.nn.Conv2d(1, 4, 3, 1, 1, key=k1),)),
                             (PreActBlock(4, 4, 1, key=k2),), Head(4, 10, key=k3), 1)
    train = load_dataset("digits", "train").subset(slice(0, 64))
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, progress=False)
    run = RunDir(path, {"x": 1}, checkpoint_format="orbax", tensorboard=False)
    return fit(model, ClassificationTask(),
               lambda e: dataset_batches(train, 32, seed=(0, e), drop_last=True), None,
               config=cfg, run=run, resume=resume, log=log)


def test_orbax_run_resumes_after_kill_9(tmp_path, xla_disk_cache):
    # the killed child, the resume and the full run compile the same training step:
    # the last two read it from the disk cache the child wrote (`xla_disk_cache`)
    killed = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", _RUN, killed, __file__],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ck = os.path.join(killed, "checkpoints")
    assert is_orbax(ck) and ckpt.saved_epochs(ck) == [1, 2]
    resumed = run_fit(killed, resume=True)
    full = run_fit(str(tmp_path / "full"), resume=False)
    assert len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history):
        assert {k: v for k, v in a.items() if "time" not in k} == \
               {k: v for k, v in b.items() if "time" not in k}
    for a, b in zip(_arrays(full.model), _arrays(resumed.model)):
        np.testing.assert_array_equal(a, b)
