"""Memory of the three gradient modes as the integration gets longer, read from XLA's
compiled-program memory analysis (temp_size_in_bytes: scratch memory of the gradient
program, independent of the machine's other load).

Setup: Euler with a fixed dt = 0.1, so the number of steps grows with t1, and
max_steps = 10 t1 + 1 (the step budget the program is compiled for).  The state is
large (4096 floats = 16 KiB) and the parameters tiny, so stored states dominate.

What is claimed, and what is not:
- backsolve (continuous adjoint, Chen et al. 2018 Sec. 2): O(1) memory; temp size is
  the same for t1 = 1 ... 16 (within 10%).
- checkpoint (diffrax.RecursiveCheckpointAdjoint, default checkpoints =
  O(sqrt(max_steps))): grows with t1.
- direct (diffrax.DirectAdjoint): Diffrax's "direct" mode is itself a nested,
  checkpointed bounded loop (base 16), so its memory grows in steps of
  log16(max_steps), not linearly; it is already above backsolve at t1 = 1 and grows
  from t1 = 1 to 16.  A plain backprop that stores every step would grow linearly.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from benchmarks.common import compile_with_memory
from jaxode.ode import ODEBlock, SolveConfig

DT = 0.1
STATE = 4096


class Decay(eqx.Module):
    """f(t, z) = tanh(a z): a one-parameter field on a large state."""

    a: jax.Array

    def __call__(self, t, z):
        return jnp.tanh(self.a * z)


def _temp_bytes(adjoint, t1):
    cfg = SolveConfig(solver="euler", dt=DT, adjoint=adjoint, max_steps=int(round(t1 / DT)) + 1)
    block = ODEBlock(Decay(jnp.asarray(-0.5)), 0.0, float(t1), cfg)
    z0 = jnp.ones((STATE,))

    def grad(b, z):
        return eqx.filter_grad(lambda b_, z_: jnp.sum(b_(z_)[0] ** 2))(b, z)

    _, memory = compile_with_memory(grad, block, z0)
    if memory is None:
        pytest.skip("this backend gives no memory analysis")
    return memory["temp"]


@pytest.fixture(scope="module")
def temps():
    return {
        "backsolve": {t1: _temp_bytes("backsolve", t1) for t1 in (1, 2, 4, 8, 16)},
        "checkpoint": {t1: _temp_bytes("checkpoint", t1) for t1 in (1, 16)},
        "direct": {t1: _temp_bytes("direct", t1) for t1 in (1, 16)},
    }


def test_backsolve_memory_is_flat(temps):
    bs = temps["backsolve"]
    assert min(bs.values()) > 0
    assert max(bs.values()) <= 1.1 * min(bs.values()), bs


def test_checkpoint_and_direct_grow_above_backsolve(temps):
    bs, ck, di = temps["backsolve"], temps["checkpoint"], temps["direct"]
    state_bytes = 4 * STATE
    # 11 -> 161 steps: at least a few more stored states (sqrt growth of checkpoints).
    assert ck[16] >= ck[1] + 4 * state_bytes, ck
    assert ck[16] > 1.5 * bs[16], (ck, bs)
    assert di[16] > di[1] and di[16] > 2 * bs[16], (di, bs)
