"""The trainer's regularisation options: regulariser weights in the loss, logged as
metrics, and STEER's random end times, both acting on training steps only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.data import load_dataset
from jaxode.models import odeonly_net
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.train import ClassificationTask, TrainConfig, dataset_batches, fit
from jaxode.train.regularize import Regularization, add_to_loss, for_training

KEY = jax.random.PRNGKey(0)


def _field(t, z):
    return -z


def test_bad_config():
    with pytest.raises(ValueError, match="unknown regularizer"):
        TrainConfig(regularizers={"kinetic": 0.1, "energy": 1.0})
    with pytest.raises(ValueError, match="weight"):
        TrainConfig(regularizers={"kinetic": -1.0})
    with pytest.raises(ValueError, match="steer"):
        TrainConfig(steer=0.0)


def test_steer_and_probe_keys_act_on_a_copy():
    block = ODEBlock(_field, 0.0, 1.0, SolveConfig(), name="b")
    reg = Regularization((("jacobian", 1.0),), steer=0.25)
    ends = []
    for i in range(20):
        new = for_training(block, reg, jax.random.PRNGKey(i))
        assert new.config.regularizers == ("jacobian",) and new.probe_key is not None
        ends.append(float(new.t1))
    assert 0.75 <= min(ends) < max(ends) <= 1.25 and len(set(ends)) == 20
    assert float(block.t1) == 1.0 and block.config.regularizers == ()
    with pytest.raises(Exception, match="smaller than the length"):
        for_training(block, Regularization(steer=1.5), KEY).t1.block_until_ready()
    assert float(add_to_loss(jnp.asarray(1.0), {"jacobian": jnp.asarray(2.0)}, reg)) == 3.0
    with pytest.raises(ValueError, match="do not report it"):
        add_to_loss(jnp.asarray(1.0), {"loss": 1.0}, reg)


def test_trainer_smoke_every_regulariser_and_steer():
    """One step on 32 digits with all three regularisers (checkpoint adjoint: the one
    that differentiates local_error) and STEER; the values are logged."""
    train = load_dataset("digits", "train").subset(slice(0, 32))
    model = odeonly_net(10, in_channels=1, channels=8, stem_kernel=3, stem_stride=2,
                        stem_padding=1, dropout=0.0, key=KEY,
                        solve=SolveConfig(rtol=1e-2, atol=1e-2, adjoint="checkpoint"))
    weights = {"kinetic": 0.01, "jacobian": 0.01, "local_error": 1.0}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False, regularizers=weights,
                      steer=0.2, data_parallel=False)
    res = fit(model, ClassificationTask(),
              lambda e: dataset_batches(train, 32, seed=(0, e), drop_last=True), None,
              config=cfg, log=lambda s: None)
    row = res.history[0]
    for name in weights:
        assert np.isfinite(row[f"train_{name}"]) and row[f"train_{name}"] > 0
    # the trained model integrates as configured: no regulariser, no random end time
    assert res.model.ode.config.regularizers == () and float(res.model.ode.t1) == 1.0
    assert res.model.ode.probe_key is None
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(res.model.head), jax.tree_util.tree_leaves(model.head))]
    assert any(changed)
