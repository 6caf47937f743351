"""Issue 18: runs lose nothing, bad input stops early with one line that says what to do.

One test (or more) per point of the issue; each failed on the code before the fix
(the docstrings say how).  Everything runs in this process on tiny models; the kill -9
trials are in `test_reliability_kill.py`, the command lines of the docs in
`test_doc_commands.py`, the hypothesis test of command lines in `test_cli_property.py`.
"""

import json
import os
import threading

import equinox as eqx
import jax
import numpy as np
import pytest

from jaxode import cli as _cli
from jaxode.models import Head, PreActBlock, ResNetClassifier, Sequence
from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit
from jaxode.train.checkpoint import load_newest_intact, save_checkpoint
from jaxode.train.rundir import claim_run_dir

TASK = ClassificationTask()


# The same isolation (empty folder, no data, private cache) and file snapshot as the CLI
# reliability tests; importing the autouse fixture applies it to this module too.
from test_reliability_cli import _files, _isolated  # noqa: E402, F401


def _exit2(main, argv, capsys) -> str:
    """`main(argv)` must exit with status 2, print no traceback and end stderr with one
    ``error`` line; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, (info.value.code, err)
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "error: " in line, err
    return line


# ------------------------------------------------------- 1. two runs, one folder


def test_runs_started_together_never_share_a_folder(tmp_path, capsys):
    """Before: `choose_run_folder` returned an existing empty folder to every caller, so
    two runs with the default (or the same) name wrote into one folder."""
    from experiments import classify

    parser = classify.build_parser()
    (tmp_path / "runs" / "smoke-digits").mkdir(parents=True)  # empty: may be used once
    picked = []
    for _ in range(3):
        args = parser.parse_args([])
        cfg, created = classify.choose_run_folder(parser, args, classify.config_from_args(args),
                                                  log=lambda s: None)
        picked.append(cfg.name)
    assert picked == ["smoke-digits", "smoke-digits-2", "smoke-digits-3"]
    args = parser.parse_args(["--name", "mine"])
    classify.choose_run_folder(parser, args, classify.config_from_args(args))
    with pytest.raises(SystemExit):  # the same --name again: already claimed
        classify.choose_run_folder(parser, args, classify.config_from_args(args))
    # the claim itself is exclusive: of 8 threads racing for one folder, one wins
    wins = []
    barrier = threading.Barrier(8)

    def race():
        barrier.wait()
        wins.append(claim_run_dir(str(tmp_path / "race")))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


# ------------------------------------------------ 2. --resume never deletes anything


def _tiny_resnet():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    stem = Sequence((eqx.nn.Conv2d(1, 4, 3, 1, 1, key=k1),))
    return ResNetClassifier(stem, (PreActBlock(4, 4, 1, key=k2),), Head(4, 10, key=k3), 1)


def _digits(n=64):
    from jaxode.data import load_dataset

    return load_dataset("digits", "train").subset(slice(0, n))


def _fit(run, epochs, resume=False, logs=None):
    train = _digits(32)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, keep_checkpoints=5,
                      progress=False)
    return fit(_tiny_resnet(), TASK,
               lambda e: dataset_batches(train, 16, seed=(0, e), drop_last=True),
               None, config=cfg, run=run, resume=resume,
               log=(logs.append if logs is not None else (lambda s: None)))


def test_resume_without_latest_json_scans_and_never_deletes(tmp_path):
    """Before: a missing or unreadable ``latest.json`` printed "no checkpoint found;
    starting from scratch" and deleted the intact checkpoints beside it."""
    run = RunDir(str(tmp_path / "run"), {"x": 1}, tensorboard=False)
    full = _fit(run, 3)
    ck = tmp_path / "run" / "checkpoints"
    kept = {n: b for n, b in _files(ck).items() if n != "latest.json"}
    os.remove(ck / "latest.json")
    logs = []
    resumed = _fit(run, 3, resume=True, logs=logs)
    assert any("after epoch 3" in s for s in logs), logs
    assert resumed.history == full.history
    assert {n: b for n, b in _files(ck).items() if n in kept} == kept  # nothing deleted
    (ck / "latest.json").write_text("{not json")  # unreadable pointer: the same
    (ck / "ckpt-0003.eqx").write_bytes(b"damaged")  # and the newest pair is damaged
    logs = []
    _fit(run, 3, resume=True, logs=logs)
    assert any("Falling back to checkpoint 2" in s for s in logs), logs
    for name in ("ckpt-0001.eqx", "ckpt-0002.eqx", "ckpt-0003.eqx"):
        assert (ck / name).exists()


