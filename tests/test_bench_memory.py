"""benchmarks.memory: the CLI measures a conv ODE block's gradient step and writes its
JSON, Markdown and plot.  (Flat backsolve memory against growing checkpoint/direct
memory is asserted on a toy field by tests/test_ode_memory.py, through the same
`benchmarks.common.compile_with_memory`; not repeated here.)"""

import json

import pytest

from benchmarks import memory


def test_cli_writes_results_and_counts_euler_evaluations(tmp_path, capsys):
    fig = tmp_path / "fig.png"
    res = memory.main(["--t1", "2", "--modes", "backsolve", "--solver", "euler", "--channels",
                       "4", "--size", "4", "--batch", "2", "--steps-per-unit", "2",
                       "--out", str(tmp_path), "--figure", str(fig)])
    (row,) = res["rows"]
    # euler with dt = 1/2 over [0, 2]: 4 steps of one evaluation, forward and backward.
    assert (row["nfe_fwd"], row["nfe_bwd"], row["max_steps"]) == (4, 4, 4)
    mem = row["memory"]
    if mem is not None:  # the CPU backend gives an analysis
        assert mem["total"] == mem["temp"] + mem["arguments"] + mem["outputs"] - mem["alias"]
        # at least the state z0 (2 x 4 x 4 x 4 floats) is an argument
        assert mem["arguments"] >= 4 * 2 * 4 * 4 * 4
    saved = json.loads(next(tmp_path.glob("memory-*.json")).read_text())
    assert saved["rows"][0]["nfe_fwd"] == 4
    assert "| block | backsolve | 2 |" in next(tmp_path.glob("memory-*.md")).read_text()
    assert fig.stat().st_size > 1000 and fig.read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--modes", "backsolve,adjoint"], "unknown name 'adjoint'"),
    (["--t1", "1,0.3"], "whole number of steps"),
    (["--channels", "48"], "GroupNorm"),
])
def test_bad_arguments_are_refused(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        memory.parse_args(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err
