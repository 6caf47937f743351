"""Issue 9, the remaining gaps: bad input to the experiment command lines and to the
convolutional fields, ODE-block times and solver tolerances.

- Every CLI (``experiments.dcn``, ``segment``, ``node_ew_mnist``, ``curve``, ``flow``)
  refuses bad numbers, unknown names, missing or unreadable paths and a run folder
  that already holds an earlier run, with one sentence naming the flag and the bad
  value and exit status 2, before any data is read or any JAX program is compiled
  (a JAX monitoring listener counts backend compiles) and without writing anything.
- Data that cannot train (missing, truncated, too few images for a batch, one class,
  grey images for an RGB model) ends the run with the loader's message before a run
  folder exists.
- The conv / DCN / multi-resolution fields, `SolveConfig` and `ODEBlock` refuse a bad
  state, tolerance or time at trace/construction time, naming it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import traceback
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxode import cli as _cli
from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.dcn import DCNField
from jaxode.fields.multires import MultiResField
from jaxode.ode import ODEBlock, SolveConfig

KEY = jax.random.PRNGKey(0)
CLIS = ("dcn", "segment", "node_ew_mnist", "curve", "flow")

_COMPILES: list[str] = []


def _count_compiles(name, *args, **kwargs):
    if name.endswith("backend_compile_duration"):
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test runs in an empty folder with no data and a private cache."""
    monkeypatch.chdir(tmp_path)
    (tmp_path.parent / f"{tmp_path.name}-nodata").mkdir()
    monkeypatch.setenv("JAXODE_DATA", str(tmp_path.parent / f"{tmp_path.name}-nodata"))
    monkeypatch.setenv("JAXODE_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))


def _files(root) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            path = os.path.join(folder, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _refused(module: str, argv: list[str], capsys) -> str:
    """Run ``experiments.<module>.main(argv)``: it must stop with exit status 2 without
    compiling anything.  Returns the last line of stderr (argparse's error line)."""
    name = module if "." in module else f"experiments.{module}"
    main = importlib.import_module(name).main  # before counting
    before = len(_COMPILES)
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2, (info.value.code, err)
    assert len(_COMPILES) == before, "compiled a JAX program before refusing the arguments"
    return err[-1]


def test_compile_counter_sees_compiles():
    """The "nothing compiled" assertions below can fail: a jitted call is counted."""
    before = len(_COMPILES)
    jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0))
    assert len(_COMPILES) > before


# --------------------------------------------------------------- bad arguments, per CLI

