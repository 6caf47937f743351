"""jaxode.backend: the opt-in XLA:CPU options (JAXODE_CPU_FAST).

- composing XLA_FLAGS keeps every flag the user set and never overrides an option the
  user named, and a bad JAXODE_CPU_FAST value is refused with what to do;
- asking too late (backend already created) warns and leaves XLA_FLAGS alone;
- in a fresh process with JAXODE_CPU_FAST=1 the options reach XLA (the compiled field
  VJP (16 channels, batch 8, 8x8; smaller convolutions get no YNN fusion at all) holds more
  YNN fusions than here, with XLA's defaults) and the Chen field's value equals torch's
  (tests/test_torch_ports.py's tolerances) and its VJP is as close to torch's as with
  XLA's defaults.
"""

import json
import os
import subprocess
import sys

import pytest

from jaxode import backend

FAST = backend.CPU_FAST_FLAGS[0]


def test_compose_appends_and_keeps_user_flags():
    new, skipped = backend.compose_xla_flags("")
    assert new == FAST and skipped == []
    user = "--xla_force_host_platform_device_count=2"
    new, skipped = backend.compose_xla_flags(user)
    assert new == f"{user} {FAST}" and skipped == []


def test_compose_never_overrides_the_users_option():
    user = "--xla_cpu_experimental_ynn_fusion_type=-reduce --xla_cpu_enable_fast_math=false"
    new, skipped = backend.compose_xla_flags(user)
    assert new == user and skipped == [FAST]


def test_use_cpu_fast_warns_on_conflict(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-reduce")
    with pytest.warns(UserWarning, match="keeping the user's value"):
        setting = backend.use_cpu_fast()
    assert setting.startswith("default")
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def test_use_cpu_fast_too_late_changes_nothing(monkeypatch):
    import jax

    jax.devices()  # the backend exists from here on
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        setting = backend.use_cpu_fast()
    assert "too late" in setting and "XLA_FLAGS" not in os.environ
    assert backend.use_cpu_fast(False) == "default"


@pytest.mark.parametrize("value,want", [("1", True), ("on", True), ("0", False), ("", False)])
def test_env_values(value, want):
    assert backend.env_requests_cpu_fast({backend.ENV_VAR: value}) is want


def test_env_bad_value_is_refused():
    with pytest.raises(ValueError, match="use 1 to add"):
        backend.env_requests_cpu_fast({backend.ENV_VAR: "fastest"})


_CHILD = r"""
import json, sys
import numpy as np
import jaxode  # applies JAXODE_CPU_FAST before any computation
import os
from benchmarks.profile_field import field_vjp_hlo
import equinox as eqx, jax, jax.numpy as jnp
from jaxode.fields.conv_odefunc import ConvODEFunc

field = ConvODEFunc(16, key=jax.random.PRNGKey(1))
rng = np.random.default_rng(0)
z, g = (rng.standard_normal((8, 16, 8, 8)).astype(np.float32) for _ in range(2))
params, static = eqx.partition(field, eqx.is_array)
f = lambda p, z_: jax.vmap(eqx.combine(p, static), in_axes=(None, 0))(0.3, z_)
def value_and_vjp(p, z_, g_):
    out, vjp = jax.vjp(f, p, z_)
    return (out,) + vjp(g_)
out, dp, dz = jax.jit(value_and_vjp)(params, jnp.asarray(z), jnp.asarray(g))
hlo = field_vjp_hlo(field, jnp.asarray(z), jnp.asarray(g), jnp.float32(0.3), 2)
grads = {jax.tree_util.keystr(path).lstrip("."): np.asarray(v).tolist()
         for path, v in jax.tree_util.tree_leaves_with_path(dp)}
json.dump({"xla_flags": os.environ.get("XLA_FLAGS", ""), "ynn": hlo.count('"__ynn_fusion"'),
           "out": np.asarray(out).tolist(), "dz": np.asarray(dz).tolist(), "grads": grads}, sys.stdout)
"""


def test_fast_flags_reach_xla_and_keep_the_field_equal_to_torch():
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.profile_field import field_vjp_hlo
    from benchmarks.torch_ref import TorchConvODEFunc
    from jaxode.fields.conv_odefunc import ConvODEFunc

    if backend.flag_name(FAST) in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("XLA_FLAGS of this process already sets the option")
    env = dict(os.environ, JAXODE_CPU_FAST="1")
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _CHILD], check=False, env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = json.loads(proc.stdout)
    assert child["xla_flags"] == FAST

    field = ConvODEFunc(16, key=jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    z, g = (rng.standard_normal((8, 16, 8, 8)).astype(np.float32) for _ in range(2))
    here = field_vjp_hlo(field, jnp.asarray(z), jnp.asarray(g), jnp.float32(0.3), 2).count('"__ynn_fusion"')
    assert child["ynn"] > here, (child["ynn"], here)  # the option changed the compiled program

    # the field's value and VJP (wrt z and every parameter) against torch autograd
    tf = TorchConvODEFunc.from_jax(field)
    zt = torch.from_numpy(z).requires_grad_(True)
    out = tf(torch.tensor(0.3), zt)
    names = [n for n, _ in tf.named_parameters()]
    grads = torch.autograd.grad(out, [zt] + list(tf.parameters()), torch.from_numpy(g))
    # the same jitted value and VJP here, with XLA's default options
    import equinox as eqx

    params, static = eqx.partition(field, eqx.is_array)
    f = lambda p, z_: jax.vmap(eqx.combine(p, static), in_axes=(None, 0))(0.3, z_)

    def value_and_vjp(p, z_, g_):
        out, vjp = jax.vjp(f, p, z_)
        return (out,) + vjp(g_)

    out_d, dp_d, dz_d = jax.jit(value_and_vjp)(params, jnp.asarray(z), jnp.asarray(g))
    default = {"f(t, z)": out_d, "dz": dz_d} | {
        jax.tree_util.keystr(path).lstrip("."): v for path, v in jax.tree_util.tree_leaves_with_path(dp_d)}

    def close(got, want, name):
        """As close to torch as XLA's defaults are: the largest error at most twice the
        default options' (+ 1e-6); both are float32 round-off, and conv biases before a
        GroupNorm have a gradient of exactly 0 that both libraries only approach."""
        want = want.detach().numpy()
        got = np.asarray(got).reshape(want.shape)
        err_fast = float(np.abs(got - want).max())
        err_default = float(np.abs(np.asarray(default[name]).reshape(want.shape) - want).max())
        assert err_fast <= 2 * err_default + 1e-6, (name, err_fast, err_default)

    np.testing.assert_allclose(child["out"], out.detach().numpy(), rtol=1e-4, atol=1e-5)  # test_torch_ports'
    close(child["out"], out, "f(t, z)")
    close(child["dz"], grads[0], "dz")
    # every parameter, by name (the torch twin names them as the Equinox fields)
    want = dict(zip(names, grads[1:]))
    assert sorted(child["grads"]) == sorted(want)
    for name, got in child["grads"].items():
        close(got, want[name], name)
