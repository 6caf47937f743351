"""SegNode's trajectory and solve-time trade-off (Khoshsirat & Kambhamettu, Sec. 4.8,
Fig. 3-4): the dense-output trajectory ends at the plain forward pass and starts at the
head applied to z(0); a shorter end time t1 gives z(t1) of the dense output; changing
t1 or the tolerances does not recompile; the analysis CLI writes its files."""

import csv
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.models.segnode import SegNode, SegNodeConfig, solve_config, with_solve

_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name.endswith("backend_compile_duration")
    else None)

# one branch: the properties tested are the solver's, and one branch compiles in a few s
TINY = dict(num_classes=3, widths=(4,), blocks=1, max_groups=4, stem_channels=4)


@pytest.fixture(scope="module")
def model():
    return SegNode(SegNodeConfig(**TINY, solve=solve_config(rtol=1e-5, atol=1e-5)), key=jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def xs():
    return jax.random.normal(jax.random.PRNGKey(1), (2, 3, 20, 24))


@eqx.filter_jit
def _forward(m, x, ts=None):
    return m.batched(x, ts)


def test_trajectory_ends_at_the_plain_forward_pass(model, xs):
    ts = jnp.array([0.0, 0.5, 1.0])
    y_t, stats_t = _forward(model, xs, ts)
    y, stats = _forward(model, xs)
    assert y_t.shape == (2, 3) + y.shape[1:]
    # t = t1 of the dense output is the end of the same solve: the plain forward pass
    np.testing.assert_allclose(y_t[:, -1], y, rtol=1e-5, atol=1e-5)
    assert int(stats_t.nfe) == int(stats.nfe)
    # t = 0 is the head on z(0), computed without any solver
    head0 = jax.vmap(lambda x: model.head(model.initial_state(x), x.shape[1:]))(xs)
    np.testing.assert_allclose(y_t[:, 0], head0, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(y_t[:, 1] - y_t[:, 0]).max()) > 1e-4  # the trajectory moves


def test_shorter_t1_and_tolerances_without_recompiling(model, xs):
    y_half_dense = _forward(model, xs, jnp.array([0.0, 0.5, 1.0]))[0][:, 1]
    _forward(with_solve(model, t1=0.9), xs)  # compile once
    before = len(_COMPILES)
    y_half, stats_half = _forward(with_solve(model, t1=0.5), xs)
    y_loose, stats_loose = _forward(with_solve(model, rtol=1e-1, atol=1e-1), xs)
    y_full, stats_full = _forward(model, xs)
    assert len(_COMPILES) == before, "changing t1 / rtol / atol recompiled the forward pass"
    # z(0.5) by solving to t1 = 0.5 equals the dense output at 0.5 of the solve to 1
    # (up to the dense interpolation's error, which no tolerance controls), and differs
    # from z(1) by far more
    gap = float(jnp.abs(y_half - y_half_dense).max())
    assert gap < 2e-3 and float(jnp.abs(y_full - y_half).max()) > 20 * gap
    assert int(stats_half.nfe) < int(stats_full.nfe)
    assert int(stats_loose.nfe) < int(stats_full.nfe)
    assert float(with_solve(model, t1=0.5).ode.t1) == 0.5 and float(model.ode.t1) == 1.0
    with pytest.raises(ValueError, match="t1 must be a finite number > 0"):
        with_solve(model, t1=0.0)


def _tiny_run(folder, segment):
    """A run folder as training leaves it, with an untrained tiny SegNode checkpoint.
    Its config.json has the layout of runs before the nested ``solve`` settings
    (solver, rtol, atol, num_steps and data_path at the top level): it must still load."""
    from jaxode.ode import trainable
    from jaxode.train.checkpoint import save_checkpoint
    from jaxode.train.rundir import write_json

    args = segment.parse_args(["--widths", "4", "4", "4", "4", "--blocks", "1",
                               "--name", str(folder)])
    cfg = dict(segment.resolve_config(args), n_train=4, n_eval=6, synthetic_size=(24, 24),
               eval_batch=4, widths=(4,), stem_channels=4)  # one branch: compiles fast
    del cfg["solve"]
    old = dict(cfg, solver="dopri5", rtol=1e-5, atol=1e-5, num_steps=None, data_path=None,
               models=["segnode"], table2=False)
    settings = segment.from_saved(old)
    assert settings["solve"] == dict(solver="dopri5", rtol=1e-5, atol=1e-5, num_steps=None)
    _, labels = segment.load_data(settings)
    model = segment.build_model("segnode", segment.model_config("segnode", settings,
                                                                labels.num_classes),
                                key=jax.random.PRNGKey(0))
    assert float(model.ode.config.rtol) == pytest.approx(1e-5)
    opt, _ = segment.optimizer("segnode", settings, 1)
    folder.mkdir(parents=True)
    write_json(str(folder / "config.json"), old)
    save_checkpoint(str(folder / "checkpoints" / "segnode"), 1,
                    (model, opt.init(eqx.filter(model, trainable(model)))), {"history": []})


def test_analysis_cli_writes_its_files(tmp_path, monkeypatch):
    from experiments import segment

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    _tiny_run(run, segment)
    out = segment.main(["--checkpoint", str(run), "--times", "0,0.5,1", "--tols", "0.1,0.01",
                        "--t1s", "0.2,1", "--t1-tol", "1e-4", "--repeats", "2"])
    folder = run / "analysis"
    for f in ("trajectory.csv", "trajectory.png", "trajectory_predictions.png",
              "sweep_tol.csv", "sweep_t1.csv", "sweep.png", "summary.json", "config.json"):
        assert (folder / f).exists(), f
    with open(folder / "sweep_t1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows] == [0.2, 1.0]
    assert int(rows[1]["compiles"]) == 0  # the second end time ran the compiled programs
    assert int(out["tol"][1]["compiles"]) == 0
    assert int(rows[0]["nfe_timed_batch"]) < int(rows[1]["nfe_timed_batch"])
    # the trajectory's end is the plain forward pass
    assert out["trajectory"][-1]["miou"] == pytest.approx(out["plain_forward_miou"], abs=1e-6)
    assert 0.0 <= out["trajectory"][0]["miou"] <= 1.0
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["settings"]["images"] == 6 and saved["settings"]["epoch"] == 1
    assert saved["settings"]["t1_sweep_tol"] == 1e-4
    # a second analysis into the same folder is refused, nothing is overwritten
    with pytest.raises(SystemExit) as info:
        segment.main(["--checkpoint", str(run), "--sweep", "t1"])
    assert info.value.code == 2
    for argv in (["--checkpoint", str(run), "--sweep", "tol,depth", "--out", "x"],
                 ["--checkpoint", str(run), "--epochs", "3", "--out", "x"],
                 ["--tols", "0.1"]):
        with pytest.raises(SystemExit) as info:
            segment.main(argv)
        assert info.value.code == 2