BAD_ARGS = [
    # dcn: numbers, lists, names, paths of each subcommand
    ("dcn", ["classify", "--epochs", "0"], ["--epochs", "got 0"]),
    ("dcn", ["classify", "--batch-size", "-4"], ["--batch-size", "-4"]),
    ("dcn", ["classify", "--lr", "0"], ["--lr", "got 0.0"]),
    ("dcn", ["classify", "--tol", "nan"], ["--tol", "nan"]),
    ("dcn", ["classify", "--train-limit", "0"], ["--train-limit", "got 0"]),
    ("dcn", ["classify", "--max-half-width", "0"], ["--max-half-width", "got 0"]),
    ("dcn", ["classify", "--margin", "-1"], ["--margin", "-1"]),
    ("dcn", ["classify", "--widths", "8,0,32"], ["--widths", "'0'", "'8,0,32'"]),
    ("dcn", ["classify", "--widths", "8,x"], ["--widths", "'x'"]),
    ("dcn", ["classify", "--widths", ","], ["--widths", "names nothing"]),
    ("dcn", ["classify", "--model", "dcn_odee"], ["--model", "'dcn_odee'"]),
    ("dcn", ["classify", "--config", "tiny"], ["--config", "'tiny'"]),
    ("dcn", ["classify", "--support", "exact"], ["--support", "'exact'"]),
    ("dcn", ["classify", "--data-root", "missing-data"], ["--data-root", "'missing-data'",
                                                          "does not exist"]),
    ("dcn", ["small-data", "--seeds", "0,x"], ["--seeds", "'x'"]),
    ("dcn", ["small-data", "--seeds", "0,-1"], ["--seeds", "'-1'"]),
    ("dcn", ["small-data", "--per-class", "0"], ["--per-class", "got 0"]),
    ("dcn", ["small-data", "--epoch-factor", "-1"], ["--epoch-factor", "-1"]),
    ("benchmarks.dcn_kernel_cost", ["--repeats", "0"], ["--repeats", "got 0"]),
    ("benchmarks.dcn_kernel_cost", ["--batch", "-2"], ["--batch", "-2"]),
    ("benchmarks.dcn_kernel_cost", ["--tol", "inf"], ["--tol", "inf"]),
    ("benchmarks.dcn_kernel_cost", ["--modes", "exact,fft"], ["--modes", "'fft'", "separable"]),
    ("dcn", ["benchmark"], ["'benchmark'"]),
    # segment
    ("segment", ["--epochs", "0"], ["--epochs", "got 0"]),
    ("segment", ["--batch-size", "-1"], ["--batch-size", "-1"]),
    ("segment", ["--crop", "48", "0"], ["--crop", "got 0", "48 0"]),
    ("segment", ["--widths", "4", "4", "0", "4"], ["--widths", "got 0"]),
    ("segment", ["--blocks", "0"], ["--blocks", "got 0"]),
    ("segment", ["--field-modules", "0"], ["--field-modules", "got 0"]),
    ("segment", ["--rtol", "-1"], ["--rtol", "-1.0"]),
    ("segment", ["--atol", "nan"], ["--atol", "nan"]),
    ("segment", ["--lr-segnode", "inf"], ["--lr-segnode", "inf"]),
    ("segment", ["--max-train-batches", "0"], ["--max-train-batches", "got 0"]),
    ("segment", ["--eval-limit", "0"], ["--eval-limit", "got 0"]),
    ("segment", ["--table2", "--table2-batch", "0"], ["--table2-batch", "got 0"]),
    ("segment", ["--table2", "--memory-budget-gb", "0"], ["--memory-budget-gb", "got 0.0"]),
    ("segment", ["--models", "segnode,unet"], ["--models", "'unet'", "segnode, baseline"]),
    ("segment", ["--models", " , "], ["--models", "names nothing"]),
    ("segment", ["--solver", "rk45"], ["--solver", "'rk45'", "dopri5"]),
    ("segment", ["--solver", "euler"], ["--solver", "'euler'", "--num-steps"]),
    ("segment", ["--num-steps", "4"], ["--num-steps", "'dopri5'"]),
    ("segment", ["--solver", "euler", "--num-steps", "0"], ["--num-steps", "got 0"]),
    ("segment", ["--config", "camvid"], ["--config", "'camvid'"]),
    ("segment", ["--config", "camvid-small", "--data-root", "nope.zip"],
     ["--data-root", "'nope.zip'", "does not exist"]),
    # node_ew_mnist
    ("node_ew_mnist", ["--schedule", "euler:x"], ["--schedule", "'euler:x'"]),
    ("node_ew_mnist", ["--schedule", "euler:0,adjoint:2"], ["--schedule", "'euler:0'"]),
    ("node_ew_mnist", ["--schedule", "sgd:3"], ["--schedule", "'sgd:3'"]),
    ("node_ew_mnist", ["--euler-steps", "0"], ["--euler-steps", "got 0"]),
    ("node_ew_mnist", ["--batch-size", "0"], ["--batch-size", "got 0"]),
    ("node_ew_mnist", ["--lr", "-0.1"], ["--lr", "-0.1"]),
    ("node_ew_mnist", ["--tol", "0"], ["--tol", "got 0.0"]),
    ("node_ew_mnist", ["--train-limit", "-5"], ["--train-limit", "-5"]),
    ("node_ew_mnist", ["--models", "node-ew,resnet"], ["--models", "'resnet'"]),
    ("node_ew_mnist", ["--strategies", "adjoint-only"], ["--strategies", "'adjoint-only'"]),
    ("node_ew_mnist", ["--dataset", "imagenet"], ["--dataset", "'imagenet'", "mnist"]),
    ("node_ew_mnist", ["--dataset", "folder:"], ["--dataset", "'folder:'"]),
    ("node_ew_mnist", ["--dynamics", "cubic"], ["--dynamics", "'cubic'"]),
    ("node_ew_mnist", ["--data-root", "missing-data"], ["--data-root", "does not exist"]),
    # curve
    ("curve", ["--hidden", "0"], ["--hidden", "got 0"]),
    ("curve", ["--euler-iters", "0"], ["--euler-iters", "got 0"]),
    ("curve", ["--euler-steps", "-1"], ["--euler-steps", "-1"]),
    ("curve", ["--finetune-iters", "-1"], ["--finetune-iters", "-1"]),
    ("curve", ["--pure-iters", "0"], ["--pure-iters", "got 0"]),
    ("curve", ["--pure-seconds", "0"], ["--pure-seconds", "got 0.0"]),
    ("curve", ["--tol", "nan"], ["--tol", "nan"]),
    ("curve", ["--lr", "-1"], ["--lr", "-1.0"]),
    ("curve", ["--hidden", "many"], ["--hidden", "'many'"]),
    ("curve", ["--schedule", "euler:x"], ["--schedule", "'euler:x'"]),
    ("curve", ["--schedule", "adjoint:5,euler:5"], ["--schedule", "'adjoint:5,euler:5'"]),
    # flow
    ("flow", ["--iters", "0"], ["--iters", "got 0"]),
    ("flow", ["--batch", "0"], ["--batch", "got 0"]),
    ("flow", ["--hidden", "-1"], ["--hidden", "-1"]),
    ("flow", ["--depth", "0"], ["--depth", "got 0"]),
    ("flow", ["--g-hidden", "0"], ["--g-hidden", "got 0"]),
    ("flow", ["--grid", "1"], ["--grid", "got 1", ">= 2"]),
    ("flow", ["--test-size", "0"], ["--test-size", "got 0"]),
    ("flow", ["--tol", "inf"], ["--tol", "inf"]),
    ("flow", ["--densities", "moons,spiral"], ["--densities", "'spiral'", "checkerboard"]),
    ("flow", ["--densities", ","], ["--densities", "names nothing"]),
]


