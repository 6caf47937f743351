"""`python -m benchmarks.gpu_campaign --dry-run` end to end (CPU, tiny sizes), and the
pieces around it: the budget, the data staging for the device machine, the archive
that resumes the training chunk, and the argument checks.

The dry run runs every part's code path once, in a subprocess (so that its XLA flags
and JAX's CPU client are its own).  The budget is raised to 10 minutes so that no unit
is skipped on a loaded machine; the budget logic itself is checked with a fake clock.
"""

import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from benchmarks import gpu_campaign as gc
from benchmarks import stage_data
from benchmarks._campaign_parts import device_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_end_to_end(shared_data, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    out, archive = tmp_path / "campaign", tmp_path / "back"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXODE_DATA=shared_data,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_campaign", "--out", str(out), "--dry-run",
         "--budget-min", "10", "--data", shared_data, "--archive", str(archive)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    campaign = json.loads((out / "campaign.json").read_text())
    assert {k: v["status"] for k, v in campaign["parts"].items()} == dict.fromkeys(gc.PARTS, "done")

    corr = json.loads((out / "correctness.json").read_text())
    assert corr["passed"] and corr["device"]["backend"] == "cpu"
    assert corr["checks"]["conv_path"]["chosen"] == "custom_jvp"
    assert corr["checks"]["conv_path"]["traced_custom_jvp"] is True
    assert 0 < corr["checks"]["backsolve_equals_checkpoint"]["value"] < 1e-3
    assert corr["checks"]["float32_equals_cpu"]["value"] < 1e-4  # here: the two conv paths

    suite_rows = json.loads((out / "suite.json").read_text())["rows"]
    assert [r["model"] for r in suite_rows] == ["cnf"] and suite_rows[0]["ratio_train"] > 0

    mfu = json.loads((out / "mfu.json").read_text())
    assert [r["model"] for r in mfu["rows"]] == ["dcn-ode"]
    dcn = mfu["rows"][0]
    assert len(dcn["blocks"]) == 3 and all(b["nfe_fwd"] > 0 and b["nfe_bwd"] > 0 for b in dcn["blocks"])
    # the VJP of a field costs more than the field itself; the step's FLOPs add up
    assert all(b["flops_field_vjp"] > b["flops_field"] > 0 for b in dcn["blocks"])
    assert dcn["flops_per_step"] == pytest.approx(sum(b["flops"] for b in dcn["blocks"]))

    mem = json.loads((out / "memory.json").read_text())
    assert set(mem["rows"]) == {"segnode-train", "baseline-train", "segnode-test", "baseline-test"}
    train_mem = mem["rows"]["segnode-train"]["memory"]["total"]
    assert train_mem > mem["rows"]["segnode-test"]["memory"]["total"] > 0
    assert mem["paper_train_reduction"] == pytest.approx(1 - 13.4 / 31.9)

    train = json.loads((out / "train.json").read_text())
    assert (train["epochs_before"], train["epochs_after"]) == (0, 1)
    assert train["history"][0]["epoch"] == "1" and float(train["history"][0]["train_loss"]) > 0

    md = (archive / "campaign.md").read_text()
    for heading in ("## Correctness", "## Suite vs torchdiffeq", "## MFU", "## SegNode memory",
                    "## DCN-ODE training chunk"):
        assert heading in md
    with tarfile.open(archive / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("dcn-train/checkpoints/ckpt-0001.eqx") for n in names)

    # the next session resumes the training run from the archive brought back
    again = tmp_path / "next"
    gc.restore_training(str(archive / "campaign.tar.gz"), again)
    assert (again / "dcn-train" / "checkpoints" / "ckpt-0001.eqx").is_file()


def test_budget_and_part_shares():
    now = [0.0]
    budget = gc.Budget(100.0, clock=lambda: now[0])
    ctx = gc.Context(out=None, data="", budget=budget, dry_run=True, size="tiny", models=(),
                     repeats=1, train_epochs=None, min_unit_s=5.0)
    ctx.part_start["suite"] = 10.0
    now[0] = 30.0
    assert ctx.stop_reason("suite") is None  # 20 s of its 40 s share used
    now[0] = 51.0
    assert "share spent: 41 s of 40 s" in ctx.stop_reason("suite")
    now[0] = 96.0
    assert "budget spent: 4 s of 100 s left" in ctx.stop_reason("train")


def test_device_peaks():
    assert device_peak("NVIDIA H100 80GB HBM3")["tf32"] == 495.0
    assert device_peak("NVIDIA H100 PCIe")["fp32"] == 51.0
    assert device_peak("NVIDIA H200")["bf16"] == 989.0
    assert device_peak("cpu") is None


def test_stage_data_writes_loadable_zips_within_the_limit(shared_data, tmp_path):
    from jaxode.data.camvid import load_camvid
    from jaxode.data.load import load_dataset

    dest = tmp_path / "data_local"
    prev = tmp_path / "campaign.tar.gz"
    prev.write_bytes(b"an earlier campaign's archive")
    argv = ["--src", shared_data, "--dest", str(dest), "--cifar-train", "30", "--cifar-test",
            "20", "--camvid-train", "2", "--camvid-val", "1", "--camvid-test", "1"]
    report = stage_data.main([*argv, "--prev-run", str(prev)])
    assert report["cifar10_images"] == 50 and report["camvid_pairs"] == 4
    assert (dest / "prev" / "campaign.tar.gz").read_bytes() == prev.read_bytes()
    test = load_dataset("cifar10", "test", root=str(dest))
    assert len(test) == 20 and len(set(test.labels.tolist())) == 10  # class-balanced
    cam = load_camvid(str(dest / "camvid-segnet.zip"), splits=("train",), use_cache=False)
    assert cam["train"].images.shape == (2, 360, 480, 3)
    with zipfile.ZipFile(dest / "cifar10-jpeg.zip") as zf:  # byte-for-byte copies
        name = zf.namelist()[0]
        with zipfile.ZipFile(os.path.join(shared_data, "cifar10-jpeg.zip")) as src:
            assert zf.read(name) == src.read(name)
    with pytest.raises(SystemExit, match="exceeds --limit-mib 1"):
        stage_data.main(argv[:4] + ["--dest", str(tmp_path / "other"), "--limit-mib", "1"])
    assert not (tmp_path / "other").exists()  # nothing written when refused


@pytest.mark.parametrize("argv,message", [
    (["--parts", "suite,nope"], "unknown part"),
    (["--models", "cnf,nope"], "unknown model"),
    (["--budget-min", "-1"], "must be > 0"),
    (["--data", "/nonexistent"], "run `python -m benchmarks.stage_data`"),
])
def test_bad_arguments(argv, message, tmp_path, shared_data, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(["--out", str(tmp_path / "o"), "--data", shared_data, *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_refuses_a_folder_with_results(tmp_path, shared_data, capsys):
    (tmp_path / "campaign.json").write_text("{}")
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(tmp_path), "--data", shared_data])
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "campaign.json").read_text() == "{}"


@pytest.mark.parametrize("argv,message", [
    (["--solver", "euler"], "needs --num-steps N"),
    (["--num-steps", "3"], "needs --num-steps N"),
    (["--solver", "rk4", "--num-steps", "0"], "must be >= 1"),
])
def test_dcn_fixed_step_solver_arguments(argv, message, tmp_path, capsys):
    """The dry run's training chunk uses `experiments.dcn classify --solver euler
    --num-steps 2`; a fixed-step solver without a step count (or vice versa) is refused."""
    from experiments import dcn

    with pytest.raises(SystemExit) as e:
        dcn.main(["classify", "--run", str(tmp_path / "r"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