def test_resume_before_the_first_checkpoint_starts_fresh(tmp_path):
    """Found by benchmarks/kill_resume.py: a run killed before its first checkpoint has
    no checkpoints/ folder; its --resume must start from scratch, not crash."""
    assert load_newest_intact(str(tmp_path / "no" / "checkpoints"), lambda e: None) is None


def test_unreadable_checkpoints_are_refused_not_deleted(tmp_path):
    run = RunDir(str(tmp_path / "run"), {"x": 1}, tensorboard=False)
    _fit(run, 1)
    ck = tmp_path / "run" / "checkpoints"
    (ck / "ckpt-0001.eqx").write_bytes(b"damaged")
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="nothing was deleted"):
        _fit(run, 2, resume=True)
    with pytest.raises(FileExistsError, match="Nothing was deleted"):
        _fit(run, 2)  # a fresh run into a folder with checkpoints: refused
    assert _files(tmp_path) == before


# ---------------------------------- 3. config.json written once; resume keeps flags


def test_config_json_is_written_once(tmp_path):
    """Before: every `RunDir(path, config)` (every --resume) rewrote config.json."""
    RunDir(str(tmp_path / "r"), {"model": "a"}, tensorboard=False)
    RunDir(str(tmp_path / "r"), {"model": "b"}, tensorboard=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"model": "a"}


def test_resume_with_changed_flags_is_refused_and_listed(tmp_path, capsys):
    """Before: a --resume with another --model / --dataset / --channels was accepted
    silently and rewrote config.json."""
    from experiments import classify
    from experiments.configs import get_config

    cfg = get_config("smoke-digits")
    folder = tmp_path / "runs" / "smoke-digits"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"classify": cfg.to_dict()}))
    before = _files(tmp_path)
    line = _exit2(classify.main, ["--resume", "--model", "carrara-resode", "--channels", "16",
                                  "--dataset", "mnist"], capsys)
    for frag in ("model: 'carrara-odeonly' -> 'carrara-resode'", "channels: 32 -> 16",
                 "dataset: 'digits' -> 'mnist'", "--epochs"):
        assert frag in line, line
    assert "fewer" not in line and "epochs: 10 -> 5" in _exit2(
        classify.main, ["--resume", "--epochs", "5"], capsys)  # fewer epochs: a change
    assert "no config.json" in _exit2(classify.main, ["--resume", "--name", "other"], capsys)
    assert _files(tmp_path) == before
    parser = classify.build_parser()  # the documented safe changes pass the check
    args = parser.parse_args(["--resume", "--epochs", "20", "--tol-sweep", "1e-2",
                              "--no-per-sample", "--no-progress"])
    classify.check_resume(parser, classify.config_from_args(args))


# ------------------------------------------------- 4. mixed grey / RGB, empty class


def _image(path, mode):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8) if mode == "L" else (8, 8, 3)
    Image.fromarray(np.full(shape, 100, np.uint8)).save(path)


def test_mixed_grey_and_rgb_splits_share_one_channel_count(tmp_path):
    """Before: train (all grey) came out with 1 channel and test (one RGB image) with 3,
    and training crashed at the first evaluation with nothing saved."""
    from jaxode.data import load_dataset

    for c in ("a", "b"):
        for i in range(2):
            _image(tmp_path / "mix" / "train" / c / f"{i}.png", "L")
            _image(tmp_path / "mix" / "test" / c / f"{i}.png", "RGB" if i else "L")
    train = load_dataset("folder:mix", "train", root=str(tmp_path))
    test = load_dataset("folder:mix", "test", root=str(tmp_path))
    assert train.image_shape == test.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])