@pytest.mark.parametrize("module, argv, fragments", BAD_ARGS,
                         ids=[f"{m}:{' '.join(a)}" for m, a, _ in BAD_ARGS])
def test_cli_refuses_bad_arguments(module, argv, fragments, capsys, tmp_path):
    line = _refused(module, argv, capsys)
    assert "error: argument" in line, line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in: {line}"
    assert _files(tmp_path) == {} and os.listdir(tmp_path) == [], "wrote files"


def test_segment_old_data_path_flag_still_works_and_warns(capsys):
    """``--data-path`` is the old name of segment's ``--data-root``: same value, a
    FutureWarning naming the new flag."""
    with pytest.warns(FutureWarning, match="--data-root"):
        line = _refused("segment", ["--config", "camvid-small", "--data-path", "nope.zip"],
                        capsys)
    assert "--data-root" in line and "'nope.zip'" in line and "does not exist" in line


def test_every_cli_checks_its_arguments(capsys):
    """Each CLI refuses at least one bad number and one bad name in the table above."""
    assert {m for m, _, _ in BAD_ARGS if "." not in m} == set(CLIS)
    for m in CLIS:
        assert sum(1 for mm, a, _ in BAD_ARGS if mm == m) >= 5


# ---------------------------------------------------------------- earlier runs are kept

OCCUPIED = [
    ("dcn", ["classify", "--name", "old"], "runs/old", "--name"),
    ("dcn", ["classify"], "runs/dcn-dcn_ode-smoke-s0", "--name"),  # the default folder
    ("dcn", ["small-data", "--seeds", "0,1", "--run", "old"],  # --run: old name of --name
     "runs/old/dcn-small-dcn_ode-20-s1", "--name"),  # one seed's folder of several
    ("segment", ["--run-name", "old"], "runs/old", "--run-name"),
    ("segment", ["--table2"], "runs/segment-smoke-table2", "--run-name"),
    ("node_ew_mnist", ["--smoke", "--name", "old"], "runs/old", "--name"),
    ("curve", ["--smoke", "--out", "old/"], "old/", "--name"),  # --out: deprecated alias
    ("flow", ["--smoke"], "runs/flow", "--name"),  # the default folder
]


@pytest.mark.parametrize("module, argv, folder, flag", OCCUPIED,
                         ids=[f"{m}:{' '.join(a)}" for m, a, _, _ in OCCUPIED])
def test_rerun_into_an_earlier_run_loses_nothing(module, argv, folder, flag, capsys, tmp_path):
    run = tmp_path / folder
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"epochs": 3}')
    (run / "metrics.csv").write_text("epoch,loss\n1,2.3\n")
    (run / "summary.json").write_text('{"acc": 0.5}')
    (run / "checkpoints" / "ckpt-0003.eqx").write_bytes(os.urandom(64))
    (run / "checkpoints" / "latest.json").write_text('{"epoch": 3}')
    before = _files(tmp_path)
    line = _refused(module, argv, capsys)
    for frag in (flag, repr(os.path.join(*folder.split("/"))), "already holds", "checkpoints",
                 "move that folder away"):
        assert frag in line, f"{frag!r} not in: {line}"
    assert _files(tmp_path) == before


