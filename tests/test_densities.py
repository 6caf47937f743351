"""The generated 2-D densities of the flow experiments (jaxode.data.densities).

Truths used: the definitions of the densities (cells of the checkerboard, ring
radii, mixture centres), and the determinism of JAX PRNG keys.
"""

import jax
import numpy as np
import pytest

from jaxode.data.densities import DENSITIES, sample_density

N = 2000


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_sampler_is_finite_sane_and_reproducible(name):
    key = jax.random.PRNGKey(0)
    x = sample_density(name, key, N)
    assert x.shape == (N, 2) and x.dtype == np.float32
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    # sane scale: spread of O(1), almost all mass inside the plotting box [-4.5, 4.5]^2
    assert 0.3 < x.std(axis=0).min() and x.std(axis=0).max() < 3.5
    assert np.mean(np.all(np.abs(x) < 4.5, axis=1)) > 0.99
    np.testing.assert_array_equal(x, np.asarray(sample_density(name, key, N)))
    assert not np.allclose(x, np.asarray(sample_density(name, jax.random.PRNGKey(1), N)))


def test_samplers_follow_their_definitions():
    key = jax.random.PRNGKey(3)
    cb = np.asarray(sample_density("checkerboard", key, N))
    i, j = np.floor((cb + 4.0) / 2.0).astype(int).T
    assert np.all((i + j) % 2 == 0) and np.all((0 <= i) & (i < 4) & (0 <= j) & (j < 4))
    r = np.linalg.norm(np.asarray(sample_density("rings", key, N)), axis=1)
    assert np.all(np.min(np.abs(r[:, None] - np.array([1.0, 2.0, 3.0])), axis=1) < 0.5)
    g8 = np.asarray(sample_density("eight_gaussians", key, N))
    angle = np.arange(8) * np.pi / 4
    centres = 4 / np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], 1)
    nearest = np.argmin(np.linalg.norm(g8[:, None] - centres, axis=2), axis=1)
    assert np.bincount(nearest, minlength=8).min() > N / 8 * 0.7  # all 8 modes used
    assert (g8 - centres[nearest]).std() == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    with pytest.raises(ValueError, match="unknown density"):
        sample_density("swiss_roll", key, 3)


def test_fresh_batches_draw_new_points_per_iteration_reproducibly():
    """The flow experiment's data: `iters` batches, each new, the same on a re-run."""
    from jaxode.data.densities import FreshBatches

    a, b = list(FreshBatches("moons", 3, 5, seed=2)), list(FreshBatches("moons", 3, 5, seed=2))
    assert len(a) == len(FreshBatches("moons", 3, 5, seed=2)) == 3
    assert all(x["x"].shape == (5, 2) for x in a)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
    assert not np.allclose(a[0]["x"], a[1]["x"])
    assert not np.allclose(a[0]["x"], list(FreshBatches("moons", 1, 5, seed=3))[0]["x"])


def test_iterations_to_reach_matches_a_direct_scan():
    """`iterations_to_reach`: the first iteration whose trailing 20-iteration mean of
    the NLL is at most each level, checked against a plain loop."""
    from jaxode.models.flows import iterations_to_reach

    nll = np.concatenate([np.linspace(4.0, 2.0, 60), np.full(20, 2.0)])
    got = iterations_to_reach(nll, levels=(3.5, 2.95, 1.0))
    for level in (3.5, 2.95):
        want = next(i for i in range(19, len(nll)) if nll[i - 19:i + 1].mean() <= level)
        assert got[str(level)] == want
    assert got["1.0"] is None
    assert iterations_to_reach([3.0, 2.0], levels=(2.6,)) == {"2.6": 1}  # shorter than 20
