"""Issue 9, bad input at the boundary: every mistake a user can make with a model, an
ODE block, a dataset file or the classify CLI ends in a ValueError / TypeError /
FileNotFoundError that names the offending value, raised by jaxode's own checks (never
from deep inside JAX).  Shapes are checked with `eqx.filter_eval_shape`, so no solve is
compiled; a hypothesis test drives the model factories and ODEBlock with random valid
and invalid sizes, ranks and dtypes against an independent rule for what is valid.
"""

from __future__ import annotations

import gzip
import io
import os
import traceback
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxode.data.dataset import Dataset
from jaxode.data.idx import load_mnist, read_idx
from jaxode.data.load import load_dataset
from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.models.classifiers import make_model
from jaxode.ode import ODEBlock, SolveConfig

KEY = jax.random.PRNGKey(0)
EULER = SolveConfig(solver="euler", num_steps=1)


def _raised_in_jaxode(exc: BaseException) -> bool:
    """The innermost frame of the traceback is jaxode's or experiments' own code."""
    frame = traceback.extract_tb(exc.__traceback__)[-1].filename
    return f"{os.sep}jaxode{os.sep}" in frame or f"{os.sep}experiments{os.sep}" in frame


def _assert_raises_clearly(exc_types, fn, *fragments):
    with pytest.raises(exc_types) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in error message: {msg}"
    assert _raised_in_jaxode(info.value), f"raised outside jaxode's checks: {info.value!r}"
    return msg


def _shape_of_call(model, x):
    return eqx.filter_eval_shape(lambda m, v: m(v, inference=True), model, x)


def _build(name, kwargs):
    """`make_model(name, **kwargs)` with shapes in place of weights: every argument
    check runs in Python as in a real build, but no random initialiser is compiled
    (each new layer size would compile its own)."""
    return eqx.filter_eval_shape(lambda key: make_model(name, key=key, **kwargs), KEY)


# ---------------------------------------------------------------- models: the boundary


@pytest.fixture(scope="module")
def small_models():
    ode = make_model("carrara-odeonly", num_classes=10, in_channels=1, channels=4,
                     stem_kernel=3, stem_stride=2, stem_padding=1, dropout=0.0, solve=EULER,
                     key=KEY)
    res = make_model("chen-resnet", num_classes=10, in_channels=1, channels=4, key=KEY)
    return {"ode": ode, "res": res}


@pytest.mark.parametrize("kind", ["ode", "res"])
@pytest.mark.parametrize(
    "shape,dtype,exc,fragment",
    [
        ((1, 8, 8), jnp.float32, ValueError, "(1, 8, 8)"),          # wrong rank
        ((2, 3, 8, 8), jnp.float32, ValueError, "(2, 3, 8, 8)"),    # wrong channel count
        ((2, 8, 8, 1), jnp.float32, ValueError, "(2, 8, 8, 1)"),    # NHWC instead of NCHW
        ((2, 1, 8, 8), jnp.int32, TypeError, "int32"),              # integer input
        ((2, 1, 8, 8), jnp.uint8, TypeError, "uint8"),              # raw image bytes
    ],
)
def test_model_rejects_bad_batches(small_models, kind, shape, dtype, exc, fragment):
    model = small_models[kind]
    x = jnp.zeros(shape, dtype)
    _assert_raises_clearly(exc, lambda: _shape_of_call(model, x), fragment)


@pytest.mark.parametrize("name,hw", [("chen-resnet", 2), ("chen-odenet", 4),
                                     ("carrara-odeonly", 1)])
def test_model_rejects_too_small_images(name, hw):
    # chen's stem: 4 -> 2 -> 1 -> 0; the default ODE-only stem (4x4/2, pad 1): 1 -> 0
    model = make_model(name, channels=4, in_channels=1, solve=None, key=KEY) \
        if name != "chen-resnet" else make_model(name, channels=4, in_channels=1, key=KEY)
    x = jnp.zeros((2, 1, hw, hw), jnp.float32)
    _assert_raises_clearly(ValueError, lambda: _shape_of_call(model, x), f"{hw}x{hw}", "too small")


