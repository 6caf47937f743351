"""benchmarks.reg_mnist (issue 19): the report's numbers against hand-computed ones on
fake run folders, its refusals (unfinished runs, differing recipes, a changed
campaign), and one tiny real campaign (runner -> experiments.classify -> steps.csv ->
report)."""

import json
import os

import numpy as np
import pytest

from benchmarks import reg_mnist
from jaxode.cli import parse_regularizers
from jaxode.train.steplog import StepLog

RECIPE = {"dataset": "mnist", "epochs": 2, "seed": 0, "lr": 0.1, "milestones": [1],
          "regularizers": [], "steer": None, "adjoint": "backsolve"}


def _fake_run(out, name, fwd, bwd, epoch_s, test_error, finished=True, **recipe):
    folder = out / name
    folder.mkdir(parents=True)
    cfg = {**RECIPE, "name": name, **recipe}
    (folder / "config.json").write_text(json.dumps({"classify": cfg}))
    log = StepLog(str(folder / "steps.csv"))
    log.start(0)
    half = len(fwd) // 2
    for i, (f, b) in enumerate(zip(fwd, bwd)):
        log.add({"step": i + 1, "epoch": 1 + (i >= half), "nfe": float(f),
                 "nfe_backward": float(b), "step_time_s": 1.0 + i})
    log.flush()
    if finished:
        summary = {"history": [{"epoch": e + 1, "train_time_s": t} for e, t in enumerate(epoch_s)],
                   "test_error": test_error, "nfe_mean": 21.0}
        (folder / "summary.json").write_text(json.dumps(summary))


def _three_runs(out):
    _fake_run(out, "none", [20] * 10, [20] * 10, [100.0, 100.0], 0.0100)
    _fake_run(out, "kinetic", [10] * 10, [8] * 9 + [2], [70.0, 50.0], 0.0105,
              regularizers=[["kinetic", 0.01]])
    _fake_run(out, "steer", [16] * 10, [16] * 10, [90.0, 90.0], 0.0130, steer=0.5)
    _fake_run(out, "none-checkpoint", [20] * 10, [0] * 10, [150.0, 150.0], 0.0100,
              adjoint="checkpoint")
    _fake_run(out, "local-error", [8] * 10, [0] * 10, [100.0, 100.0], 0.0100,
              adjoint="checkpoint", regularizers=[["local_error", 1.0]])


def test_report_numbers_and_goal_match_hand_computation(tmp_path):
    out = tmp_path / "reg"
    _three_runs(out)
    table, fig = tmp_path / "table.md", tmp_path / "fig" / "nfe.png"
    res = reg_mnist.report(str(out), ["none", "kinetic", "steer", "none-checkpoint",
                                      "local-error"], str(table), str(fig),
                           smooth=3, log=lambda s: None)
    k, r = res["numbers"]["kinetic"], res["ratios"]["kinetic"]
    assert k["nfe_fwd"] == 10 and k["nfe_bwd"] == pytest.approx(7.4)
    assert k["nfe_bwd_last10"] == 2 and k["steps"] == 10  # the last 10% = the last step
    assert k["train_wall_s"] == 120 and k["s_per_epoch"] == 60
    assert k["s_per_step_median"] == pytest.approx(np.median(np.arange(2.0, 11.0)))
    assert k["ms_per_nfe"] == pytest.approx(1000 * 6.0 / 17.4)
    assert r["nfe_ratio"] == pytest.approx(40 / 17.4) and r["wall_ratio"] == pytest.approx(200 / 120)
    assert r["error_points"] == pytest.approx(0.05) and r["goal"]
    s = res["ratios"]["steer"]
    assert s["nfe_ratio"] == pytest.approx(1.25) and s["error_points"] == pytest.approx(0.3)
    assert not s["goal"] and not res["ratios"]["none"]["goal"]
    # the checkpoint adjoint counts no backward NFE: forward ratio, its own baseline
    le = res["ratios"]["local-error"]
    assert le["baseline"] == "none-checkpoint" and le["nfe_ratio_of"] == "forward"
    assert le["nfe_ratio"] == 2.5 and le["wall_ratio"] == 1.5 and le["goal"]
    assert res["numbers"]["local-error"]["nfe_bwd"] is None
    text = table.read_text()
    assert ("| local-error | `local_error=1 adjoint=checkpoint` | 8.0 / n/c; 8.0 / n/c | 200 | 100 "
            "| 6.00 | 750 (fwd) |") in text  # ms per forward NFE: no backward count
    assert "| none-checkpoint | 2.50 (fwd) | 1.50 | +0.00 | yes |" in text
    assert "| kinetic | `kinetic=0.01` | 10.0 / 7.4; 10.0 / 2.0 | 120 | 60 | 6.00 | 345 |" in text
    assert "| steer | `steer=0.5` |" in text and "| none | `—` |" in text
    assert "| 2.30 | 1.67 | +0.05 | yes |" in text and text.count("\n") == 9
    # the best setting: the most NFE saved among those within 0.1 point of the baseline
    assert res["best"] == "local-error"
    assert text.endswith("best setting: local-error (2.50x fewer NFE, wall 1.50x, error +0.00 "
                         "points against none-checkpoint); issue 19's goal (>= 2.0x NFE, >= "
                         "1.5x wall) is met.\n")
    assert fig.stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["ratios"]["kinetic"]["goal"] is True


