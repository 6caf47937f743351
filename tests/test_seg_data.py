"""CamVid reader (fake archives and, when present, the real one), synthetic shapes,
and the device augmentation."""

import io
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxode.data import camvid, synthetic_seg


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _fake_camvid_zip(path, n=2, h=12, w=16, drop=None, corrupt=None, seed=0):
    rng = np.random.default_rng(seed)
    truth = {}
    with zipfile.ZipFile(path, "w") as z:
        for split in camvid.SPLITS:
            lines, imgs, labs = [], [], []
            for i in range(n):
                img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                lab = rng.integers(0, 12, size=(h, w), dtype=np.uint8)
                ir, lr = f"{split}/f{i}.png", f"{split}annot/f{i}.png"
                lines.append(f"{ir} {lr}")
                if ir == corrupt:
                    z.writestr("CamVid/" + ir, b"not an image")
                else:
                    z.writestr("CamVid/" + ir, _png(img))  # PNG: lossless, exact check
                if lr != drop:
                    z.writestr("CamVid/" + lr, _png(lab))
                imgs.append(img)
                labs.append(lab)
            z.writestr(f"CamVid/{split}.txt", "\n".join(lines) + "\n")
            truth[split] = (np.stack(imgs), np.stack(labs))
    return truth


def test_fake_zip_roundtrip_and_cache(tmp_path, monkeypatch):
    zp = str(tmp_path / "cv.zip")
    truth = _fake_camvid_zip(zp)
    cache = str(tmp_path / "cache")
    data = camvid.load_camvid(zp, cache_dir=cache)
    for split in camvid.SPLITS:
        np.testing.assert_array_equal(data[split].images, truth[split][0])
        np.testing.assert_array_equal(data[split].labels, truth[split][1])
        assert data[split].names == ("f0", "f1")
    assert len([f for f in os.listdir(cache) if f.endswith(".npz")]) == 3
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(camvid, "_read_split", boom)
    again = camvid.load_camvid(zp, ["val"], cache_dir=cache)
    np.testing.assert_array_equal(again["val"].labels, truth["val"][1])


def test_camvid_cache_is_the_common_one(tmp_path, monkeypatch):
    """CamVid splits live in `jaxode.data.cache` (under $JAXODE_CACHE when no cache_dir
    is given), keyed by the archive's size and mtime: a rewritten archive is decoded
    again, an unchanged one is not."""
    monkeypatch.setenv("JAXODE_CACHE", str(tmp_path / "env-cache"))
    zp = str(tmp_path / "cv.zip")
    _fake_camvid_zip(zp, seed=1)
    camvid.load_camvid(zp, ["val"])
    files = os.listdir(tmp_path / "env-cache")
    assert len(files) == 1 and files[0].startswith("camvid-val-") and files[0].endswith(".npz")
    truth = _fake_camvid_zip(zp, seed=2)  # new contents, new size/mtime
    os.utime(zp, ns=(1, 1))
    np.testing.assert_array_equal(camvid.load_camvid(zp, ["val"])["val"].labels, truth["val"][1])
    assert len(os.listdir(tmp_path / "env-cache")) == 2


def test_load_segmentation_cuts_and_decimates_the_eval_splits(tmp_path):
    from jaxode.data.segmentation import load_segmentation

    zp = str(tmp_path / "cv.zip")
    truth = _fake_camvid_zip(zp, n=3, seed=4)
    splits, labels = load_segmentation("camvid", root=zp, cache_dir=str(tmp_path / "c"),
                                       eval_limit=2, eval_downscale=2)
    assert labels.num_classes == camvid.NUM_CLASSES and labels.ignore_label == 11
    np.testing.assert_array_equal(splits["train"].images, truth["train"][0])  # untouched
    for s in ("val", "test"):
        np.testing.assert_array_equal(splits[s].images, truth[s][0][:2, ::2, ::2])
        np.testing.assert_array_equal(splits[s].labels, truth[s][1][:2, ::2, ::2])
        assert splits[s].names == ("f0", "f1")
    synth, labels = load_segmentation("synthetic", n_train=3, n_eval=2, size=(16, 16), seed=7)
    want = synthetic_seg.make_split(2, (16, 16), seed=8).images  # val: seed + 1
    np.testing.assert_array_equal(synth["val"].images, want)
    assert labels.num_classes == synthetic_seg.NUM_CLASSES
    with pytest.raises(ValueError, match="unknown segmentation dataset 'voc'"):
        load_segmentation("voc")


