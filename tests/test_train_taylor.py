"""TayNODE's ``taylor`` regulariser in the trainer and the command lines (its values:
tests/test_ode_taylor.py).  No compilation: the plumbing only."""

import jax
import jax.numpy as jnp
import pytest

from jaxode.ode import REGULARIZERS, ODEBlock, SolveConfig
from jaxode.train import TrainConfig
from jaxode.train.regularize import Regularization, add_to_loss, for_training


def _field(t, z):
    return -z


def test_trainer_sets_the_order_only_with_taylor():
    block = ODEBlock(_field, 0.0, 1.0, SolveConfig(taylor_order=4), name="b")
    reg = Regularization.from_config(TrainConfig(regularizers={"taylor": 0.5}, taylor_order=3))
    assert reg.names == ("taylor",) and reg.taylor_order == 3
    new = for_training(block, reg, jax.random.PRNGKey(0))
    assert new.config.regularizers == ("taylor",) and new.config.taylor_order == 3
    assert block.config.taylor_order == 4 and block.config.regularizers == ()
    other = for_training(block, Regularization((("kinetic", 1.0),), taylor_order=3),
                         jax.random.PRNGKey(0))
    assert other.config.taylor_order == 4  # a block's own K is kept without taylor
    assert float(add_to_loss(jnp.asarray(1.0), {"taylor": jnp.asarray(4.0)}, reg)) == 3.0
    with pytest.raises(ValueError, match="taylor_order must be an int >= 1"):
        TrainConfig(regularizers={"taylor": 0.5}, taylor_order=0)


def test_command_lines():
    """experiments.classify: --reg taylor=W and --taylor-order K reach the TrainConfig;
    a bad K exits with a usage error; the --reg help lists every regulariser."""
    from experiments import classify

    parser = classify.build_parser()
    args = parser.parse_args(["--config", "smoke-digits", "--reg", "taylor=0.01",
                              "--taylor-order", "3"])
    classify.check_args(parser, args)
    cfg = classify.config_from_args(args)
    assert cfg.regularizers == (("taylor", 0.01),)
    assert cfg.train_config().taylor_order == 3 and cfg.train_config().regularizers == {"taylor": 0.01}
    with pytest.raises(SystemExit):
        classify.check_args(parser, parser.parse_args(["--taylor-order", "0"]))
    help_text = parser.format_help().replace("\n", " ")
    assert all(name in help_text for name in REGULARIZERS)