def test_empty_class_folder_is_refused(tmp_path):
    """Before: an empty class folder was ignored (one class fewer, silently)."""
    from jaxode.data import load_dataset

    for c in ("a", "b"):
        _image(tmp_path / "d" / "train" / c / "0.png", "RGB")
    (tmp_path / "d" / "train" / "c").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) c .*hold no images.*add images"):
        load_dataset("folder:d", "train", root=str(tmp_path))


# --------------------------------------------------------------- 6. tolerance sweep


def test_tolerance_sweep_bounds_and_failed_points(monkeypatch, capsys):
    """Before: ``--tol-sweep 1e-12`` passed the check, the sweep hit max_steps and the
    run ended without summary.json."""
    from experiments import classify
    import jaxode.train as train_api

    assert "--tol-sweep" in _exit2(classify.main, ["--tol-sweep", "1e-12"], capsys)
    assert "--tol" in _exit2(classify.main, ["--tol", "1e-9"], capsys)

    def evaluate(model, task, batches, **kw):
        if model == "tight":
            raise eqx.EquinoxRuntimeError("ODEBlock 'ode' used all max_steps=4096")
        return {"acc": np.ones(2), "nfe": np.full(2, 8.0), "steps": np.full(2, 2.0)}

    monkeypatch.setattr(train_api, "evaluate", evaluate)
    monkeypatch.setattr(train_api, "with_tolerance", lambda m, t: "tight" if t < 1e-3 else m)
    from jaxode.train.sweeps import tolerance_sweep

    rows = tolerance_sweep("model", None, lambda: [], (1e-2, 1e-4), batch_size=2)
    assert rows[0]["acc"] == 1.0 and rows[1] == {
        "tol": 1e-4, "error": "ODEBlock 'ode' used all max_steps=4096"}


# ---------------------------------------------------------------- 7. transfer args


def test_transfer_limits_are_checked_before_any_work(tmp_path, capsys):
    """Before: ``--classes 500`` was refused after the quick training (~10 min)."""
    from experiments import transfer

    line = _exit2(transfer.main, ["--quick-train", "--classes", "500"], capsys)
    assert "--classes" in line and "200" in line
    line = _exit2(transfer.main, ["--quick-train", "--per-class", "60"], capsys)
    assert "--per-class" in line and "50" in line
    assert os.listdir(tmp_path) == []


# ----------------------------------------- 8. read-only cache, damaged newest .eqx


def test_unwritable_cache_warns_and_runs_without_it(tmp_path):
    """Before: a cache folder that cannot be written aborted after the decode."""
    from jaxode.data.cache import cached
    from jaxode.data.dataset import Dataset

    (tmp_path / "file").write_text("")
    ds = Dataset(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1], np.int32), 2,
                 ("a", "b"), "tiny")
    with pytest.warns(RuntimeWarning, match="continuing without it"):
        out = cached(lambda: ds, reader="t", source=str(tmp_path / "file"), split="train",
                     cache_dir=str(tmp_path / "file" / "cache"))  # under a file: unwritable
    assert out is ds


def test_transfer_falls_back_from_a_damaged_newest_checkpoint(tmp_path, capsys):
    """Before: a damaged newest ``.eqx`` stopped `transfer --checkpoint` although an
    older checkpoint was intact."""
    from jaxode.train import load_run
    from jaxode.models import make_model

    kwargs = {"num_classes": 10, "channels": 4, "dropout": 0.0}
    run = tmp_path / "quick"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "carrara-odeonly",
                                                 "model_kwargs": kwargs}))
    models = [make_model("carrara-odeonly", key=jax.random.PRNGKey(s), **kwargs) for s in (1, 2)]
    for epoch, m in enumerate(models, 1):
        save_checkpoint(str(run / "checkpoints"), epoch, {"model": m, "opt_state": None,
                                                          "ema": None}, {"epoch": epoch})
    (run / "checkpoints" / "ckpt-0002.eqx").write_bytes(b"damaged")
    model = load_run(str(run)).model
    assert "using checkpoint 1" in capsys.readouterr().out
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                  eqx.filter(model, eqx.is_array),
                                  eqx.filter(models[0], eqx.is_array))
    assert all(jax.tree_util.tree_leaves(same))
    found = load_newest_intact(str(run / "checkpoints"),
                               lambda e: {"ema": None, "model": models[1], "opt_state": None},
                               log=lambda s: None)
    assert found[0] == 1  # the loader that segment --checkpoint uses falls back the same way


