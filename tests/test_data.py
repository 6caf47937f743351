"""Dataset readers, cache, batch iterator: against files written here with known content,
the README facts of the offline copies, and scikit-learn's own arrays."""

from __future__ import annotations

import gzip
import os
import sys
import types
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from jaxode.data import Dataset, iterate_batches, load_dataset
from jaxode.data import cache as cache_mod
from jaxode.data import folder as folder_mod
from jaxode.data.folder import Source, decode_images, find_split_layout, read_image_folder
from jaxode.data.idx import read_idx
from jaxode.data.tfds_source import import_tfds, load_tfds
from jaxode.data.tiny_imagenet import read_tiny_imagenet_val

# ----------------------------------------------------------------------------- helpers


def write_folder(root, splits=("train", "test"), classes=("cat", "dog", "emu"), n=3, size=(5, 6), mode="RGB", seed=0):
    """Write PNG (lossless) images under root/<split>/<class>/; return expected arrays
    in sorted-path order."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split in splits:
        imgs, labels = [], []
        for ci, c in enumerate(sorted(classes)):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                shape = size + ((3,) if mode == "RGB" else ())
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode=mode).save(os.path.join(d, f"{i:03d}.png"))
                imgs.append(a if mode == "RGB" else a[..., None])
                labels.append(ci)
        expected[split] = (np.stack(imgs), np.asarray(labels, np.int32))
    return expected


def zip_folder(src, zip_path, top=None):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for dirpath, _, files in os.walk(src):
            for f in files:
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, src)
                zf.write(full, os.path.join(top, rel) if top else rel)
    return zip_path


def write_idx(path, arr, magic_dims=None, gz=False, extra=b""):
    arr = np.asarray(arr, np.uint8)
    ndim = arr.ndim if magic_dims is None else magic_dims
    header = bytes([0, 0, 8, ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.tobytes() + extra
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- digits


def test_digits_split_matches_sklearn():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.num_classes == 10
    # Every sklearn image appears exactly once across the two splits, scaled 16 -> 255.
    sk = load_digits()
    ref = {(np.round(im * 255 / 16).astype(np.uint8).tobytes(), int(t)) for im, t in zip(sk.images, sk.target)}
    ours = [(im[..., 0].tobytes(), int(t)) for d in (train, test) for im, t in zip(d.images, d.labels)]
    assert len(ours) == 1797 and set(ours) == ref
    assert train.images.max() == 255 and train.images.min() == 0
    # Stratified: each class has 36 +- 1 test images (20% of ~180).
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # Fixed: a second call gives the same split.
    assert np.array_equal(load_dataset("digits", "test").labels, test.labels)


# ----------------------------------------------------------------------------- IDX / MNIST


def test_idx_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (7, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9, 5, 6], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    ds = load_dataset("mnist", "train", root=str(tmp_path))
    assert np.array_equal(ds.images[..., 0], imgs) and np.array_equal(ds.labels, labels)

    bad = tmp_path / "bad"
    bad.mkdir()
    # Wrong magic (element type 0x0D = float).
    (bad / "x").write_bytes(bytes([0, 0, 0x0D, 1]) + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match=r"magic number 0x00000d01.*" ):
        read_idx(bad / "x")
    # Header count larger than the data: truncated.
    write_idx(bad / "t", imgs)
    raw = (bad / "t").read_bytes()
    (bad / "t").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"t: header says shape \(7, 4, 3\).*truncated"):
        read_idx(bad / "t")
    # Image/label count mismatch between the two files.
    write_idx(bad / "train-images-idx3-ubyte", imgs)
    write_idx(bad / "train-labels-idx1-ubyte", labels[:5])
    with pytest.raises(ValueError, match=r"7 images but .*5 labels"):
        load_dataset("mnist", "train", root=str(bad))
    # Label out of range.
    write_idx(bad / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 10, 5, 6]))
    with pytest.raises(ValueError, match=r"label 10 at index 4 is out of range"):
        load_dataset("mnist", "train", root=str(bad))


def test_mnist_offline_copy_matches_readme(shared_data):
    test = load_dataset("mnist", "test", root=os.path.join(shared_data, "mnist"))
    assert test.images.shape == (10000, 28, 28, 1)
    # README: test pixel mean 33.791; class counts of the MNIST test set are well known.
    assert abs(test.images.mean() - 33.791) < 1e-3
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("as_zip", [False, True])
def test_image_folder_reads_exact_pixels(tmp_path, as_zip):
    root = tmp_path / "data"
    exp = write_folder(str(root))
    path = zip_folder(str(root), str(tmp_path / "d.zip"), top="mydata") if as_zip else str(root)
    for split in ("train", "test"):
        ds = load_dataset(f"folder:{path}", split, cache_dir=str(tmp_path / "cache"))
        assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
        assert np.array_equal(ds.images, exp[split][0])
        assert np.array_equal(ds.labels, exp[split][1])


def test_greyscale_folder_has_one_channel_and_mixed_gets_rgb(tmp_path):
    exp = write_folder(str(tmp_path / "g"), splits=("train",), mode="L")
    ds = read_image_folder(str(tmp_path / "g"), "train", progress=False)
    assert ds.images.shape[-1] == 1 and np.array_equal(ds.images, exp["train"][0])
    # One colour image among grey ones: all become RGB, grey ones replicated.
    Image.fromarray(np.zeros((5, 6, 3), np.uint8) + 7).save(tmp_path / "g/train/cat/zzz.png")
    ds = read_image_folder(str(tmp_path / "g"), "train", progress=False)
    assert ds.images.shape[-1] == 3
    assert np.array_equal(ds.images[0], np.repeat(exp["train"][0][0], 3, axis=-1))


def test_folder_errors_name_the_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_folder(str(root), n=2)
    # Missing split.
    with pytest.raises(ValueError, match=r"No images found for split 'val' in .*data"):
        read_image_folder(str(root), "val")
    # Different sizes without image_size=.
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train/dog/big.png")
    with pytest.raises(ValueError, match=r"big.png has size 9x9 .*image_size="):
        read_image_folder(str(root), "train", progress=False)
    ds = read_image_folder(str(root), "train", image_size=(4, 4), progress=False)
    assert ds.images.shape == (7, 4, 4, 3)
    os.remove(root / "train/dog/big.png")
    # Corrupt image (a truncated PNG).
    good = (root / "train/cat/000.png").read_bytes()
    (root / "train/cat/000.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"Could not decode image .*train/cat/000.png"):
        read_image_folder(str(root), "train", progress=False)
    (root / "train/cat/000.png").write_bytes(good)
    # Truncated zip.
    z = zip_folder(str(root), str(tmp_path / "d.zip"))
    raw = open(z, "rb").read()
    open(z, "wb").write(raw[: len(raw) - 200])
    with pytest.raises(ValueError, match=r"d.zip is not a readable zip file.*truncated"):
        read_image_folder(z, "train")
    # Missing folder: the message names the path looked at and how to set it.
    monkeypatch.setenv("JAXODE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/cifar10-jpeg.zip.*JAXODE_DATA"):
        load_dataset("cifar10", "train")
    monkeypatch.delenv("JAXODE_DATA")
    with pytest.raises(FileNotFoundError, match=r"root=.*--data-root.*JAXODE_DATA"):
        load_dataset("mnist", "train")
    with pytest.raises(FileNotFoundError, match=r"Image folder .*nope does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    with pytest.raises(ValueError, match=r"Unknown dataset spec 'imagenet'"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match=r"split='valid'"):
        load_dataset("digits", "valid")


def test_parallel_decode_equals_serial(tmp_path, monkeypatch):
    root = tmp_path / "data"
    exp = write_folder(str(root), splits=("train",), n=12, size=(4, 4))
    z = zip_folder(str(root), str(tmp_path / "d.zip"))
    src = Source(z)
    prefix, classes = find_split_layout(src, "train")
    names = [n for n in src.names() if n.startswith("train/")]
    monkeypatch.setattr(folder_mod, "PARALLEL_THRESHOLD", 1)
    monkeypatch.setattr(folder_mod, "CHUNK", 5)
    if "fork" in __import__("multiprocessing").get_all_start_methods():
        monkeypatch.setattr(folder_mod, "_start_method", lambda: "fork")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # JAX's fork warning: workers use no JAX
        par = decode_images(src, names, workers=2, progress=False)
    assert np.array_equal(par, exp["train"][0])


def test_cache_second_load_skips_decode_and_tracks_mtime(tmp_path, monkeypatch):
    root = tmp_path / "data"
    exp = write_folder(str(root), splits=("train",))
    cache = tmp_path / "cache"
    z = zip_folder(str(root), str(tmp_path / "d.zip"))
    a = load_dataset(f"folder:{z}", "train", cache_dir=str(cache))
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".npz") and not files[0].startswith(".tmp")

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_mod, "read_image_folder", boom)
    b = load_dataset(f"folder:{z}", "train", cache_dir=str(cache))
    assert np.array_equal(a.images, b.images) and a.class_names == b.class_names == ("cat", "dog", "emu")
    assert b.name == a.name
    # A replaced source (new mtime / size) is decoded again.
    exp2 = write_folder(str(root), splits=("train",), seed=5)
    zip_folder(str(root), z)
    os.utime(z, ns=(1, 1))
    monkeypatch.undo()
    c = load_dataset(f"folder:{z}", "train", cache_dir=str(cache))
    assert np.array_equal(c.images, exp2["train"][0]) and not np.array_equal(c.images, exp["train"][0])
    assert len(os.listdir(cache)) == 2


def test_cache_env_var_and_atomic_write(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXODE_CACHE", str(tmp_path / "envcache"))
    assert cache_mod.default_cache_dir() == str(tmp_path / "envcache")
    ds = load_dataset("digits", "test")
    calls = []

    def make():
        calls.append(1)
        return ds

    # A failing write leaves no partial file behind; the run goes on without the cache
    # and says so (issue 18: a read-only or full cache must not stop a run).
    def failing_savez(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "savez", failing_savez)
    with pytest.warns(RuntimeWarning, match="disk full"):
        assert cache_mod.cached(make, reader="x", source=str(tmp_path), split="s") is ds
    assert os.listdir(tmp_path / "envcache") == []


def test_cifar10_offline_layout(shared_data):
    src = Source(os.path.join(shared_data, "cifar10-jpeg.zip"))
    prefix, classes = find_split_layout(src, "test")
    assert prefix == "cifar10-jpeg/"
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    names = [n for n in src.names() if n.startswith("cifar10-jpeg/test/")]
    assert len(names) == 10000 and len([n for n in src.names() if "/train/" in n]) == 50000
    x = decode_images(src, names[:4], workers=1, progress=False)
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and x.std() > 10


# ----------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_layout(tmp_path):
    top = tmp_path / "tiny-imagenet-200"
    (top / "val/images").mkdir(parents=True)
    wnids = ["n01", "n02", "n03"]
    (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    lines, exp = [], []
    for i, w in enumerate(["n03", "n01", "n02", "n03"]):
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        if i == 2:  # a greyscale one, as ~2% of the real set
            a = np.repeat(a[..., :1], 3, axis=-1)
            Image.fromarray(a[..., 0], "L").save(top / f"val/images/val_{i}.png")
        else:
            Image.fromarray(a).save(top / f"val/images/val_{i}.png")
        lines.append(f"val_{i}.png\t{w}\t0\t0\t7\t7")
        exp.append(a)
    (top / "val/val_annotations.txt").write_text("\n".join(lines) + "\n")
    z = zip_folder(str(tmp_path), str(tmp_path / "t.zip"))
    ds = read_tiny_imagenet_val(z, progress=False)
    assert ds.class_names == tuple(wnids) and ds.labels.tolist() == [2, 0, 1, 2]
    assert np.array_equal(ds.images, np.stack(exp))
    small = read_tiny_imagenet_val(str(tmp_path), image_size=4, progress=False)
    assert small.images.shape == (4, 4, 4, 3)
    # A symmetric antialiasing filter maps a linear ramp to its 2x2 box averages
    # (interior pixels; at the border the filter is truncated).
    import io

    ramp = (np.add.outer(np.arange(8) * 9, np.arange(8) * 5) + 20).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    out, grey = folder_mod._decode_one(buf.getvalue(), "ramp", (4, 4))
    box = ramp.astype(float).reshape(4, 2, 4, 2).mean(axis=(1, 3))
    assert grey and np.abs(out[1:3, 1:3, 0] - box[1:3, 1:3]).max() <= 1.0
    (top / "val/val_annotations.txt").write_text("val_0.png\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"line 1: .*n99.* does not name a wnid"):
        read_tiny_imagenet_val(str(tmp_path))


def test_tiny_imagenet_offline_counts(shared_data, monkeypatch):
    import jaxode.data.tiny_imagenet as ti

    monkeypatch.setattr(ti, "decode_images", lambda src, names, **k: np.zeros((len(names), 2, 2, 3), np.uint8))
    ds = ti.read_tiny_imagenet_val(os.path.join(shared_data, "tiny-imagenet-200-val.zip"))
    assert len(ds) == 10000 and ds.num_classes == 200
    assert np.bincount(ds.labels).tolist() == [50] * 200


# ----------------------------------------------------------------------------- TFDS


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxode\[tfds\]'"):
        import_tfds()
    with pytest.raises(ImportError, match=r"tensorflow-datasets"):
        load_dataset("tfds:mnist", "train")


def test_tfds_conversion_with_fake_module(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)  # greyscale, no channel axis
    labels = np.array([0, 2, 1, 2, 0, 1], np.int64)
    seen = {}

    class Label:
        num_classes = 3
        names = ["a", "b", "c"]

    def load(name, split, data_dir, batch_size, with_info, download):
        seen.update(name=name, split=split, data_dir=data_dir, batch_size=batch_size)
        info = types.SimpleNamespace(supervised_keys=("image", "label"), features={"label": Label(), "image": None})
        # tfds yields batches: two of them here.
        return [{"image": images[:4], "label": labels[:4]}, {"image": images[4:], "label": labels[4:]}], info

    fake = types.SimpleNamespace(load=load, as_numpy=lambda d: d)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    ds = load_tfds("fake_ds", "test", data_dir="/d")
    assert seen == {"name": "fake_ds", "split": "test", "data_dir": "/d", "batch_size": 1024}
    assert ds.images.shape == (6, 5, 5, 1) and np.array_equal(ds.images[..., 0], images)
    assert ds.labels.dtype == np.int32 and ds.labels.tolist() == labels.tolist()
    assert ds.class_names == ("a", "b", "c") and ds.name == "tfds:fake_ds/test"
    bad = np.array([0, 3, 1, 2, 0, 1])
    fake.load = lambda *a, **k: ([{"image": images, "label": bad}], load(*a, **k)[1])
    with pytest.raises(ValueError, match=r"label 3 is out of range \[0, 3\)"):
        load_dataset("tfds:fake_ds", "train")


# ----------------------------------------------------------------------------- Dataset / batches


def test_dataset_validation():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match=r"'t': label 5 is out of range \[0, 2\)"):
        Dataset(x, np.array([0, 1, 5], np.int32), 2, ("a", "b"), "t")
    with pytest.raises(TypeError, match=r"images must be a uint8"):
        Dataset(x.astype(np.float32), np.array([0, 1, 1], np.int32), 2, ("a", "b"), "t")
    with pytest.raises(ValueError, match=r"3 images but 2 labels"):
        Dataset(x, np.array([0, 1], np.int32), 2, ("a", "b"), "t")


def test_iterate_batches_deterministic_and_complete():
    ds = load_dataset("digits", "test")
    def epoch(**kw):
        return list(iterate_batches(ds, 64, **kw))
    a = epoch(key_or_seed=3, shuffle=True, drop_last=False)
    b = epoch(key_or_seed=3, shuffle=True, drop_last=False)
    c = epoch(key_or_seed=4, shuffle=True, drop_last=False)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not np.array_equal(a[0][1], c[0][1])
    assert [len(x[1]) for x in a] == [64] * 5 + [40]
    assert a[0][0].dtype == np.uint8 and a[0][0].shape == (64, 8, 8, 1)
    # Each example exactly once: the multiset of (image, label) pairs is preserved.
    got = sorted(im.tobytes() + bytes([l]) for x in a for im, l in zip(*x))
    ref = sorted(im.tobytes() + bytes([l]) for im, l in zip(ds.images, ds.labels))
    assert got == ref
    d = epoch(key_or_seed=jax.random.PRNGKey(1), shuffle=True, drop_last=True)
    e = epoch(key_or_seed=jax.random.key(1), shuffle=True, drop_last=True)
    assert [len(x[1]) for x in d] == [64] * 5
    assert np.array_equal(d[0][1], e[0][1])
    f = epoch(key_or_seed=0, shuffle=False, drop_last=False)
    assert np.array_equal(np.concatenate([x[1] for x in f]), ds.labels)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        epoch(key_or_seed=0, shuffle=False, drop_last=False, ) if False else list(iterate_batches(ds, 0))
