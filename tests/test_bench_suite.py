"""`python -m benchmarks.suite` end to end on one tiny model, and its argument checks.

The run must write both result files, with a row whose numbers are consistent with
what the suite claims to measure: the torch twin's loss equals jaxode's up to the
solvers' discretisation error (same weights, same batch), NFE obey the dopri5 counts
(jaxode 3 + 6 n, torchdiffeq 2 + 6 n), and no recompilation happened for a new
tolerance, end time or batch.
"""

import json

import pytest

from benchmarks import suite


def test_suite_tiny_cnf(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    suite.main(["--size", "tiny", "--models", "cnf", "--repeats", "1", "--torch-threads", "1",
                "--out", str(tmp_path)])
    js = list(tmp_path.glob("suite-*-tiny.json"))
    md = list(tmp_path.glob("suite-*-tiny.md"))
    assert len(js) == 1 and len(md) == 1
    row = json.loads(js[0].read_text())["rows"][0]
    assert row["model"] == "cnf" and row["torch"] == "ported"
    assert row["loss_rel_diff"] < 1e-2
    j, t = row["jax"], row["torch_result"]
    assert (j["nfe_fwd"] - 3) % 6 == 0 and (t["nfe_fwd"] - 2) % 6 == 0
    assert j["nfe_bwd"] > 0 and t["nfe_bwd"] > 0
    assert row["recompiles"]["train"] == {"tolerance": 0, "t1": 0, "batch": 0}
    assert row["recompiles"]["infer"] == {"tolerance": 0, "t1": 0, "batch": 0}
    assert j["memory_train"]["total"] > 0
    assert "| cnf |" in md[0].read_text()


@pytest.mark.parametrize("argv", [["--models", "cnf,nope"], ["--repeats", "0"], ["--tol", "-1"]])
def test_suite_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        suite.parse_args(argv)
    assert e.value.code == 2
    assert "argument --" in capsys.readouterr().err
