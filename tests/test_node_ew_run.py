"""A NODE-EW run of `experiments.classify` (``--model node-ew``, the paper's two
phases) is read back by `jaxode.train.load_run` as the model the trainer evaluated.

The truth is the run itself: the evaluation `fit` logged after the adjoint epoch (one
dopri5 solve per batch of 12) and the final evaluation of classify, and the model
applied to images preprocessed by hand (uint8 NHWC -> float NCHW / 255, upsampled
inside the model).  Tiny sizes: 8 channels, 64 digits, one Euler and one adjoint
epoch of one batch, joint solves only (each solve mode costs a compilation).
"""

import os

import equinox as eqx
import numpy as np
import pytest

from experiments import classify
from experiments.configs import get_config
from jaxode.data import load_dataset
from jaxode.models.node_ew import NODEEWClassifier
from jaxode.train import load_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = get_config("smoke-node-ew-digits").replace(
        name="tiny", runs_dir=str(runs), channels=8, train_limit=64, test_limit=12,
        batch_size=32, eval_batch_size=12, euler_steps=2, max_train_batches=1, tol=1e-2,
        tol_sweep=(), fig_examples=0, per_sample_eval=False)
    summary = classify.run(cfg, progress=False, log=lambda *a: None)
    test = load_dataset("digits", "test").subset(slice(0, 12))
    return os.path.join(str(runs), "tiny"), summary, test


def test_load_run_predicts_what_the_node_ew_run_evaluated(tiny_run):
    path, summary, test = tiny_run
    assert [r["phase"] for r in summary["history"]] == ["euler", "adjoint"]
    run = load_run(path)
    assert isinstance(run.model, NODEEWClassifier) and run.model.upsample == 3
    assert run.model.ode.block.config.solver == "dopri5"  # the last phase: adjoint
    # theta_1 was trained and saved: g's output weights left their zero initialisation
    assert float(np.abs(np.asarray(run.model.ode.g.v)).max()) > 0
    logits = run.predict(test.images, batch_size=12, batch_mode="joint")
    assert logits.shape == (12, 10)
    acc = float(np.mean(np.argmax(logits, -1) == test.labels))
    assert acc == pytest.approx(summary["history"][-1]["eval_acc"], abs=1e-6)
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # the same model on images preprocessed by hand
    x = np.transpose(test.images, (0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)
    by_hand, _ = eqx.filter_jit(lambda m, x: m(x, inference=True))(run.model, x)
    np.testing.assert_allclose(logits, np.asarray(by_hand), rtol=1e-5, atol=1e-5)