def test_kernel_cost_keeps_an_earlier_result_file(capsys, tmp_path):
    (tmp_path / "cost.json").write_text('{"rows": []}')
    line = _refused("benchmarks.dcn_kernel_cost", ["--out", "cost.json"], capsys)
    assert "--out" in line and "'cost.json' already exists" in line
    assert (tmp_path / "cost.json").read_text() == '{"rows": []}'


def test_run_folder_rules(capsys, tmp_path, monkeypatch):
    """An empty folder may be used; a path under a file or in an unwritable folder, and
    an unreadable input path, are refused naming the path."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    parser = argparse.ArgumentParser(prog="p")
    _cli.check_new_run_dir(parser, "--out", "empty")  # no error
    _cli.check_new_run_dir(parser, "--out", "new/deeper")  # no error, nothing made
    assert sorted(os.listdir(tmp_path)) == ["a-file", "empty"]
    line = _refused("flow", ["--out", "a-file/run"], capsys)
    assert "'a-file/run'" in line and "is a file, not a folder" in line
    line = _refused("curve", ["--name", "./a-file"], capsys)
    assert "'./a-file' is an existing file" in line
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as if permissions lacked
    line = _refused("flow", ["--out", "new"], capsys)
    assert "cannot write under" in line and "permission denied" in line
    line = _refused("dcn", ["classify", "--data-root", "empty", "--run", "new"], capsys)
    assert "'empty' is not readable" in line


# -------------------------------------------------------------- data that cannot train


def _stopped(main, argv, capsys) -> str:
    """`main(argv)` must end with exit status 2 and, as the last line on stderr (after
    any progress bar), one line ``error: ...`` (no traceback); returns that line."""
    before = len(_COMPILES)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, info.value.code
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err
    assert len(_COMPILES) == before, "compiled a JAX program before the data check"
    return err.strip().splitlines()[-1]


def test_dcn_data_that_cannot_train(tmp_path, make_image_folder, capsys):
    from experiments.dcn import main

    msg = _stopped(capsys=capsys, main=main, argv=["classify", "--run", "new"])  # $JAXODE_DATA holds nothing
    assert "'cifar10' not found" in msg and os.environ["JAXODE_DATA"] in msg
    make_image_folder(tmp_path / "few", {"cat": 2, "dog": 2})
    msg = _stopped(capsys=capsys, main=main, argv=["classify", "--data-root", "few", "--batch-size", "16", "--run", "new"])
    assert "--batch-size 16" in msg and "(4 images)" in msg
    make_image_folder(tmp_path / "one", {"cat": 20})
    msg = _stopped(capsys=capsys, main=main, argv=["classify", "--data-root", "one", "--batch-size", "16", "--run", "new"])
    assert "1 class" in msg and "at least two" in msg
    make_image_folder(tmp_path / "grey", {"0": 10, "1": 10}, size=(28, 28), mode="L")
    msg = _stopped(capsys=capsys, main=main, argv=["classify", "--data-root", "grey", "--batch-size", "16", "--run", "new"])
    assert "(28, 28, 1)" in msg and "RGB" in msg
    with zipfile.ZipFile(tmp_path / "few.zip", "w") as z:
        for name in sorted(_files(tmp_path / "few")):
            z.write(tmp_path / "few" / name, f"few/{name}")
    data = (tmp_path / "few.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    msg = _stopped(capsys=capsys, main=main, argv=["classify", "--data-root", "cut.zip", "--run", "new"])
    assert "cut.zip" in msg
    assert not (tmp_path / "new").exists() and not (tmp_path / "runs").exists()


def test_valid_dcn_arguments_reach_training(tmp_path, monkeypatch, make_image_folder):
    """The checks pass valid input through: each run gets its own (new) folder."""
    from experiments import dcn

    calls = []

    def fake_train(name, cfg, train, test, run_path, seed, *args, **kwargs):
        calls.append((name, len(train), run_path, seed))
        return {"best_eval_acc": 0.5}

    monkeypatch.setattr(dcn, "_train", fake_train)
    make_image_folder(tmp_path / "two", {"cat": 6, "dog": 6})
    (tmp_path / "runs").mkdir()  # an existing parent folder is fine
    dcn.main(["classify", "--data-root", "two", "--batch-size", "4"])
    dcn.main(["small-data", "--data-root", "two", "--batch-size", "4", "--per-class", "3",
              "--seeds", "0,1", "--run", "small"])
    assert calls == [("dcn_ode", 12, os.path.join("runs", "dcn-dcn_ode-smoke-s0"), 0),
                     ("dcn_ode", 6, os.path.join("runs", "small", "dcn-small-dcn_ode-3-s0"), 0),
                     ("dcn_ode", 6, os.path.join("runs", "small", "dcn-small-dcn_ode-3-s1"), 1)]


def test_valid_segment_arguments_reach_training(tmp_path, monkeypatch):
    from experiments import segment

    calls = []

    def fake_train(name, cfg, splits, *a, **k):
        calls.append((name, cfg["batch_size"], len(splits["train"].images)))
        return {"params": 1, "val_miou": 0.0, "test_miou": 0.0}, [{"model": name, "epoch": 1}]

    monkeypatch.setattr(segment, "train_one", fake_train)
    segment.main(["--batch-size", "64", "--run-name", "ok"])
    assert calls == [("segnode", 64, 64), ("baseline", 64, 64)]
    assert (tmp_path / "runs" / "ok" / "config.json").exists()


def test_segment_data_that_cannot_train(tmp_path, capsys):
    from experiments.segment import main

    msg = _stopped(capsys=capsys, main=main, argv=["--config", "camvid-small"])  # $JAXODE_DATA holds nothing
    assert "camvid-segnet.zip" in msg and "does not exist" in msg
    msg = _stopped(capsys=capsys, main=main, argv=["--batch-size", "100"])  # the synthetic set has 64 images
    assert "--batch-size 100" in msg and "(64 images)" in msg
    assert not (tmp_path / "runs").exists()


def test_node_ew_missing_data_is_named_before_anything_is_written(tmp_path, capsys):
    from experiments.node_ew_mnist import main

    msg = _stopped(main, ["--out", "new"], capsys)  # one line, exit 2 (issue 18)
    assert os.environ["JAXODE_DATA"] in msg and "mnist" in msg
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------- fields, tolerances, times


def _error(fn, exc_type) -> str:
    with pytest.raises(exc_type) as info:
        fn()
    frame = traceback.extract_tb(info.value.__traceback__)[-1].filename
    assert f"{os.sep}jaxode{os.sep}" in frame, f"raised outside jaxode: {info.value!r}"
    return str(info.value)


@pytest.mark.parametrize("make", [lambda: ConvODEFunc(4, key=KEY),
                                  lambda: DCNField(4, "srf", key=KEY)],
                         ids=["ConvODEFunc", "DCNField"])
def test_conv_fields_check_their_state(make):
    field = make()
    name = type(field).__name__
    t = jnp.zeros(())
    out = eqx.filter_eval_shape(field, t, jnp.zeros((4, 6, 6)))
    assert out.shape == (4, 6, 6)
    msg = _error(lambda: eqx.filter_eval_shape(field, t, jnp.zeros((3, 6, 6))), ValueError)
    assert name in msg and "(4, H, W)" in msg and "(3, 6, 6)" in msg and "channels=3" in msg
    msg = _error(lambda: eqx.filter_eval_shape(field, t, jnp.zeros((2, 4, 6, 6))), ValueError)
    assert "(2, 4, 6, 6)" in msg and "vmap" in msg
    msg = _error(lambda: eqx.filter_eval_shape(field, t, jnp.zeros((4, 6, 6), jnp.int32)),
                 TypeError)
    assert name in msg and "int32" in msg


def test_multires_field_checks_branches():
    field = MultiResField((4, 4, 4, 4), blocks=1, key=KEY)
    t = jnp.zeros(())
    z = tuple(jnp.zeros((4, 15 // 2**k + (k > 0), 16 // 2**k)) for k in range(4))
    assert [o.shape for o in eqx.filter_eval_shape(field, t, z)] == [x.shape for x in z]
    msg = _error(lambda: eqx.filter_eval_shape(field, t, (jnp.zeros((3, 16, 16)),) + z[1:]),
                 ValueError)
    assert "branch 0" in msg and "(4, H, W)" in msg and "(3, 16, 16)" in msg
    msg = _error(lambda: eqx.filter_eval_shape(field, t, z[:3]), ValueError)
    assert "4 feature maps" in msg and "length 3" in msg
    bad = (z[0], jnp.zeros((4, 5, 5))) + z[2:]
    msg = _error(lambda: eqx.filter_eval_shape(field, t, bad), ValueError)
    assert "branch 1" in msg and "(5, 5)" in msg and "(8, 8)" in msg


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(rtol=-1.0), "rtol"), (dict(rtol=float("nan")), "rtol"), (dict(rtol=0.0), "rtol"),
    (dict(rtol=float("inf")), "rtol"), (dict(atol=-1e-3), "atol"),
    (dict(atol=float("nan")), "atol"),
])
def test_solve_config_refuses_bad_tolerances(kwargs, fragment):
    msg = _error(lambda: SolveConfig(**kwargs), ValueError)
    value = next(iter(kwargs.values()))
    assert fragment in msg and ("nan" if math.isnan(value) else repr(value).rstrip("0")) in msg


@pytest.mark.parametrize("t0, t1, bad", [(float("nan"), 1.0, "t0"), (0.0, float("inf"), "t1"),
                                         (0.0, -float("inf"), "t1")])
def test_odeblock_refuses_non_finite_times(t0, t1, bad):
    msg = _error(lambda: ODEBlock(lambda t, z: -z, t0, t1, name="probe"), ValueError)
    assert "'probe'" in msg and f"{bad} must be finite" in msg


def test_valid_edge_values_and_traced_values_still_work():
    """atol = 0, a reversed interval and values under tracing are accepted."""
    assert float(SolveConfig(atol=0.0).atol) == 0.0
    block = ODEBlock(lambda t, z: -z, 1.0, 0.0)
    assert float(block.t0) == 1.0 and float(block.t1) == 0.0
    t1 = jax.jit(lambda t: ODEBlock(lambda s, z: -z, 0.0, t).t1)(2.0)
    assert float(t1) == 2.0
    rtol = jax.jit(lambda r: SolveConfig(rtol=r).rtol)(1e-4)
    assert float(rtol) == pytest.approx(1e-4)


# --------------------------------------------------------------------- property test


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(value=st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.none()),
       rule=st.sampled_from(["positive", "non_negative", "at_least_2"]))
def test_property_number_checks(value, rule):
    """`check_numbers` accepts exactly the finite, non-bool numbers above the bound
    (None = flag not given), and names the flag and the value otherwise."""
    parser = _RaisingParser(prog="p")
    args = argparse.Namespace(size=value)
    kwargs = {"positive": dict(positive=("size",)), "non_negative": dict(non_negative=("size",)),
              "at_least_2": dict(at_least={"size": 2})}[rule]
    bound, strict = {"positive": (0, True), "non_negative": (0, False),
                     "at_least_2": (2, False)}[rule]
    ok = value is None or (type(value) in (int, float) and math.isfinite(value)
                           and (value > bound if strict else value >= bound))
    if ok:
        _cli.check_numbers(parser, args, **kwargs)
        return
    with pytest.raises(ValueError) as info:
        _cli.check_numbers(parser, args, **kwargs)
    assert "--size" in str(info.value) and f"got {value!r}" in str(info.value)


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose `error` raises (so a property test can read the message)."""

    def error(self, message):
        raise ValueError(message)


