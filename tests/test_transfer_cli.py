"""`python -m experiments.transfer` end to end on a small Tiny-ImageNet-layout folder
made here (3 classes x 8 JPEGs) and a checkpoint of a 4-channel ODE-only net: the
files it writes, the feature cache on a re-run, earlier results kept, bad input."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import transfer as cli
from jaxode import transfer as tr

WNIDS = ("n01", "n02", "n03")
PER_CLASS = 8


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """<root>/tiny-imagenet-200/{wnids.txt, val/val_annotations.txt, val/images/*.JPEG};
    each class has its own mean colour, so the features separate the classes."""
    root = tmp_path_factory.mktemp("data")
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    rng = np.random.default_rng(0)
    lines = []
    for c, wnid in enumerate(WNIDS):
        for i in range(PER_CLASS):
            name = f"val_{c * PER_CLASS + i}.JPEG"
            img = np.clip(rng.normal(60 + 70 * c, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(base / "val" / "images" / name, quality=95)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as `--quick-train` writes it (config.json + one checkpoint)."""
    from jaxode.models.classifiers import make_model
    from jaxode.train import save_checkpoint

    path = tmp_path_factory.mktemp("odeonly")
    kwargs = {"num_classes": 10, "channels": 4, "dropout": 0.0, "tol": 1e-3}
    model = make_model("carrara-odeonly", key=jax.random.PRNGKey(3), **kwargs)
    (path / "config.json").write_text(json.dumps({"model": "carrara-odeonly",
                                                  "model_kwargs": kwargs}))
    save_checkpoint(str(path / "checkpoints"), 1, {"model": model, "opt_state": None, "ema": None},
                    {"config": {"ema_decay": None}})
    return str(path)


def _argv(tiny_root, run_dir, runs, *extra):
    return ["--checkpoint", f"odeonly={run_dir}", "--data-root", tiny_root,
            "--cache-dir", os.path.join(runs, "cache"), "--runs-dir", runs, "--name", "t",
            "--time-step", "0.5", "--folds", "2", "--Cs", "0.1,10", "--n-jobs", "1", *extra]


def test_transfer_cli_writes_results_and_reuses_features(tiny_root, run_dir, tmp_path,
                                                         monkeypatch):
    runs = str(tmp_path)
    summary = cli.main(_argv(tiny_root, run_dir, runs, "--finetune-t", "0.5"), log=lambda s: None)
    out = tmp_path / "t"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [float(r["t"]) for r in rows] == [0.0, 0.5, 1.0]
    assert all(0.0 <= float(r["cv_accuracy"]) <= 1.0 for r in rows)
    info = summary["models"]["odeonly"]
    best = max(rows, key=lambda r: float(r["cv_accuracy"]))
    assert info["best_t"] == float(best["t"]) and info["n_features"] == 4
    assert summary["n_images"] == 3 * PER_CLASS and summary["n_classes"] == 3
    assert {"svm_val_accuracy", "head_val_accuracy"} <= set(info["finetune"])
    assert (out / "accuracy_vs_t.png").stat().st_size > 0
    assert len(list((out / "features").glob("features-*.npz"))) == 1

    # A re-run into the same folder: features come from the cache (extraction would
    # raise), and the first run's results are kept under previous/.
    first = (out / "results.csv").read_text()

    def no_extraction(*a, **k):
        raise AssertionError("features were recomputed despite the cache")

    monkeypatch.setattr(tr, "extract_features", no_extraction)
    (out / "finetune-odeonly" / "checkpoints").mkdir(parents=True)
    (out / "finetune-odeonly" / "checkpoints" / "ckpt-0001.eqx").write_bytes(b"earlier weights")
    cli.main(_argv(tiny_root, run_dir, runs), log=lambda s: None)
    kept = list((out / "previous").glob("*/results.csv"))
    assert len(kept) == 1 and kept[0].read_text() == first
    # An earlier full fine-tune's run folder moves along (a new fine-tune would clear it).
    kept_ft = list((out / "previous").glob("*/finetune-odeonly/checkpoints/ckpt-0001.eqx"))
    assert len(kept_ft) == 1 and kept_ft[0].read_bytes() == b"earlier weights"
    assert (out / "results.csv").read_text() == first  # same features, same seed
    # The SVM at a coarser subset of the times: rows for t = 0 and 1 only, from the cache.
    cli.main(_argv(tiny_root, run_dir, runs, "--svm-time-step", "1"), log=lambda s: None)
    coarse = list(csv.DictReader(open(out / "results.csv")))
    assert [r["t"] for r in coarse] == [rows[0]["t"], rows[-1]["t"]]
    assert [r["cv_accuracy"] for r in coarse] == [rows[0]["cv_accuracy"], rows[-1]["cv_accuracy"]]
    info = json.load(open(out / "summary.json"))["models"]["odeonly"]
    best = max(coarse, key=lambda r: float(r["cv_accuracy"]))
    assert info["best_t"] == float(best["t"])
    assert info["best_cv_accuracy"] == float(best["cv_accuracy"])


@pytest.mark.parametrize("extra, message", [
    (["--time-step", "1.5"], "--time-step"),
    (["--folds", "1"], "--folds"),
    (["--Cs", "1,-2"], "--Cs"),
    (["--finetune-t", "-0.1"], "--finetune-t"),
    (["--image-size", "0"], "--image-size"),
])
def test_transfer_cli_bad_numbers(tiny_root, run_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        cli.main(_argv(tiny_root, run_dir, str(tmp_path)) + extra)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing written before the check


def test_transfer_cli_bad_paths(tiny_root, run_dir, tmp_path, capsys):
    for argv, message in (
        (["--checkpoint", "odeonly"], "expected NAME=RUN_DIR"),
        (["--checkpoint", f"x={tmp_path / 'missing'}"], "is not a run folder"),
        (["--checkpoint", f"x={run_dir}", "--data-root", str(tmp_path / "nope")], "does not exist"),
        ([], "no models"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv + ["--runs-dir", str(tmp_path)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    # A data folder without the Tiny-ImageNet files: one message naming where it looked.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:  # exit 2, one line (issue 18)
        cli.main(["--checkpoint", f"x={run_dir}", "--data-root", str(empty),
                  "--runs-dir", str(tmp_path / "runs")], log=lambda s: None)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "tiny-imagenet" in err and "Traceback" not in err


def test_heldout_datasets_are_a_stratified_partition():
    """The fine-tune split: disjoint, together every image, 20 % of each class held out."""
    from jaxode.transfer_sweep import heldout_datasets

    y = np.repeat(np.arange(4), 10)
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)  # image i holds i
    train, val = heldout_datasets(images, y, 4, seed=0)
    ids = np.concatenate([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]])
    assert sorted(ids.tolist()) == list(range(40)) and len(val) == 8
    assert np.bincount(val.labels, minlength=4).tolist() == [2, 2, 2, 2]
    assert np.array_equal(y[val.images[:, 0, 0, 0]], val.labels)


def test_full_finetune_at_t0_of_an_ode_net_is_skipped(tiny_root, run_dir, tmp_path):
    """At t* = 0 an ODE net has no ODE block left: the full fine-tune is skipped and
    said so, the SVM and linear-head comparison still run."""
    summary = cli.main(_argv(tiny_root, run_dir, str(tmp_path), "--finetune-t", "0",
                             "--finetune-mode", "both", "--finetune-epochs", "2"),
                       log=lambda s: None)
    ft = summary["models"]["odeonly"]["finetune"]
    assert ft["full_skipped"] == "t* = 0" and ft["t"] == 0.0
    assert {"svm_val_accuracy", "head_val_accuracy"} <= set(ft)
    assert not (tmp_path / "t" / "finetune-odeonly").exists()
