"""`python -m benchmarks.xla_cpu_options` in its smoke form (the field VJP program only,
batch 2, 2 evaluations, one round): every variant and torch are timed and written, the
variants' programs are the same computation (equal outputs within float32 round-off), and
bad arguments are refused."""

import json

import numpy as np
import pytest

from benchmarks import xla_cpu_options


def test_vjp_smoke_writes_every_variant(tmp_path):
    pytest.importorskip("torch")
    res = xla_cpu_options.run(xla_cpu_options.parse_args(
        ["--programs", "vjp", "--batch", "2", "--iters", "2", "--repeats", "1",
         "--variants", "default,fast", "--torch-threads", "1", "--out", str(tmp_path)]))
    assert set(res["rows"]) == {"vjp/default", "vjp/fast", "vjp/torch"}
    assert all(r["wall_ms"] > 0 and r["cpu_ms"] >= 0 for r in res["rows"].values())
    (js,) = tmp_path.glob("xla-cpu-options-*-b2.json")
    assert json.loads(js.read_text())["config"]["compiler_options"]["default"] is None
    assert "| vjp/fast |" in js.with_suffix(".md").read_text()


def test_variants_compile_the_same_computation():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6, 6, 64)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)) / 24, jnp.float32)

    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(2.0 * y + 1.0).sum(axis=(1, 2))

    lowered = jax.jit(f).lower(x, w)
    outs = {v: np.asarray(lowered.compile(o)(x, w)) for v, o in xla_cpu_options.VARIANTS.items() if v != "dp"}
    for v, out in outs.items():
        np.testing.assert_allclose(out, outs["default"], rtol=1e-5, atol=1e-4, err_msg=v)


@pytest.mark.parametrize("argv", [["--variants", "dp"], ["--variants", "nope"], ["--batch", "3", "--host-devices", "2"]])
def test_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        xla_cpu_options.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip()