# ------------------------------------------- GroupNorm widths and the classify CLI

# A width that `group_norm` (32 groups) cannot split is refused at the command line
# with the same rule (`jaxode.nn.layers.group_norm_groups`), before anything is built.
WIDTH_ARGS = [
    ("dcn", ["classify", "--widths", "32,40,128"], ["--widths", "width 40", "(in 32,40,128)",
                                                    "multiple of 32", "e.g. 32 or 64"]),
    ("dcn", ["classify", "--widths", "8,16,48"], ["--widths", "width 48", "48 channels"]),
    ("dcn", ["small-data", "--widths", "33,64,128"], ["--widths", "width 33"]),
    ("benchmarks.dcn_kernel_cost", ["--widths", "16,32,100"], ["--widths", "width 100",
                                                      "e.g. 96 or 128"]),
    ("classify", ["--channels", "40"], ["--channels", "width 40", "cannot be split into 32",
                                        "e.g. 32 or 64"]),
    ("classify", ["--config", "carrara-cifar10-odeonly", "--channels", "250"],
     ["--channels", "width 250", "e.g. 224 or 256"]),
]

# classify: numbers and names that used to fail after the data were read (or as a
# traceback from float()/int()), now refused by `classify.check_args`.
CLASSIFY_BAD_ARGS = [
    (["--epochs", "0"], ["--epochs", "got 0"]),
    (["--batch-size", "-1"], ["--batch-size", "-1"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size", "got 0"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--tol", "0"], ["--tol", "got 0.0"]),
    (["--channels", "0"], ["--channels", "got 0"]),
    (["--euler-steps", "0"], ["--euler-steps", "got 0"]),
    (["--max-train-batches", "0"], ["--max-train-batches", "got 0"]),
    (["--train-limit", "-5"], ["--train-limit", "-5"]),  # was: silently all but 5
    (["--weight-decay=-1e-4"], ["--weight-decay", "-0.0001"]),
    (["--dropout", "1.0"], ["--dropout", "[0, 1)", "1.0"]),
    (["--ema", "1.5"], ["--ema", "(0, 1)", "1.5"]),
    (["--solver", "rk45"], ["--solver", "'rk45'", "dopri5"]),
    (["--schedule", "euler:0"], ["--schedule", "'euler:0'"]),
    (["--tol-sweep", "1e-2,x"], ["--tol-sweep", "'1e-2,x'", "e.g. 1e-1,1e-2,1e-3"]),
    (["--tol-sweep", "1e-2,0"], ["--tol-sweep", "finite number >= 1e-06"]),
    (["--milestones", "60,x"], ["--milestones", "'60,x'"]),
    (["--milestones", "100,60"], ["--milestones", "increasing order"]),
]


