"""`jaxode.train.load_run`: a run folder read back predicts what the trainer measured.

One tiny `experiments.classify` run (8-channel ODE-only net on 96 digits, one epoch,
two Euler steps, EMA on so that the evaluation weights differ from the trained ones)
is the truth: its logged evaluation (joint solves, EMA weights) and its final
per-image evaluation must be reproduced by ``load_run(dir).predict`` from raw uint8
images, before and after `export_final` keeps only the final weights.
"""

import json
import os
import shutil

import numpy as np
import optax
import pytest

from experiments import classify
from experiments.configs import get_config
from jaxode.data import load_dataset
from jaxode.train import load_run
from jaxode.train.load import FINAL_WEIGHTS, export_final

EVAL_BATCH = 20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = get_config("smoke-digits").replace(
        name="tiny", runs_dir=str(runs), channels=8, epochs=1, train_limit=96, test_limit=40,
        batch_size=32, eval_batch_size=EVAL_BATCH, solver="euler", euler_steps=2,
        adjoint="direct", ema_decay=0.5, tol_sweep=(), fig_examples=0)
    summary = classify.run(cfg, progress=False, log=lambda *a: None)
    test = load_dataset("digits", "test").subset(slice(0, 40))
    return os.path.join(str(runs), "tiny"), summary, test


def _xent(logits, labels):
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def test_predict_matches_the_trainers_evaluation(tiny_run):
    path, summary, test = tiny_run
    run = load_run(path)
    assert run.source == "checkpoint" and run.epoch == 1 and run.num_classes == 10
    assert run.config["classify"]["ema_decay"] == 0.5
    # the final evaluation of classify: one solve per image, EMA weights
    logits, stats = run.predict(test.images, batch_size=EVAL_BATCH, return_stats=True)
    assert logits.shape == (40, 10) and logits.dtype == np.float32
    acc = float(np.mean(np.argmax(logits, -1) == test.labels))
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)
    np.testing.assert_array_equal(stats["steps"], np.load(f"{path}/test_steps_per_image.npy"))
    # the per-epoch evaluation of fit (EMA weights): its mean test loss, which the
    # fixed-step solves make the same for per-image and joint solves
    row = summary["history"][-1]
    assert float(np.mean(_xent(logits, test.labels))) == pytest.approx(row["eval_loss"], rel=1e-5)
    joint = run.predict(test.images, batch_size=EVAL_BATCH, batch_mode="joint")
    assert float(np.mean(_xent(joint, test.labels))) == pytest.approx(row["eval_loss"], rel=1e-5)
    assert float(np.mean(np.argmax(joint, -1) == test.labels)) == pytest.approx(row["eval_acc"])


def test_predict_refuses_preprocessed_or_misshaped_images(tiny_run):
    path, _, test = tiny_run
    run = load_run(path)
    with pytest.raises(TypeError, match="raw uint8"):
        run.predict(test.images.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"\(N, H, W, 1\)"):
        run.predict(np.repeat(test.images, 3, axis=-1))


def test_export_final_keeps_predictions_and_drops_checkpoints(tiny_run, tmp_path):
    path, _, test = tiny_run
    copy = str(tmp_path / "tiny")
    shutil.copytree(path, copy)
    before = load_run(copy).predict(test.images, batch_size=EVAL_BATCH)
    ckpt_bytes = os.path.getsize(f"{copy}/checkpoints/ckpt-0001.eqx")
    export_final(copy, remove_checkpoints=True)
    assert not os.path.exists(f"{copy}/checkpoints")
    # weights only: no optimiser state (momentum) and no second (trained) weight copy
    assert os.path.getsize(f"{copy}/{FINAL_WEIGHTS}") < ckpt_bytes / 2
    run = load_run(copy)
    assert run.source == "final" and run.epoch == 1
    np.testing.assert_array_equal(run.predict(test.images, batch_size=EVAL_BATCH), before)
    with pytest.raises(ValueError, match="nothing to export"):
        export_final(copy)


