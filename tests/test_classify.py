"""The classification pipeline: CLI and configs, Fig. 1, the tolerance sweep (no
recompilation), and one tiny end-to-end run writing the run folder."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import classify
from experiments.configs import get_config, names
from jaxode.data import load_dataset
from jaxode.train import ClassificationTask, count_params


def test_help_explains_and_lists_configs(capsys):
    with pytest.raises(SystemExit) as e:
        classify.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--resume", "--schedule", "--tol", "--config", "smoke-digits",
                 "carrara-cifar10-odeonly", "chen-mnist-odenet"):
        assert word in out


def test_named_configs_and_overrides():
    for n in ("carrara-cifar10-resnet", "carrara-cifar10-resode", "carrara-cifar10-odeonly",
              "chen-mnist-odenet", "chen-mnist-resnet", "smoke-digits"):
        assert n in names()
    args = classify.build_parser().parse_args(
        ["--config", "chen-mnist-odenet", "--epochs", "3", "--lr", "0.05",
         "--milestones", "1,2", "--tol-sweep", "1e-2,1e-3", "--schedule", "euler:1,adjoint:2",
         "--no-per-sample"])
    cfg = classify.config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.tol_sweep) == (3, 0.05, (1, 2), (1e-2, 1e-3))
    assert cfg.phases == "euler:1,adjoint:2" and cfg.per_sample_eval is False
    assert cfg.model == "chen-odenet" and cfg.dataset == "mnist"  # untouched fields kept
    # issue 19: the MNIST ODE-Net configs default to the comparison's best setting, the
    # comparison's own recipe stays unregularised, and `--reg ""` switches it off
    assert cfg.regularizers == get_config("smoke-mnist-odenet").regularizers == (
        ("kinetic", 3e-4),)
    assert get_config("reg-mnist-odenet").regularizers == ()
    off = classify.build_parser().parse_args(["--config", "chen-mnist-odenet", "--reg", ""])
    assert classify.config_from_args(off).regularizers == ()
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        get_config("nope")


@pytest.mark.parametrize("name, expected", [("carrara-cifar10-resode", 2_023_562),
                                            ("chen-mnist-resnet", 576_778)])
def test_configs_build_the_papers_models(name, expected):
    import equinox as eqx

    cfg = get_config(name)
    in_ch = 3 if cfg.dataset == "cifar10" else 1
    skeleton = eqx.filter_eval_shape(cfg.build_model, 10, in_ch, jax.random.PRNGKey(0))
    assert count_params(skeleton) == expected


def test_steps_figure_picks_extremes(tmp_path):
    test = load_dataset("digits", "test").subset(slice(0, 12))
    steps = np.array([5, 9, 3, 7, 7, 4, 12, 2, 6, 8, 5, 10])
    from jaxode.train.steps import steps_figure

    idx = steps_figure(test, steps, str(tmp_path / "fig.png"), k=3)
    assert idx[:3] == [6, 11, 1] and idx[3:] == [7, 2, 5]
    assert (tmp_path / "fig.png").stat().st_size > 1000


_TRACES = []


@dataclasses.dataclass(frozen=True)
class _CountingTask(ClassificationTask):
    def eval_metrics(self, model, batch, key):
        _TRACES.append(1)  # runs once per trace (= compilation)
        return super().eval_metrics(model, batch, key)


def test_tolerance_sweep_reuses_one_compilation():
    from jaxode.models import odeonly_net
    from jaxode.train import dataset_batches, with_batch_mode
    from jaxode.train.sweeps import tolerance_sweep

    test = load_dataset("digits", "test").subset(slice(0, 8))
    model = odeonly_net(10, in_channels=1, channels=8, stem_kernel=3, stem_stride=2,
                        stem_padding=1, key=jax.random.PRNGKey(0))
    model = with_batch_mode(model, "per_sample")
    _TRACES.clear()
    rows = tolerance_sweep(model, _CountingTask(),
                                    lambda: dataset_batches(test, 8, shuffle=False),
                                    (1e-1, 1e-3, 1e-5), batch_size=8)
    assert len(_TRACES) == 1
    nfe = [r["nfe_mean"] for r in rows]
    assert nfe[0] < nfe[1] < nfe[2]  # tighter tolerance, more evaluations


def test_end_to_end_tiny_run(tmp_path, capsys):
    cfg = get_config("smoke-digits").replace(
        name="tiny", runs_dir=str(tmp_path), channels=8, epochs=1, train_limit=96,
        test_limit=40, eval_batch_size=20, tol=1e-2, tol_sweep=(1e-1, 1e-2), fig_examples=2)
    summary = classify.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "parameters: " in out and "run folder: " in out
    folder = tmp_path / "tiny"
    for f in ("config.json", "metrics.csv", "summary.json", "fig1_steps.png", "tol_sweep.png",
              "loss.png"):
        assert (folder / f).exists(), f
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["params"] == summary["params"] == count_params(
        cfg.build_model(10, 1, jax.random.PRNGKey(0)))
    steps = np.load(folder / "test_steps_per_image.npy")
    assert steps.shape == (40,)
    assert saved["steps_mean"] == pytest.approx(float(steps.mean()))
    assert saved["steps_std"] == pytest.approx(float(steps.std()))
    assert 0.0 <= saved["test_error"] <= 1.0
    assert [r["tol"] for r in saved["tol_sweep"]] == [0.1, 0.01]


def _tree(root) -> dict:
    """Every file under `root` (relative path -> bytes)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_second_run_of_the_same_command_keeps_the_first(tmp_path, capsys):
    """The README situation, for real and small: the same command twice.  The second
    run trains into NAME-2 and says so; every file of the first run (config, metrics,
    summary, checkpoints) is unchanged byte for byte."""
    argv = ["--config", "smoke-digits", "--runs-dir", str(tmp_path), "--no-progress",
            "--channels", "4", "--epochs", "1", "--train-limit", "64", "--test-limit", "16",
            "--batch-size", "32", "--eval-batch-size", "16", "--max-train-batches", "1",
            "--solver", "euler", "--euler-steps", "1", "--no-per-sample", "--tol-sweep", ""]
    assert classify.main(argv) == 0
    first = tmp_path / "smoke-digits"
    before = _tree(first)
    assert {"config.json", "metrics.csv", "summary.json"} <= set(before)
    assert any(p.startswith("checkpoints") for p in before)
    capsys.readouterr()
    assert classify.main(argv) == 0
    out = capsys.readouterr().out
    assert f"this run goes to {tmp_path / 'smoke-digits-2'}" in out
    assert _tree(first) == before
    second = json.loads((tmp_path / "smoke-digits-2" / "summary.json").read_text())
    assert second["config"] == "smoke-digits-2" and second["epochs"] == 1
    assert any((tmp_path / "smoke-digits-2" / "checkpoints").iterdir())