@pytest.mark.parametrize("module, argv, fragments",
                         WIDTH_ARGS + [("classify", a, f) for a, f in CLASSIFY_BAD_ARGS],
                         ids=[f"{m}:{' '.join(a)}" for m, a, _ in WIDTH_ARGS]
                         + [f"classify:{' '.join(a)}" for a, _ in CLASSIFY_BAD_ARGS])
def test_cli_refuses_bad_widths_and_classify_arguments(module, argv, fragments, capsys,
                                                       tmp_path):
    line = _refused(module, argv, capsys)
    assert "error: argument" in line, line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in: {line}"
    assert os.listdir(tmp_path) == [], "wrote files"


def test_width_rule_is_group_norms_rule():
    """`check_widths` refuses exactly the widths `group_norm` refuses (checked through
    `eqx.filter_eval_shape`: nothing compiled) and agrees with an independent rule:
    a positive int <= 32 or a multiple of 32."""
    from jaxode.nn.layers import group_norm, group_norm_groups

    parser = _RaisingParser(prog="p")
    for w in list(range(1, 131)) + [255, 256, 384, 1000, 1024, 0, -32]:
        expected_ok = w >= 1 and (w <= 32 or w % 32 == 0)
        try:
            eqx.filter_eval_shape(group_norm, w)
            built = True
        except ValueError:
            built = False
        try:
            _cli.check_widths(parser, "widths", [8, w])
            passed = True
        except ValueError as e:
            passed = False
            assert f"width {w}" in str(e) and "--widths" in str(e)
        assert passed == built == expected_ok, w
    for bad in (2.0, True, "32"):  # not ints: refused by the rule itself, named
        with pytest.raises(ValueError, match=f"positive int, got {bad!r}"):
            _cli.check_widths(parser, "channels", bad)
    assert group_norm_groups(np.int64(64)) == 32 and group_norm_groups(12) == 12
    _cli.check_widths(parser, "widths", None)  # flag not given: nothing to check