def test_load_run_explains_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"classify": {"model": "chen-odenet"},
                                                      "train": {"epochs": 1}}))
    with pytest.raises(FileNotFoundError, match="no weights yet"):
        load_run(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"segment": {}}))
    with pytest.raises(ValueError, match="no 'classify' or 'model' entry"):
        load_run(str(tmp_path))


def test_evaluate_command_reports_the_runs_numbers(tiny_run, capsys):
    from experiments import evaluate

    path, summary, _ = tiny_run
    assert evaluate.main([path, "--json", "--batch-size", str(EVAL_BATCH)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["images"], r["epoch"], r["weights"]) == (40, 1, "checkpoint")
    assert r["test_error"] == pytest.approx(summary["test_error"], abs=1e-6)
    assert r["steps_mean"] == pytest.approx(summary["steps_mean"])
    assert r["nfe_mean"] == pytest.approx(summary["nfe_mean"])
    assert r["nfe_std"] == pytest.approx(summary["nfe_std"])
    assert evaluate.main([path, "--batch-size", str(EVAL_BATCH), "--limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "test error:" in out and "on 10 images" in out and "NFE per image:" in out


def test_evaluate_command_refuses_bad_input(tmp_path, capsys):
    from experiments import evaluate

    for argv, words in (([str(tmp_path / "nope")], "is not a folder"),
                        ([str(tmp_path)], "config.json"),
                        ([str(tmp_path), "--limit", "0"], "--limit"),
                        ([str(tmp_path), "--tol", "1e-9"], "--tol")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv)
        assert e.value.code == 2
        assert words in capsys.readouterr().err


def test_steps_figures_from_a_run_folder(tiny_run, tmp_path, capsys):
    from experiments import steps_figures

    path, summary, _ = tiny_run
    out = tmp_path / "figs"
    assert steps_figures.main([path, "--out", str(out), "--tols", "1e-1,1e-2", "--examples",
                               "2", "--batch-size", str(EVAL_BATCH)]) == 0
    for name in ("steps_hist.png", "fig1_steps.png", "tol_sweep.png"):
        assert (out / name).stat().st_size > 1000
    r = json.loads((out / "figures.json").read_text())
    steps = np.load(f"{path}/test_steps_per_image.npy")
    values, counts = np.unique(steps, return_counts=True)
    assert r["steps_counts"] == {str(int(v)): int(c) for v, c in zip(values, counts)}
    assert r["test_error"] == pytest.approx(summary["test_error"], abs=1e-6)
    assert (r["epoch"], r["weights"], len(r["tol_sweep"])) == (1, "checkpoint", 2)
    assert "epoch 1 of 1 (checkpoint weights)" in capsys.readouterr().out


# ---------------------------------------------- a run folder written before issue 17

# config.json exactly as the long MNIST run (results/mnist-chen-odenet, started with
# ``--config chen-mnist-odenet --runs-dir results --name mnist-chen-odenet --epochs 8
# --milestones 4,6``) wrote it before the classify refactor: it must stay resumable.
SAVED_CONFIG = os.path.join(os.path.dirname(__file__), "data", "mnist-chen-odenet.config.json")
# `--reg ""`: the config's default regulariser came later (issue 19); train_mnist.sh
# passes it for this run.
SAVED_ARGV = ["--config", "chen-mnist-odenet", "--runs-dir", "results", "--name",
              "mnist-chen-odenet", "--epochs", "8", "--milestones", "4,6", "--no-progress",
              "--reg", "", "--resume"]


@pytest.fixture
def saved_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "results" / "mnist-chen-odenet"
    folder.mkdir(parents=True)
    shutil.copy(SAVED_CONFIG, folder / "config.json")
    return folder


def test_resume_accepts_a_config_written_before_the_refactor(saved_run, capsys):
    from jaxode.cli import settings_differences

    parser = classify.build_parser()
    args = parser.parse_args(SAVED_ARGV)
    classify.check_args(parser, args)
    cfg = classify.config_from_args(args)
    classify.check_resume(parser, cfg)  # exits 2 listing any difference
    saved = json.loads((saved_run / "config.json").read_text())
    now = json.loads(json.dumps(cfg.to_dict()))
    added = {"g_lr_scale": 1.0, "taylor_order": 2}  # settings added to ClassifyConfig since: their defaults
    assert settings_differences(saved["classify"], now) == [
        f"{k}: None -> {v!r}" for k, v in added.items()]
    assert settings_differences(saved["classify"], now, defaults=added) == []
    tcfg = cfg.train_config().replace(progress=not args.no_progress)  # as classify.run
    # TrainConfig has gained taylor_order since (its default)
    assert tcfg.to_dict() == {**saved["train"], "milestones": (4, 6), "taylor_order": 2}
    changed = parser.parse_args([*SAVED_ARGV, "--lr", "0.05"])  # the check can fail
    with pytest.raises(SystemExit):
        classify.check_resume(parser, classify.config_from_args(changed))
    assert "lr: 0.1 -> 0.05" in capsys.readouterr().err


def test_load_run_reads_a_checkpoint_of_the_saved_config(saved_run):
    import equinox as eqx
    import jax

    from jaxode.train import save_checkpoint
    from jaxode.train.classify_config import ClassifyConfig

    saved = json.loads((saved_run / "config.json").read_text())
    cfg = ClassifyConfig.from_saved(saved["classify"])
    trained = cfg.build_model(10, 1, jax.random.PRNGKey(7))  # load_run's template: seed 0
    save_checkpoint(str(saved_run / "checkpoints"), 1,
                    {"ema": None, "model": trained, "opt_state": None},
                    {"epoch": 1, "config": saved["train"]})
    run = load_run(str(saved_run))
    assert (run.name, run.epoch, run.source) == ("chen-odenet", 1, "checkpoint")
    assert (run.image_shape, run.num_classes, run.norm) == ((28, 28, 1), 10, None)
    got, want = (jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))
                 for m in (run.model, trained))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_run_name_is_a_deprecated_alias_of_name():
    with pytest.warns(FutureWarning, match="--run-name is deprecated"):
        args = classify.build_parser().parse_args(["--run-name", "old"])
    assert args.name == "old"


def test_one_run_type_for_a_model_named_with_its_factory_arguments(tmp_path):
    """A run folder of another kind (``{"model": NAME, "model_kwargs", "task"}``, as the
    quick runs of experiments.transfer write) gives the same `Run`: its predict applies
    the saved normalisation and equals the checkpoint's model called directly."""
    import equinox as eqx
    import jax

    from jaxode.data.augment import to_model_input
    from jaxode.models import make_model
    from jaxode.train import Run, save_checkpoint, with_batch_mode

    kwargs = {"num_classes": 3, "channels": 4}
    mean, std = (0.5,), (0.25,)
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": "chen-odenet", "model_kwargs": kwargs, "task": {"mean": mean, "std": std}}))
    trained = make_model("chen-odenet", key=jax.random.PRNGKey(7), **kwargs)
    save_checkpoint(str(tmp_path / "checkpoints"), 2,
                    {"ema": None, "model": trained, "opt_state": None}, {"epoch": 2})
    run = load_run(str(tmp_path))
    assert type(run) is Run and (run.name, run.epoch, run.norm) == ("chen-odenet", 2, (mean, std))
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    x = (to_model_input(images) - 0.5) / 0.25
    direct, _ = eqx.filter_jit(lambda m, x: m(x, inference=True))(
        with_batch_mode(trained, "per_sample"), x)
    np.testing.assert_allclose(run.predict(images, batch_size=2), direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a classify run"):
        run.test_set()
