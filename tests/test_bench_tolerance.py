"""benchmarks.tolerance: from a classify run folder, a sweep over inference tolerances
compiles the evaluation step once (the compile counter sees that one compilation and
none after it), NFE grows as the tolerance tightens, and the CLI writes its files."""

import json

import jax
import pytest

from benchmarks import tolerance
from experiments.configs import get_config
from jaxode.train import save_checkpoint


@pytest.fixture
def run_dir(tmp_path):
    """A classify run folder (config.json + one checkpoint) of a tiny ODE-only net."""
    cfg = get_config("smoke-digits").replace(channels=8, test_limit=16, eval_batch_size=8)
    folder = tmp_path / "tiny-run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"classify": cfg.to_dict()}))
    model = cfg.build_model(10, 1, jax.random.PRNGKey(3))
    save_checkpoint(str(folder / "checkpoints"), 1, {"model": model}, {"config": {}})
    return folder


def test_sweep_reuses_one_compilation_and_writes_files(run_dir, tmp_path, capsys):
    fig = tmp_path / "tol.png"
    res = tolerance.main(["--run", str(run_dir), "--tols", "1e-1,1e-5", "--repeats", "1",
                          "--out", str(tmp_path / "out"), "--figure", str(fig)])
    loose, tight = res["rows"]
    assert loose["eval_step_compiles"] == 1      # the counter does see a compilation ...
    assert tight["eval_step_compiles"] == 0      # ... and there is none for the new tolerance
    assert res["no_recompilation"] is True
    assert tight["nfe_mean"] > loose["nfe_mean"]  # tighter tolerance, more evaluations
    assert res["run"]["test_images"] == 16 and 0 <= loose["acc"] <= 1
    saved = json.loads(
        (tmp_path / "out" / f"tolerance-tiny-run-joint-{_tag(res)}.json").read_text())
    assert [r["tol"] for r in saved["rows"]] == [0.1, 1e-5]
    assert "no recompilation" in next((tmp_path / "out").glob("tolerance-*.md")).read_text()
    assert fig.read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def _tag(res):
    from benchmarks.common import machine_tag

    return machine_tag(res["machine"])


def test_run_without_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"classify": {"dataset": "digits"}}))
    with pytest.raises(SystemExit) as e:
        tolerance.parse_args(["--run", str(tmp_path)])
    assert e.value.code == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_missing_run_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tolerance.parse_args(["--run", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
