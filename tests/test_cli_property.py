"""Property test of the experiment command lines (issue 18).

Hypothesis draws a command line of one experiment: some valid flags, at least one
invalid flag value (or an invalid combination), in random order.  Whatever it draws,
the program must exit with status 2, print one ``error`` line (last on stderr) that
says what to do, print no traceback, write no file, and compile nothing -- all before
any data are read.

The invalid values are drawn from tables per program; each entry is invalid on its
own, so any draw holds at least one error (the oracle).  Unknown flags are left out:
argparse's own "unrecognized arguments" line gives no advice beyond the usage line.
"""

import os
import tempfile

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name.endswith("backend_compile_duration")
    else None)

# per program: (valid flag groups, invalid flag groups); a group is one flag + value(s)
TABLES = {
    "classify": (
        [["--epochs", "2"], ["--lr", "0.05"], ["--batch-size", "8"], ["--tol", "1e-3"],
         ["--seed", "1"], ["--no-progress"], ["--channels", "16"], ["--solver", "euler"],
         ["--tol-sweep", "1e-2,1e-3"], ["--dropout", "0.1"], ["--max-steps", "100"]],
        [["--epochs", "0"], ["--epochs", "-3"], ["--lr", "nan"], ["--lr", "-1"],
         ["--batch-size", "0"], ["--tol", "1e-12"], ["--tol", "inf"],
         ["--tol-sweep", "1e-12"], ["--tol-sweep", "1e-2,x"], ["--channels", "40"],
         ["--dropout", "1.5"], ["--ema", "1"], ["--solver", "rk45"],
         ["--schedule", "euler:x"], ["--milestones", "100,60"], ["--model", "vgg"],
         ["--config", "nope"], ["--dataset", "svhn"], ["--data-root", "missing"],
         ["--max-steps", "0"], ["--model", "carrara-resnet"], ["--resume", "--name", "none"],
         ["--lr-schedule", "linear"], ["--epochs", "two"]]),
    "node_ew_mnist": (
        [["--lr", "0.01"], ["--tol", "1e-2"], ["--batch-size", "32"], ["--seed", "2"],
         ["--models", "odenet"], ["--strategies", "pure-adjoint"], ["--smoke"]],
        [["--lr", "0"], ["--tol", "nan"], ["--batch-size", "-1"], ["--euler-steps", "0"],
         ["--schedule", "euler:0"], ["--models", "node-ew,resnet"],
         ["--strategies", "adjoint-only"], ["--dataset", "imagenet"],
         ["--data-root", "missing"], ["--dynamics", "cubic"]]),
    "flow": (
        [["--iters", "5"], ["--batch", "16"], ["--tol", "1e-2"], ["--densities", "moons"]],
        [["--iters", "0"], ["--batch", "0"], ["--tol", "inf"], ["--grid", "1"],
         ["--densities", "moons,spiral"], ["--hidden", "-1"]]),
    "curve": (
        [["--hidden", "8"], ["--lr", "0.01"], ["--tol", "1e-2"]],
        [["--hidden", "0"], ["--lr", "-1"], ["--tol", "nan"], ["--schedule", "euler:x"],
         ["--pure-iters", "0"]]),
    "transfer": (
        [["--quick-train"], ["--seed", "1"], ["--image-size", "16"], ["--per-class", "5"]],
        [["--classes", "500"], ["--per-class", "60"], ["--folds", "1"],
         ["--time-step", "2"], ["--finetune-t", "1.5"], ["--checkpoint", "nope"],
         ["--quick-models", "vgg"], ["--svm-solver", "sgd"]]),
}
ADVICE = ("pass", "choose", "use", "give", "drop", "write", "lower", "expected", "add",
          "remove", "start", "fix", "e.g.")


@st.composite
def command_lines(draw):
    module = draw(st.sampled_from(sorted(TABLES)))
    valid, invalid = TABLES[module]
    groups = draw(st.lists(st.sampled_from(valid), max_size=4, unique_by=lambda g: g[0]))
    bad = draw(st.lists(st.sampled_from(invalid), min_size=1, max_size=3,
                        unique_by=lambda g: g[0]))
    used = {g[0] for g in bad}
    groups = [g for g in groups if g[0] not in used]  # the bad value must not be overridden
    parts = draw(st.permutations(groups + bad))
    if module == "transfer" and not any(g[0] in ("--quick-train", "--checkpoint") for g in parts):
        parts = [["--quick-train"]] + list(parts)
    return module, [a for g in parts for a in g]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                            HealthCheck.function_scoped_fixture])
@given(command_lines())
def test_any_invalid_command_line_exits_2_with_advice(stderr_capture, case):
    import importlib

    module, argv = case
    main = importlib.import_module(f"experiments.{module}").main
    before = len(_COMPILES)
    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        os.chdir(tmp)
        try:
            with stderr_capture() as cap:
                with pytest.raises(SystemExit) as info:
                    main(argv)
            err = cap.err()
            assert info.value.code == 2, (module, argv, info.value.code, err)
            assert "Traceback" not in err, (module, argv, err)
            line = err.strip().splitlines()[-1]
            assert "error: " in line, (module, argv, err)
            assert any(w in line.lower() for w in ADVICE), (module, argv, line)
            assert os.listdir(tmp) == [], (module, argv, os.listdir(tmp))
        finally:
            os.chdir(old)
    assert len(_COMPILES) == before, (module, argv)


@pytest.fixture
def stderr_capture(monkeypatch, tmp_path):
    """A factory of stderr captures, one per hypothesis example (pytest's capsys is per
    test, not per example; the factory itself holds no state between examples)."""
    import contextlib
    import io

    monkeypatch.setenv("JAXODE_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("JAXODE_CACHE", str(tmp_path / "cache"))

    class _Cap:
        def __init__(self):
            self.buf = io.StringIO()

        def err(self):
            return self.buf.getvalue()

    @contextlib.contextmanager
    def factory():
        cap = _Cap()
        with contextlib.redirect_stderr(cap.buf), contextlib.redirect_stdout(io.StringIO()):
            yield cap

    return factory