# ----------------------------------------------------------------------- 9. messages


def test_segment_checkpoint_of_a_classify_run(tmp_path, capsys):
    """Before: KeyError 'data'."""
    from experiments import segment

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.json").write_text(json.dumps({"classify": {"model": "x"}}))
    line = _exit2(segment.main, ["--checkpoint", "cls"], capsys)
    assert "not a segmentation run" in line and "experiments.segment" in line


def test_model_that_does_not_suit_the_config(capsys):
    """Before: carrara-resnet with smoke-digits: TypeError about stem_kernel, after the
    data were loaded."""
    from experiments import classify

    line = _exit2(classify.main, ["--model", "carrara-resnet"], capsys)
    assert "stem_kernel" in line and "carrara-odeonly" in line and "--config" in line


def test_channel_mismatch_names_the_channels():
    """Before: a grey-trained model given RGB images advised converting uint8 NHWC
    images, which they already were."""
    from jaxode.models.classifiers import _check_input  # what every classifier calls first

    with pytest.raises(ValueError, match="built for 1-channel images but got 3-channel"):
        _check_input("ODENetClassifier", jax.ShapeDtypeStruct((2, 3, 16, 16), np.float32), 1)
    with pytest.raises(ValueError, match="to_model_input"):  # NHWC: the layout advice
        _check_input("ODENetClassifier", jax.ShapeDtypeStruct((2, 16, 16, 1), np.float32), 1)


def test_data_errors_are_one_line_with_exit_2(tmp_path, capsys):
    """Before: classify, transfer and node_ew_mnist printed tracebacks (exit 1)."""
    from experiments import classify, node_ew_mnist, transfer

    assert "'cifar10' not found" in _exit2(classify.main, ["--dataset", "cifar10"], capsys)
    assert "'mnist' not found" in _exit2(node_ew_mnist.main, ["--out", "o"], capsys)
    assert "tiny-imagenet" in _exit2(transfer.main, ["--quick-train"], capsys)
    assert not (tmp_path / "o").exists()


def test_model_is_checked_before_the_data(capsys):
    """Before: ``--model vgg`` was reported only after the data were loaded (here the
    data are missing, so the data error came first)."""
    from experiments import classify

    line = _exit2(classify.main, ["--model", "vgg", "--dataset", "cifar10"], capsys)
    assert "--model" in line and "'vgg'" in line


def test_advice_names_only_real_flags():
    """Before: the trainer advised "a larger max_steps" and "grad_clip" (no such flags)
    and the folder reader "image_size=" (no such flag)."""
    import re

    from experiments import classify
    import jaxode.data.folder as folder
    import jaxode.train.loop as loop

    flags = {o for a in classify.build_parser()._actions for o in a.option_strings}
    for module in (loop, folder):
        text = open(module.__file__).read()
        for flag in re.findall(r"\(?(--[a-z][a-z-]+)", text):
            assert flag in flags, f"{module.__name__} advises {flag}, which classify lacks"
        assert "larger max_steps" not in text and "(grad_clip)" not in text
        assert "pass image_size= to resize" not in text


def test_proc_is_not_writable(capsys):
    """Before: ``os.access`` says /proc is writable for root, so /proc/x passed."""
    import argparse

    parser = argparse.ArgumentParser(prog="p")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _cli.check_new_run_dir(parser, "--out", "/proc/jaxode-run")
    assert "cannot write under '/proc'" in capsys.readouterr().err
