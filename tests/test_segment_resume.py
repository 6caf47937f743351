"""experiments.segment in checkpointed chunks: a run stopped by --chunk-epochs and
continued with --resume ends with exactly the weights, losses and mIoU of the same run
done in one go; --resume refuses configuration flags and a folder without a run."""

import json
import os

import equinox as eqx
import jax
import numpy as np
import pytest

from experiments import segment


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # one branch, one module, one step per epoch: compiles in seconds
    monkeypatch.setitem(segment.CONFIGS, "test-tiny", dict(
        segment.CONFIGS["smoke"], n_train=4, n_eval=2, synthetic_size=(24, 24), crop=(16, 16),
        batch_size=2, eval_batch=2, epochs=2, max_train_batches=1, widths=(4,), stem_channels=4,
        baseline_modules=1))
    return tmp_path


def _weights(run):
    model, _, _, epoch = segment.load_trained(str(run), "baseline")
    meta = json.loads((run / "checkpoints" / "baseline" / f"ckpt-{epoch:04d}.json").read_text())
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)), meta


def test_chunks_and_resume_equal_one_run(tiny):
    argv = ["--config", "test-tiny", "--models", "baseline"]
    # optax's AdamW mixes a Python float with an int32 step count, which the suite's
    # strict promotion rejects; the CLI runs with JAX's standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        whole = segment.main(argv + ["--name", "whole"])["baseline"]
        part = segment.main(argv + ["--name", "part", "--chunk-epochs", "1"])
        assert part["baseline"] is None
        assert not (tiny / "runs" / "part" / "summary.json").exists()
        resumed = segment.main(["--name", "part", "--resume"])["baseline"]
        # (inside the same promotion mode: another mode would recompile everything)
        w_whole, _ = _weights(tiny / "runs" / "whole")
        w_part, meta = _weights(tiny / "runs" / "part")
        again = segment.main(["--name", "part", "--resume"])["baseline"]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    # the metrics of this configuration before segment trained through jaxode.train.fit
    # (recorded from commit 2de7529, 2-core CPU, 2026-12-06; tests/test_fit_migrations.py)
    assert [r["train_loss"] for r in whole["history"]] == pytest.approx(
        [1.074432134628296, 1.103136420249939], rel=1e-5)
    assert whole["test_miou"] == pytest.approx(0.15880952380952382, abs=1e-6)
    assert whole["val_miou"] == pytest.approx(0.20166512488436633, abs=1e-6)
    for a, b in zip(whole["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert resumed["test_miou"] == pytest.approx(whole["test_miou"], abs=1e-9)
    assert meta["step"] == 2 and len(meta["history"]) == 2
    for a, b in zip(w_whole, w_part):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert json.loads((tiny / "runs" / "part" / "summary.json").read_text())["baseline"][
        "params"] == whole["params"]
    # a finished run resumed again just reports its summary
    assert again["test_miou"] == resumed["test_miou"]
    # fit's per-step log: one file per model of the run, one row per step, the resumed
    # chunk appended to the first (1 step per epoch x 2 epochs)
    steps = (tiny / "runs" / "part" / "baseline_steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 2 and not (tiny / "runs" / "part" / "steps.csv").exists()


@pytest.mark.parametrize("argv, words", [
    (["--name", "none", "--resume"], ["--resume", "'runs/none'", "no config.json"]),
    (["--name", "old", "--resume", "--epochs", "9"], ["--epochs", "saved config"]),
    (["--name", "old", "--resume", "--rtol", "0.1"], ["--rtol", "saved config"]),
    (["--name", "old", "--resume", "--models", "segnode"], ["--models", "'segnode'"]),
    (["--name", "old"], ["already holds", "--resume"]),
    (["--name", "cls", "--resume"], ["--resume", "not a segmentation run"]),
])
def test_resume_refusals(tiny, capsys, argv, words):
    old = tiny / "runs" / "old"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"models": ["baseline"]}))
    (tiny / "runs" / "cls").mkdir()
    (tiny / "runs" / "cls" / "config.json").write_text(json.dumps({"classify": {}}))
    with pytest.raises(SystemExit) as info:
        segment.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for w in words:
        assert w.replace("/", os.sep) in err, err


def test_run_name_is_a_deprecated_alias_of_name(tiny, capsys):
    (tiny / "runs" / "old").mkdir(parents=True)
    (tiny / "runs" / "old" / "config.json").write_text("{}")
    with pytest.warns(FutureWarning, match="--name"), pytest.raises(SystemExit) as info:
        segment.main(["--run-name", "old"])
    assert info.value.code == 2
    assert "'runs/old' already holds" in capsys.readouterr().err.replace(os.sep, "/")


def test_settings_of_earlier_runs_still_load():
    """config.json of runs before the nested ``solve`` (written by commit 0b161f3): the
    solver settings and data_path at the top level."""
    from experiments.configs.segnode import DEFAULTS, from_saved, model_config

    old = dict(segment.CONFIGS["smoke"], **{k: v for k, v in DEFAULTS.items() if k != "solve"},
               solver="euler", rtol=0.01, atol=0.02, num_steps=3, data_path="cv.zip",
               models=["segnode"], table2=False)
    del old["solve"]
    cfg = from_saved(old)
    assert cfg["solve"] == dict(solver="euler", rtol=0.01, atol=0.02, num_steps=3)
    assert cfg["data_root"] == "cv.zip" and "data_path" not in cfg and "solver" not in cfg
    solve = model_config("segnode", cfg, 4).solve
    assert (solve.solver, solve.num_steps, solve.max_steps) == ("euler", 3, 256)
    assert float(solve.atol) == pytest.approx(0.02)
    assert from_saved(cfg) == cfg  # a run written now reads back unchanged
