"""SegNode and the residual HRNet baseline: parameter counts at the paper's widths
(against a count from the layer list), the Euler-step identity between the two
models, shapes at odd image sizes, and one end-to-end smoke step of the experiment."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.models.segnode import (PAPER_PARAMS, BaselineConfig, HRResidualNet, SegNode,
                                   SegNodeConfig, build_model, count_params, solve_config)
from jaxode.nn.hrnet import resize_bilinear


def _layer_list_count(widths, blocks, modules, time, classes=11, stem=64):
    """Parameters from the layer list (GroupNorm affine = 2C; convs without bias except
    the class heads; time adds one input channel to each 3x3 branch conv)."""
    gn = lambda c: 2 * c  # noqa: E731
    n = len(widths)
    total = 3 * stem * 9 + gn(stem) + stem * stem * 9                       # stem
    total += gn(stem) + stem * widths[0] * 9                                # transition
    total += sum(gn(widths[k - 1]) + widths[k - 1] * widths[k] * 9 for k in range(1, n))
    module = sum(blocks * 2 * (gn(c) + (c + time) * c * 9) for c in widths)  # branches
    for i in range(n):                                                       # fusion
        for j in range(n):
            if j > i:
                module += gn(widths[j]) + widths[j] * widths[i]
            elif j < i:
                module += (i - j - 1) * (gn(widths[j]) + 9 * widths[j] ** 2)
                module += gn(widths[j]) + 9 * widths[j] * widths[i]
    total += modules * module
    total += sum(gn(c) + c * classes + classes for c in widths)              # heads
    return total


def test_param_counts_at_paper_widths():
    key = jax.random.PRNGKey(0)
    seg = eqx.filter_eval_shape(SegNode, SegNodeConfig(), key=key)  # no allocation
    base = eqx.filter_eval_shape(HRResidualNet, BaselineConfig(), key=key)
    n_seg, n_base = count_params(seg), count_params(base)
    print(f"SegNode {n_seg:,} (paper {PAPER_PARAMS['segnode']:,.0f}); "
          f"baseline {n_base:,} (paper {PAPER_PARAMS['baseline']:,.0f})")
    assert n_seg == _layer_list_count((48, 96, 192, 384), 4, 1, time=1)
    assert n_base == _layer_list_count((48, 96, 192, 384), 4, 6, time=0)
    # Differences from the paper (Table 2: SegNode 20.9M, baseline 70.9M), explained in
    # docs/results/segment.md: one HRNetV2 stage-4 module with 4 basic blocks per
    # branch at widths 48..384 has 15.86M parameters (14.10M in the branches, 1.76M in
    # the fusion), so six modules as Sec. 3.1 says give 96.2M, not 70.9M, and SegNode
    # with one module gives 16.9M, not 20.9M.  No integer number of such modules
    # reproduces both paper figures; the paper does not list its layers.  What the
    # paper's counts do imply, and what holds here, is that SegNode is much smaller
    # than the baseline (paper: 68% fewer; here: 82% with six baseline modules).
    assert 15.5e6 < n_seg - _layer_list_count((48, 96, 192, 384), 4, 0, 1) < 16.2e6
    assert 1 - n_seg / n_base > 0.68


@pytest.fixture(scope="module")
def pair():
    """A SegNode with an autonomous one-module field and a one-module baseline sharing
    every weight."""
    cfg = dict(num_classes=3, widths=(4, 4, 4, 4), blocks=1, max_groups=4)
    euler = solve_config(solver="euler", num_steps=1, adjoint="direct")
    seg = SegNode(SegNodeConfig(**cfg, time=False, solve=euler), key=jax.random.PRNGKey(1))
    base = HRResidualNet(BaselineConfig(**cfg, modules=1), key=jax.random.PRNGKey(2))
    base = eqx.tree_at(lambda m: (m.stem, m.transition, m.modules, m.head), base,
                       (seg.stem, seg.transition, seg.ode.field.modules, seg.head))
    return seg, base


def test_one_euler_step_is_one_residual_module(pair):
    # z(1) = z(0) + 1 * f(z(0)) = z0 + R(z0) = M(z0): the ODE with one Euler step of
    # size 1 is exactly the baseline with one residual module (Eq. 1 vs Eq. 2).
    seg, base = pair
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 36, 52))  # odd branch sizes

    @eqx.filter_jit
    def run_seg(m, x):
        return m.batched(x), m.ode.field(0.0, m.initial_state(x[0]))

    (y_seg, stats), dz = run_seg(seg, x)
    y_base, _ = eqx.filter_jit(lambda m, x: m.batched(x))(base, x)
    assert y_seg.shape == (2, 3, 36, 52)
    assert int(stats.steps) == 1
    np.testing.assert_allclose(y_seg, y_base, rtol=1e-4, atol=1e-5)
    # the field is not trivially zero, and the branches have the halved (rounded up) sizes
    assert [d.shape for d in dz] == [(4, 9, 13), (4, 5, 7), (4, 3, 4), (4, 2, 2)]
    assert all(float(jnp.abs(d).max()) > 1e-3 for d in dz)


def test_input_errors(pair):
    seg, base = pair
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        seg(jnp.zeros((4, 8, 8)))
    with pytest.raises(TypeError, match="floating point"):
        base(jnp.zeros((3, 8, 8), jnp.uint8))
    with pytest.raises(ValueError, match="unknown segmentation model"):
        build_model("unet", SegNodeConfig(), key=jax.random.PRNGKey(0))


def test_bilinear_upsampling_matches_jax_image():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 7))
    for hw in [(9, 23)]:
        np.testing.assert_allclose(resize_bilinear(x, hw),
                                   jax.image.resize(x, (2,) + hw, "bilinear"), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JAXODE_SLOW_TESTS"),
                    reason="compiles two training steps (about a minute on a quiet 2-core "
                           "CPU); set JAXODE_SLOW_TESTS=1 to run")
def test_experiment_smoke_end_to_end(tmp_path, monkeypatch):
    """One training step of each model on the synthetic set through the CLI, with tiny
    widths and one fixed Euler step so that it compiles quickly; checks the run folder."""
    import json

    from experiments import segment

    monkeypatch.chdir(tmp_path)
    segment.CONFIGS["test-tiny"] = dict(
        segment.CONFIGS["smoke"], n_train=4, n_eval=2, synthetic_size=(24, 24),
        crop=(16, 16), batch_size=2, eval_batch=2, epochs=1, max_train_batches=1)
    # optax's AdamW mixes a Python float with an int32 step count, which the suite's
    # strict promotion rejects; the CLI runs with JAX's standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        summary = segment.main(["--config", "test-tiny", "--widths", "4", "4", "4", "4",
                                "--solver", "euler", "--num-steps", "1", "--name", "t"])
    run = tmp_path / "runs" / "t"
    saved = json.loads((run / "summary.json").read_text())
    for m in ("segnode", "baseline"):
        assert 0.0 <= saved[m]["val_miou"] <= 1.0
        assert np.isfinite(saved[m]["history"][0]["train_loss"])
        assert os.path.exists(run / f"{m}_test_predictions.png")
    assert os.path.exists(run / "segnode_trajectory.png")
    assert summary["segnode"]["params"] < summary["baseline"]["params"]