def test_model_accepts_a_good_batch(small_models):
    for model in small_models.values():
        logits, aux = _shape_of_call(model, jnp.zeros((3, 1, 8, 8), jnp.float32))
        assert logits.shape == (3, 10) and aux["nfe"].shape == (3,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_model_rejects_non_finite_input(small_models, bad):
    x = jnp.zeros((2, 1, 8, 8), jnp.float32).at[1, 0, 3, 4].set(bad)
    # concrete input: checked before any solve (without the check, a NaN input makes
    # the adaptive solver run out of steps, a misleading error).
    _assert_raises_clearly(ValueError, lambda: small_models["ode"](x, inference=True), "NaN or Inf")
    _assert_raises_clearly(ValueError, lambda: small_models["res"](x, inference=True), "NaN or Inf")


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(channels=0), "channels must be an int >= 1, got 0"),
        (dict(channels=-3), "got -3"),
        (dict(channels=4.5), "got 4.5"),
        (dict(channels=True), "got True"),
        (dict(num_classes=1, channels=4), "num_classes must be an int >= 2, got 1"),
        (dict(num_classes=0, channels=4), "got 0"),
        (dict(in_channels=0, channels=4), "in_channels must be an int >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("name", ["carrara-odeonly", "chen-resnet"])
def test_make_model_rejects_bad_sizes(name, kwargs, fragment):
    _assert_raises_clearly(ValueError, lambda: make_model(name, key=KEY, **kwargs), fragment)


def test_unknown_model_and_config_keys():
    _assert_raises_clearly(ValueError, lambda: make_model("resnet-9000", key=KEY), "'resnet-9000'", "chen-odenet")
    with pytest.raises(TypeError, match="not_an_option"):
        make_model("carrara-odeonly", channels=4, not_an_option=1, key=KEY)
    _assert_raises_clearly(ValueError, lambda: make_model("chen-odenet", channels=4, dropout=1.5, key=KEY), "1.5")


# --------------------------------------------------------------- ODEBlock, SolveConfig


@pytest.mark.parametrize(
    "change,fragment",
    [
        (dict(solver="rk45"), "'rk45'"),
        (dict(adjoint="magic"), "'magic'"),
        (dict(batch_mode="grouped"), "'grouped'"),
        (dict(max_steps=0), "got 0"),
        (dict(on_max_steps="ignore"), "'ignore'"),
    ],
)
def test_solve_config_rejects_unknown_settings(change, fragment):
    _assert_raises_clearly(ValueError, lambda: SolveConfig(**change), fragment)


@pytest.fixture(scope="module")
def block():
    return ODEBlock(ConvODEFunc(4, key=KEY), 0.0, 1.0, EULER, name="probe")


def test_odeblock_boundary(block):
    ok, stats = eqx.filter_eval_shape(block, jnp.zeros((4, 5, 5), jnp.float32))
    assert ok.shape == (4, 5, 5)
    _assert_raises_clearly(TypeError, lambda: eqx.filter_eval_shape(block, jnp.zeros((4, 5, 5), jnp.int32)),
            "'probe'", "int32")
    _assert_raises_clearly(ValueError, lambda: eqx.filter_eval_shape(block, {}), "empty")
    _assert_raises_clearly(ValueError, lambda: eqx.filter_eval_shape(
        lambda z: block(z, ts=jnp.zeros((2, 2), jnp.float32)), jnp.zeros((4, 5, 5))), "(2, 2)")


# ------------------------------------------------------------------ property-based test

_DTYPES = {"float32": jnp.float32, "int32": jnp.int32, "uint8": jnp.uint8, "bool": jnp.bool_}
_BAD_SIZES = st.sampled_from([0, -1, 1, 2.5, True])


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(
    name=st.sampled_from(["carrara-odeonly", "chen-odenet", "chen-resnet"]),
    channels=st.integers(1, 6), num_classes=st.integers(2, 12), in_channels=st.integers(1, 3),
    corrupt=st.sampled_from([None, None, None, "channels", "num_classes", "in_channels"]),
    bad_value=_BAD_SIZES, rank=st.sampled_from([4, 4, 4, 2, 3, 5]),
    match_channels=st.sampled_from([True, True, False]), hw=st.sampled_from([2, 9, 9]),
    dtype=st.sampled_from(["float32", "float32", "float32", "int32", "uint8", "bool"]),
    batch=st.integers(1, 3),
)
def test_property_model_factories(name, channels, num_classes, in_channels, corrupt,
                                  bad_value, rank, match_channels, hw, dtype, batch):
    """Valid sizes build a model whose call maps (N, C, H, W) float to (N, classes);
    every invalid size, rank, channel count, dtype or too-small image is refused by a
    jaxode check (ValueError/TypeError), never by JAX internals."""
    kwargs = dict(channels=channels, num_classes=num_classes, in_channels=in_channels)
    if name == "carrara-odeonly":
        kwargs.update(stem_kernel=3, stem_stride=2, stem_padding=1, solve=EULER, dropout=0.0)
    elif name == "chen-odenet":
        kwargs["solve"] = EULER
    # independent rule for sizes: ints (not bools), channels >= 1, classes >= 2
    sizes_ok = corrupt is None or (corrupt == "channels" and bad_value == 1) or (
        corrupt == "in_channels" and bad_value == 1)
    if corrupt is not None:
        kwargs[corrupt] = bad_value
    event("bad sizes" if not sizes_ok else "sizes ok")
    # built abstractly (`_build`): the size checks run, no random weights are drawn
    if not sizes_ok:
        with pytest.raises(ValueError) as info:
            _build(name, kwargs)
        assert _raised_in_jaxode(info.value)
        return
    model = _build(name, kwargs)
    n_cls, c_in = kwargs["num_classes"], kwargs["in_channels"]
    x_channels = c_in if match_channels else c_in + 1
    shape = (batch, x_channels, hw, hw, 1)[:rank]
    # independent rule: chen's stem shrinks 9 -> 7 -> 3 -> 1 but 2 -> 0 (too small); the
    # 3x3 stride-2 padded stem of the ODE-only net maps 2 -> 1
    big_enough = hw == 9 or name == "carrara-odeonly"
    valid = rank == 4 and match_channels and dtype == "float32" and big_enough
    x = jnp.zeros(shape, _DTYPES[dtype])
    event(f"call valid={valid}")
    if valid:
        logits, aux = _shape_of_call(model, x)
        assert logits.shape == (batch, n_cls) and logits.dtype == jnp.float32
        assert aux["steps"].shape == (batch,)
    else:
        with pytest.raises((ValueError, TypeError)) as info:
            _shape_of_call(model, x)
        assert _raised_in_jaxode(info.value), repr(info.value)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(
    solver=st.sampled_from(["euler", "rk4", "dopri5", "heun", ""]),
    rank=st.integers(0, 4), dtype=st.sampled_from(["float32", "int32"]),
    ts_len=st.sampled_from([None, 0, 3]), mode=st.sampled_from(["joint", "per_sample", "x"]),
)
def test_property_odeblock(solver, rank, dtype, ts_len, mode):
    """ODEBlock (a pointwise field: any rank is a valid state) with random solver
    names, batch modes, state ranks/dtypes and save times: valid combinations give
    outputs of the predicted shape, invalid ones a jaxode ValueError/TypeError."""
    known = solver in ("euler", "rk4", "dopri5") and mode in ("joint", "per_sample")
    event(f"known config={known}")
    if not known:
        with pytest.raises(ValueError) as info:
            SolveConfig(solver=solver, batch_mode=mode, num_steps=2)
        assert _raised_in_jaxode(info.value)
        return
    cfg = SolveConfig(solver=solver, batch_mode=mode,
                      **({"num_steps": 2} if solver != "dopri5" else {}))
    blk = ODEBlock(_Decay(), 0.0, 1.0, cfg, name="prop")
    shape = (2, 3, 1, 2)[:rank]
    z = jnp.ones(shape, _DTYPES[dtype])
    ts = None if ts_len is None else jnp.linspace(0.0, 1.0, ts_len)
    call = lambda v: blk.batched(v, ts=ts) if rank >= 1 else blk(v, ts=ts)  # noqa: E731
    valid = dtype == "float32" and ts_len != 0
    event(f"state valid={valid}")
    if valid:
        out, _ = eqx.filter_eval_shape(call, z)
        expect = shape if ts is None else (shape[:1] + (ts_len,) + shape[1:] if rank >= 1
                                           else (ts_len,))
        assert out.shape == expect
    else:
        with pytest.raises((ValueError, TypeError)) as info:
            eqx.filter_eval_shape(call, z)
        assert _raised_in_jaxode(info.value), repr(info.value)


class _Decay(eqx.Module):
    def __call__(self, t, z):
        return -z


# --------------------------------------------------------------------- data integrity


def test_dataset_record_checks():
    img = np.zeros((3, 4, 4, 1), np.uint8)
    _assert_raises_clearly(ValueError, lambda: Dataset(img, np.array([0, 1, 7], np.int32), 3, "abc", "toy"),
            "label 7", "'toy'")
    _assert_raises_clearly(ValueError, lambda: Dataset(img, np.array([0, -1, 1], np.int32), 3, "abc", "toy"),
            "label -1")
    _assert_raises_clearly(TypeError, lambda: Dataset(img.astype(np.float32), np.zeros(3, np.int32), 3, "abc",
                                       "toy"), "float32")
    _assert_raises_clearly(ValueError, lambda: Dataset(img, np.zeros(2, np.int32), 3, "abc", "toy"),
            "3 images but 2 labels")


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_folder(root, files: dict[str, bytes]):
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def test_corrupt_image_file_is_named(tmp_path):
    from jaxode.data.folder import read_image_folder

    good = {f"train/{c}/{i}.png": _png(10 * i) for c in "ab" for i in range(2)}
    _write_folder(tmp_path / "ok", good)
    ds = read_image_folder(tmp_path / "ok", "train", progress=False)
    assert len(ds) == 4 and ds.num_classes == 2
    bad = dict(good)
    bad["train/b/1.png"] = _png(5)[:30]  # truncated PNG
    _write_folder(tmp_path / "bad", bad)
    _assert_raises_clearly(ValueError, lambda: read_image_folder(tmp_path / "bad", "train", progress=False),
            "1.png")


def test_zip_truncated_and_crc_errors_name_the_file(tmp_path):
    from jaxode.data.folder import read_image_folder

    files = {f"top/train/{c}/{i}.bmp": _bmp(40 * i + (c == "b")) for c in "ab" for i in range(3)}
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    assert len(read_image_folder(path, "train", progress=False)) == 6
    raw = path.read_bytes()
    trunc = tmp_path / "trunc.zip"
    trunc.write_bytes(raw[: len(raw) // 2])
    _assert_raises_clearly(ValueError, lambda: read_image_folder(trunc, "train", progress=False), "trunc.zip")
    # flip one pixel byte of a stored member: only the zip's CRC-32 can notice
    target = _bmp(41)
    at = raw.index(target) + len(target) - 1
    flipped = tmp_path / "crc.zip"
    flipped.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    _assert_raises_clearly(ValueError, lambda: read_image_folder(flipped, "train", progress=False), "crc.zip")


def _bmp(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="BMP")
    return buf.getvalue()


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_mnist_idx_checks(tmp_path):
    imgs, lbls = np.zeros((5, 28, 28), np.uint8), np.array([0, 1, 2, 3, 4], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(lbls))
    assert len(load_mnist(tmp_path, "test")) == 5
    # label out of range
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 12, 3, 4])))
    _assert_raises_clearly(ValueError, lambda: load_mnist(tmp_path, "test"), "label 12", "t10k-labels")
    # count mismatch between the two files
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(lbls[:4]))
    _assert_raises_clearly(ValueError, lambda: load_mnist(tmp_path, "test"), "5 images", "4 labels")
    # truncated data
    p = tmp_path / "cut-idx3"
    p.write_bytes(_idx(imgs)[:-7])
    _assert_raises_clearly(ValueError, lambda: read_idx(p), "cut-idx3", "truncated")
    # wrong magic
    p.write_bytes(b"\x1f\x8b" + _idx(imgs)[2:])
    _assert_raises_clearly(ValueError, lambda: read_idx(p), "magic")
    # a gzip whose CRC fails
    gz = bytearray(gzip.compress(_idx(lbls)))
    gz[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    g = tmp_path / "labels-idx1-ubyte.gz"
    g.write_bytes(bytes(gz))
    _assert_raises_clearly(ValueError, lambda: read_idx(g), "labels-idx1-ubyte.gz")


def test_missing_paths_and_unknown_specs(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXODE_DATA", raising=False)
    missing = str(tmp_path / "nowhere")
    _assert_raises_clearly(FileNotFoundError, lambda: load_dataset("mnist", "train", root=missing), "nowhere")
    _assert_raises_clearly(FileNotFoundError, lambda: load_dataset("cifar10", "train"), "JAXODE_DATA")
    _assert_raises_clearly(FileNotFoundError, lambda: load_dataset(f"folder:{missing}", "train"), "nowhere")
    _assert_raises_clearly(ValueError, lambda: load_dataset("imagenet-22k", "train"), "'imagenet-22k'")
    _assert_raises_clearly(ValueError, lambda: load_dataset("digits", "validation"), "'validation'")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        load_dataset(f"folder:{empty}", "train")
    assert "empty.zip" in str(info.value)


# ------------------------------------------------------------------- the classify CLI


def _cli(args, tmp_path):
    from experiments.classify import main

    return main(["--no-progress", "--runs-dir", str(tmp_path / "runs"), *args])


def _cli_refused(args, tmp_path, capsys) -> str:
    """The classify CLI must stop with exit status 2 and one ``error:`` line last on
    stderr (no traceback, issue 18); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _cli(args, tmp_path)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_classify_cli_bad_names(tmp_path, capsys):
    line = _cli_refused(["--config", "no-such-config"], tmp_path, capsys)
    assert "'no-such-config'" in line and "smoke-digits" in line
    assert "'vgg'" in _cli_refused(["--model", "vgg"], tmp_path, capsys)
    assert "'svhn'" in _cli_refused(["--dataset", "svhn"], tmp_path, capsys)
    assert "gone" in _cli_refused(["--dataset", "mnist", "--data-root", str(tmp_path / "gone")],
                                  tmp_path, capsys)
    _cli_refused(["--lr-schedule", "exponential"], tmp_path, capsys)  # argparse choice
    with pytest.raises(TypeError, match="bogus"):
        from experiments.configs import get_config

        get_config("smoke-digits").replace(bogus=1)


def test_classify_cli_empty_or_single_class_data(tmp_path, capsys):
    single = {f"train/only/{i}.png": _png(i) for i in range(3)}
    single.update({f"test/only/{i}.png": _png(i) for i in range(2)})
    _write_folder(tmp_path / "single", single)
    assert "1 class" in _cli_refused(["--dataset", f"folder:{tmp_path / 'single'}"], tmp_path,
                                     capsys)
    assert "0 examples" in _cli_refused(["--train-limit", "0"], tmp_path, capsys)
    assert "1 class" in _cli_refused(["--train-limit", "1"], tmp_path, capsys)


def test_train_config_rejects_bad_values():
    from jaxode.train import TrainConfig

    for kw, frag in [(dict(lr=-0.1), "-0.1"), (dict(epochs=0), "0"),
                     (dict(lr_schedule="linear"), "'linear'"), (dict(momentum=1.5), "1.5"),
                     (dict(batch_size=2.5), "2.5")]:
        _assert_raises_clearly(ValueError, lambda kw=kw: TrainConfig(**kw), frag)