def test_best_setting_keeps_the_accuracy_first():
    ratio = lambda nfe, err, base="none": {"baseline": base, "nfe_ratio": nfe,  # noqa: E731
                                           "wall_ratio": 1.0, "error_points": err, "goal": False}
    ratios = {"none": ratio(1.0, 0.0), "kinetic-1e-3": ratio(1.4, 0.74), "steer": ratio(0.97, 0.23),
              "kinetic": ratio(1.1, 0.08), "taylor": ratio(1.2, 0.1)}
    assert reg_mnist.best_setting(ratios) == "taylor"  # 0.1 points is still within the bound
    del ratios["taylor"], ratios["kinetic"]
    assert reg_mnist.best_setting(ratios) is None
    assert "no regulariser is the default" in reg_mnist.best_line(ratios)


def test_report_refuses_unfinished_and_mixed_recipes(tmp_path):
    out = tmp_path / "reg"
    _three_runs(out)
    _fake_run(out, "rnode", [9] * 4, [9] * 4, [], 0.0, finished=False)
    table, fig = str(tmp_path / "t.md"), str(tmp_path / "f.png")
    with pytest.raises(SystemExit) as info:
        reg_mnist.report(str(out), ["none", "rnode", "kinetic-steer"], table, fig)
    msg = str(info.value)
    assert "rnode: unfinished" in msg and "kinetic-steer: missing" in msg
    assert "python -m benchmarks.reg_mnist run --out" in msg
    assert "--settings rnode,kinetic-steer" in msg
    assert not os.path.exists(table) and not os.path.exists(fig)
    _fake_run(out, "rnode-seed", [9] * 4, [9] * 4, [1.0], 0.0, seed=1)
    os.rename(out / "rnode-seed", out / "kinetic-steer")
    with pytest.raises(SystemExit, match="seed: none=0, kinetic-steer=1"):
        reg_mnist.report(str(out), ["none", "kinetic-steer"], table, fig)


def test_campaign_flags_must_repeat(tmp_path):
    out = str(tmp_path / "reg")
    os.makedirs(out)
    reg_mnist.check_campaign(out, "reg-mnist-odenet", ["--train-limit", "6000"])
    reg_mnist.check_campaign(out, "reg-mnist-odenet", ["--train-limit", "6000"])
    with pytest.raises(SystemExit, match="repeat those"):
        reg_mnist.check_campaign(out, "reg-mnist-odenet", [])
    with reg_mnist.campaign_lock(out):  # two calls never write campaign.json at once
        with pytest.raises(SystemExit, match="another"):
            with reg_mnist.campaign_lock(out):
                pass


def test_a_setting_another_run_holds_is_skipped(tmp_path):
    """Two `run` calls share a campaign: the setting the other call is training (it
    holds OUT/.<setting>.lock) is skipped, the others are trained by this one."""
    out = str(tmp_path / "reg")
    launched, lines = [], []

    def launch(argv):  # stands in for experiments.classify: writes a finished run
        name = argv[argv.index("--name") + 1]
        launched.append(name)
        os.makedirs(os.path.join(out, name))
        for f in ("config.json", "summary.json"):
            with open(os.path.join(out, name, f), "w") as fh:
                fh.write("{}")
        return 0

    os.makedirs(out)
    with reg_mnist.held_lock(os.path.join(out, ".kinetic.lock")) as held:
        assert held
        reg_mnist.run(out, ["none", "kinetic", "steer"], "reg-mnist-odenet", [],
                      log=lines.append, launch=launch)
    assert launched == ["none", "steer"]
    assert any("kinetic: another" in line for line in lines)
    reg_mnist.run(out, ["none", "kinetic", "steer"], "reg-mnist-odenet", [],
                  log=lines.append, launch=launch)  # lock released: kinetic now trains
    assert launched == ["none", "steer", "kinetic"]