def test_segment_widths_are_not_bound_to_32_groups(tmp_path, monkeypatch):
    """HRNet/SegNode use `group_norm_for` (largest divisor <= 32), so any positive width
    builds, e.g. the paper's 48, 96, 192, 384: segment must not apply the classifier
    rule."""
    from experiments import segment

    calls = []

    def fake_train(name, cfg, splits, *a, **k):
        calls.append((name, cfg["widths"]))
        return {"params": 1, "val_miou": 0.0, "test_miou": 0.0}, [{"model": name, "epoch": 1}]

    monkeypatch.setattr(segment, "train_one", fake_train)
    segment.main(["--widths", "5", "7", "40", "50", "--run-name", "odd"])
    assert calls == [("segnode", (5, 7, 40, 50)), ("baseline", (5, 7, 40, 50))]


def _earlier_run(folder) -> None:
    """What a finished run leaves: config, metrics, summary and checkpoints."""
    (folder / "checkpoints").mkdir(parents=True)
    from experiments.configs import get_config

    cfg = get_config("smoke-digits").replace(name=folder.name)
    (folder / "config.json").write_text(json.dumps({"classify": cfg.to_dict()}))
    (folder / "metrics.csv").write_text("epoch,loss\n1,2.3\n")
    (folder / "summary.json").write_text('{"acc": 0.5}')
    (folder / "checkpoints" / "ckpt-0003.eqx").write_bytes(os.urandom(64))
    (folder / "checkpoints" / "latest.json").write_text('{"epoch": 3}')