@pytest.mark.parametrize("stored_facts", [True, False])
def test_load_run_rebuilds_a_classify_run_and_predicts(tmp_path, stored_facts):
    """`jaxode.train.load_run` on a classify run folder: the checkpoint's weights (not the
    template's), the run's preprocessing, logits equal to the model called directly.  Runs
    written before issue 17 have no ``"data"`` entry: the facts come from the dataset."""
    import equinox as eqx

    from jaxode.data.augment import channel_stats, to_model_input
    from jaxode.train import load_run, save_checkpoint

    cfg = get_config("smoke-digits").replace(channels=4, solver="euler", euler_steps=2,
                                             normalize=True, train_limit=200)
    train, test = classify.load_data(cfg)
    trained = cfg.build_model(10, 1, jax.random.PRNGKey(7))  # load_run uses key 0
    mean, std = (tuple(float(v) for v in s) for s in channel_stats(train.images))
    config = {"classify": cfg.to_dict()}
    if stored_facts:
        config["data"] = {"num_classes": 10, "in_channels": 1, "mean": mean, "std": std}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_checkpoint(str(tmp_path / "checkpoints"), 1,
                    {"ema": None, "model": trained, "opt_state": None}, {"epoch": 1})
    run = load_run(str(tmp_path))
    assert run.name == "carrara-odeonly" and run.epoch == 1
    np.testing.assert_allclose(run.norm[0], mean, rtol=1e-6)
    images = test.images[:5]
    m, sd = (jax.numpy.asarray(v, jax.numpy.float32)[None, :, None, None] for v in (mean, std))
    x = (to_model_input(images) - m) / sd
    expected, _ = eqx.filter_jit(lambda m, x: m(x, inference=True))(trained, x)
    np.testing.assert_allclose(run.predict(images), expected, rtol=1e-5, atol=1e-5)