def test_runner_and_report_on_a_tiny_digits_campaign(tmp_path, monkeypatch):
    """Two settings trained for real (1 epoch of 2 steps on 64 digits, a 4-channel
    ODE-only net, 2 Euler steps; experiments.classify in this process, not a subprocess, to save its
    start-up); a finished run loses its checkpoints; a second `run` skips both."""
    from experiments import classify

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    launched = []

    def launch(argv):
        launched.append(argv)
        return classify.main(argv)

    monkeypatch.setattr(reg_mnist, "classify_subprocess", launch)
    extra = ("--channels 4 --epochs 1 --batch-size 32 --train-limit 64 --test-limit 16 "
             "--eval-batch-size 16 --solver euler --euler-steps 2 --tol-sweep '' --no-per-sample")
    argv = ["run", "--out", "reg", "--settings", "none,kinetic", "--config", "smoke-digits",
            "--extra", extra]
    assert reg_mnist.main(argv) == 0
    assert len(launched) == 2 and launched[1][:6] == ["--config", "smoke-digits", "--runs-dir",
                                                     "reg", "--name", "kinetic"]
    for s in ("none", "kinetic"):
        assert not (tmp_path / "reg" / s / "checkpoints").exists()
        assert (tmp_path / "reg" / s / "steps.csv").read_text().count("\n") == 3
    cfg = json.loads((tmp_path / "reg" / "kinetic" / "config.json").read_text())["classify"]
    flags = dict(zip(*[iter(reg_mnist.SETTINGS["kinetic"][0])] * 2))
    assert [tuple(r) for r in cfg["regularizers"]] == list(parse_regularizers(flags["--reg"]))
    mtime = os.path.getmtime(tmp_path / "reg" / "none" / "steps.csv")
    assert reg_mnist.main(argv) == 0  # both finished: nothing is trained again
    assert os.path.getmtime(tmp_path / "reg" / "none" / "steps.csv") == mtime
    assert len(launched) == 2
    os.remove(tmp_path / "reg" / "kinetic" / "summary.json")  # as if stopped before the end
    assert reg_mnist.main(argv) == 0
    assert len(launched) == 3 and launched[2][-1] == "--resume" and launched[2][5] == "kinetic"
    assert (tmp_path / "reg" / "kinetic" / "summary.json").exists()
    assert (tmp_path / "reg" / "kinetic" / "steps.csv").read_text().count("\n") == 3
    assert reg_mnist.main(["report", "--out", "reg", "--settings", "none,kinetic",
                           "--table", "t.md", "--figure", "f.png", "--smooth", "1"]) == 0
    rows = [ln for ln in open("t.md") if ln.startswith("| kinetic")]
    assert len(rows) == 1 and "| none |" in rows[0]


def test_every_setting_is_a_valid_classify_command_line():
    """Each setting's flags parse and pass experiments.classify's checks, and give the
    run the regularisers, STEER and adjoint its name promises, on the 2-epoch recipe."""
    from experiments import classify

    parser = classify.build_parser()
    for name in reg_mnist.SETTINGS:
        args = parser.parse_args(reg_mnist.classify_argv(name, "runs", reg_mnist.DEFAULT_CONFIG,
                                                         [], resume=False))
        classify.check_args(parser, args)
        cfg = classify.config_from_args(args)
        regs = dict(cfg.regularizers)
        assert (cfg.epochs, cfg.milestones, cfg.dataset, cfg.seed) == (2, (1,), "mnist", 0)
        assert ("kinetic" in regs) == ("kinetic" in name or name == "rnode")
        assert ("jacobian" in regs) == (name == "rnode")
        assert ("local_error" in regs) == (name == "local-error")
        assert ("taylor" in regs) == (name == "taylor") and cfg.taylor_order == 2
        assert (cfg.steer == 0.5) == ("steer" in name)
        assert (cfg.adjoint == "checkpoint") == (reg_mnist.SETTINGS[name][1] == "none-checkpoint")