def test_classify_rerun_keeps_the_earlier_run(tmp_path, monkeypatch, capsys):
    """The README command run twice: the second run goes to ``smoke-digits-2`` (then
    ``-3``) and says so; the first run's files stay byte for byte.  An explicit
    ``--name`` of an occupied folder is refused (exit 2, advice: another --name or
    --resume); ``--resume`` continues the named folder."""
    from experiments import classify

    calls = []

    def fake_run(cfg, *, resume=False, progress=True, log=print, **_):
        path = os.path.join(cfg.runs_dir, cfg.name)
        calls.append((cfg.name, resume, sorted(os.listdir(path)) if os.path.isdir(path)
                       else None))
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:  # as RunDir would
            f.write(cfg.name)
        return {}

    monkeypatch.setattr(classify, "run", fake_run)
    _earlier_run(tmp_path / "runs" / "smoke-digits")
    earlier = _files(tmp_path / "runs" / "smoke-digits")
    assert classify.main(["--config", "smoke-digits"]) == 0
    out = capsys.readouterr().out
    for frag in (os.path.join("runs", "smoke-digits"), "already holds an earlier run",
                 "kept as it is", f"goes to {os.path.join('runs', 'smoke-digits-2')}",
                 "--name", "--resume"):
        assert frag in out, f"{frag!r} not in: {out}"
    assert classify.main(["--config", "smoke-digits"]) == 0
    assert "smoke-digits-3" in capsys.readouterr().out
    claim = [".run-claim"]  # the exclusive claim made before the data were read
    assert calls == [("smoke-digits-2", False, claim), ("smoke-digits-3", False, claim)]
    assert _files(tmp_path / "runs" / "smoke-digits") == earlier
    assert (tmp_path / "runs" / "smoke-digits-2" / "config.json").read_text() == "smoke-digits-2"

    line = _refused("classify", ["--name", "smoke-digits-2"], capsys)
    for frag in ("--name", repr(os.path.join("runs", "smoke-digits-2")), "already holds",
                 "pass another --name", "or pass --resume to continue it"):
        assert frag in line, f"{frag!r} not in: {line}"
    assert classify.main(["--resume"]) == 0  # the config's own folder, files intact
    assert calls[-1] == ("smoke-digits", True,
                         ["checkpoints", "config.json", "metrics.csv", "summary.json"])
    assert classify.main(["--name", "fresh"]) == 0  # a new name: claimed before the run
    assert calls[-1] == ("fresh", False, claim)
    (tmp_path / "runs" / "empty").mkdir()  # an empty folder may be used by name
    assert classify.main(["--name", "empty"]) == 0 and calls[-1] == ("empty", False, claim)


def test_classify_failed_run_leaves_no_folder_and_run_refuses_overwrite(tmp_path, capsys):
    """A run that stops before writing anything (here: a missing dataset) removes the
    folder it reserved, so the next run gets the plain name again; `classify.run`
    itself (the Python API) refuses a fresh run into an occupied folder before reading
    any data."""
    from experiments import classify
    from experiments.configs import get_config

    assert "nowhere" in _refused("classify", ["--dataset", "folder:nowhere"], capsys)
    assert os.listdir(tmp_path / "runs") == []
    _earlier_run(tmp_path / "runs" / "smoke-digits")
    earlier = _files(tmp_path)
    # tried smoke-digits-2:
    assert "nowhere" in _refused("classify", ["--dataset", "folder:nowhere"], capsys)
    assert _files(tmp_path) == earlier
    assert sorted(os.listdir(tmp_path / "runs")) == ["smoke-digits"]
    before = len(_COMPILES)
    with pytest.raises(FileExistsError, match="already holds an earlier run"):
        classify.run(get_config("smoke-digits").replace(dataset="folder:nowhere"))
    assert _files(tmp_path) == earlier and len(_COMPILES) == before
