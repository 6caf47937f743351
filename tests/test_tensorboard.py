"""A smoke `fit` leaves TensorBoard event files in its run folder whose scalars read back
as the metrics of `history` (the events are parsed here from their TFRecord framing and
the Event protocol buffer, independently of the writer)."""

import glob
import struct

import equinox as eqx
import jax
import numpy as np
import pytest

from jaxode.data import load_dataset
from jaxode.models import Head, PreActBlock, ResNetClassifier, Sequence
from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every event file under `folder`.  Each TFRecord is
    <u64 length><u32 masked crc of length><data><u32 masked crc of data>."""
    from tensorboardX.record_writer import masked_crc32c

    out: dict[str, dict[int, float]] = {}
    files = sorted(glob.glob(f"{folder}/**/events.out.tfevents.*", recursive=True))
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
            assert len_crc == masked_crc32c(header), f"bad length checksum in {path}"
            body = data[pos + 12:pos + 12 + length]
            (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
            assert body_crc == masked_crc32c(body), f"bad record checksum in {path}"
            pos += 16 + length
            event = event_pb2.Event.FromString(body)
            for v in event.summary.value:
                out.setdefault(v.tag, {})[int(event.step)] = v.simple_value
    return out


def test_smoke_fit_writes_tensorboard_scalars(tmp_path):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    model = ResNetClassifier(Sequence((eqx.nn.Conv2d(1, 4, 3, 1, 1, key=k1),)),
                             (PreActBlock(4, 4, 1, key=k2),), Head(4, 10, key=k3), 1)
    train = load_dataset("digits", "train").subset(slice(0, 64))
    test = load_dataset("digits", "test").subset(slice(0, 20))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, progress=False)
    run = RunDir(str(tmp_path / "run"), {"smoke": True})
    assert not (tmp_path / "run" / "tb").exists()  # nothing before the first metrics
    result = fit(model, ClassificationTask(),
                 lambda e: dataset_batches(train, 32, seed=(0, e), drop_last=True),
                 lambda: dataset_batches(test, 20, shuffle=False),
                 config=cfg, run=run, log=lambda s: None)
    run.close()
    assert glob.glob(str(tmp_path / "run" / "tb" / "events.out.tfevents.*"))
    scalars = read_scalars(tmp_path / "run" / "tb")
    for row in result.history:
        for name in ("train_loss", "eval_acc", "lr"):
            np.testing.assert_allclose(scalars[name][row["epoch"]], row[name], rtol=1e-6)
    assert set(scalars["train_loss"]) == {1, 2}
    assert "epoch" not in scalars


def test_plots_are_redrawn_on_the_final_epoch_or_after_the_interval(tmp_path):
    """metrics.csv is rewritten every epoch; the PNGs only when `final`, when
    plot_interval_s has passed, or at close (so a short run draws them once)."""
    rows = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}]
    run = RunDir(str(tmp_path / "a"), None, tensorboard=False, plot_interval_s=3600)
    loss_png = tmp_path / "a" / "loss.png"
    run.write_history(rows[:1])
    assert (tmp_path / "a" / "metrics.csv").read_text().count("\n") == 2
    assert not loss_png.exists()
    run.close()  # owed plots are drawn at close
    assert loss_png.exists()
    loss_png.unlink()
    run.write_history(rows, final=True)
    assert loss_png.exists()
    eager = RunDir(str(tmp_path / "b"), None, tensorboard=False, plot_interval_s=0)
    eager.write_history(rows[:1])
    assert (tmp_path / "b" / "loss.png").exists()
