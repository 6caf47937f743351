"""benchmarks.scaling: with 2 CPU host devices (a fresh process, XLA_FLAGS set before
jax starts), the sharded loss and gradients of one training batch equal the
single-device ones up to float32 summation order, and the CLI writes its files.

The quick fixed-step solver keeps the compilations short; the adaptive case (the
error norm all-reduced over the sharded batch, equal step counts) is covered through
`fit` on 4 host devices by tests/test_train.py::test_data_parallel_four_host_devices_match_one
and is what `python -m benchmarks.scaling` itself measures."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_host_devices_give_the_single_device_loss_and_gradients(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--devices", "2", "--batch", "8",
           "--channels", "4", "--solver", "euler", "--euler-steps", "2", "--proof-only",
           "--platform", "cpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("scaling-*.json")).read_text())
    assert next(tmp_path.glob("scaling-*.md")).read_text().startswith("Data-parallel")
    (row,) = res["rows"]
    p = row["proof"]
    assert row["devices"] == 2 and p["grad_sharding_devices"] == 2  # really sharded
    assert p["loss_single"] > 0 and p["grad_max_abs"] > 1e-4     # a real, non-zero gradient
    assert p["loss_abs_diff"] <= 1e-5 * p["loss_single"]
    assert p["grad_max_abs_diff"] <= 1e-4 * p["grad_max_abs"]
    assert p["nfe_sharded"] == p["nfe_single"]                   # same solver steps
    # euler, 2 steps, backsolve: 2 forward and 2 backward evaluations
    assert p["nfe_single"] == 2 and p["nfe_backward_sharded"] == p["nfe_backward_single"] == 2


def test_batch_not_divisible_is_refused(capsys):
    from benchmarks import scaling

    with pytest.raises(SystemExit) as e:
        scaling.parse_args(["--devices", "1,4", "--batch", "6"])
    assert e.value.code == 2
    assert "divisible" in capsys.readouterr().err
