"""A NODE-EW run of `experiments.classify` (``--model node-ew``, the paper's two
phases) is read back by `jaxode.train.load_run` as the model the trainer evaluated.

The truth is the run itself: classify's final evaluation (one dopri5 solve per test
image, the accuracy and steps it saved) and the model applied by hand to the images
preprocessed by hand (uint8 NHWC -> float NCHW / 255, upsampled inside the model).
Tiny sizes: 8 channels, 64 digits, one Euler and one adjoint epoch of one batch.
"""

import os

import jax
import numpy as np
import pytest

from experiments import classify
from experiments.configs import get_config
from jaxode.data import load_dataset
from jaxode.models.node_ew import NODEEWClassifier
from jaxode.train import load_run, with_batch_mode


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = get_config("smoke-node-ew-digits").replace(
        name="tiny", runs_dir=str(runs), channels=8, train_limit=64, test_limit=12,
        batch_size=32, eval_batch_size=12, euler_steps=2, max_train_batches=1, tol=1e-2,
        tol_sweep=(), fig_examples=0)
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
    logits, stats = run.predict(test.images, batch_size=12, return_stats=True)
    assert logits.shape == (12, 10)
    acc = float(np.mean(np.argmax(logits, -1) == test.labels))
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)
    np.testing.assert_array_equal(stats["steps"], np.load(f"{path}/test_steps_per_image.npy"))
    # the same model on images preprocessed by hand
    x = np.transpose(test.images, (0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)
    by_hand, _ = with_batch_mode(run.model, "per_sample")(jax.numpy.asarray(x), inference=True)
    np.testing.assert_allclose(logits, np.asarray(by_hand), rtol=1e-5, atol=1e-5)