def test_folder_source(tmp_path):
    zp = str(tmp_path / "cv.zip")
    truth = _fake_camvid_zip(zp, seed=3)
    zipfile.ZipFile(zp).extractall(tmp_path / "folder")
    data = camvid.load_camvid(str(tmp_path / "folder"), ["test"], use_cache=False)
    np.testing.assert_array_equal(data["test"].images, truth["test"][0])


def test_missing_and_corrupt_files_are_named(tmp_path):
    zp = str(tmp_path / "missing.zip")
    _fake_camvid_zip(zp, drop="trainannot/f1.png")
    with pytest.raises(FileNotFoundError, match="trainannot/f1.png"):
        camvid.load_camvid(zp, ["train"], use_cache=False)
    zc = str(tmp_path / "corrupt.zip")
    _fake_camvid_zip(zc, corrupt="val/f0.png")
    with pytest.raises(ValueError, match="val/f0.png"):
        camvid.load_camvid(zc, ["val"], use_cache=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        camvid.load_camvid(str(tmp_path / "nowhere.zip"), use_cache=False)


def test_real_camvid_layout(shared_data):
    zp = os.path.join(shared_data, "camvid-segnet.zip")
    if not os.path.exists(zp):
        pytest.skip("camvid-segnet.zip not in the shared data")
    names = zipfile.ZipFile(zp).namelist()
    for split, n in camvid.SPLIT_SIZES.items():
        assert sum(x.startswith(f"CamVid/{split}/") for x in names) == n
    data = camvid.load_camvid(zp, ["val"], limit=2, use_cache=False)
    assert data["val"].images.shape == (2, 360, 480, 3)
    assert data["val"].labels.shape == (2, 360, 480)
    assert data["val"].labels.max() <= camvid.IGNORE_LABEL


def test_synthetic_is_deterministic_and_labelled():
    a = synthetic_seg.make_split(6, (32, 40), seed=5)
    b = synthetic_seg.make_split(6, (32, 40), seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (6, 32, 40, 3) and a.labels.shape == (6, 32, 40)
    present = set(np.unique(a.labels).tolist())
    assert present <= set(range(synthetic_seg.NUM_CLASSES + 1))
    assert 0 in present and synthetic_seg.IGNORE_LABEL in present and len(present) >= 3
    # the class colours differ: per-class mean red channel is not constant
    means = [a.images[..., 0][a.labels == c].mean() for c in range(4) if (a.labels == c).any()]
    assert np.ptp(means) > 30


@pytest.fixture(scope="module")
def example():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    lab = rng.integers(0, 5, size=(16, 20), dtype=np.uint8)
    return jnp.asarray(img), jnp.asarray(lab)


_augment = jax.jit(camvid.augment, static_argnames=("crop", "scale", "flip", "ignore_label"))


def test_augment_identity_and_flip(example):
    img, lab = example
    out, olab = _augment(jax.random.PRNGKey(0), img, lab, crop=(16, 20), scale=(1.0, 1.0),
                         flip=False)
    np.testing.assert_allclose(out, img.astype(jnp.float32), atol=1e-4)
    np.testing.assert_array_equal(olab, lab)
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    outs, olabs = jax.vmap(lambda k: _augment(k, img, lab, crop=(16, 20), scale=(1.0, 1.0),
                                              flip=True))(keys)
    flips = 0
    for out, olab in zip(np.asarray(outs), np.asarray(olabs)):
        if np.array_equal(olab, np.asarray(lab)[:, ::-1]):
            flips += 1
            np.testing.assert_allclose(out, np.asarray(img)[:, ::-1].astype(np.float32), atol=1e-4)
        else:
            np.testing.assert_array_equal(olab, lab)
            np.testing.assert_allclose(out, np.asarray(img).astype(np.float32), atol=1e-4)
    assert 0 < flips < 8


def test_augment_scale_nearest_labels_and_padding(example):
    img, lab = example
    # scale 2, crop = the whole scaled image: every label is a 2x2 nearest-neighbour copy
    _, olab = _augment(jax.random.PRNGKey(1), img, lab, crop=(32, 40), scale=(2.0, 2.0),
                       flip=False)
    np.testing.assert_array_equal(olab, np.repeat(np.repeat(np.asarray(lab), 2, 0), 2, 1))
    # scale 0.5 into a full-size crop: a 8x10 image inside, the rest ignore-padded
    out, olab = _augment(jax.random.PRNGKey(2), img, lab, crop=(16, 20), scale=(0.5, 0.5),
                         flip=False, ignore_label=99)
    assert int(jnp.sum(olab != 99)) == 8 * 10
    assert float(jnp.sum(jnp.where((olab == 99)[..., None], out, 0.0))) == 0.0
