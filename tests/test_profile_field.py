"""benchmarks.profile_field: a tiny end-to-end run writes its JSON / Markdown and HLO
files, the field VJP's loop body holds the six canonical convolutions, and bad
arguments exit with status 2."""

import json

import pytest

from benchmarks import profile_field


def test_tiny_run_writes_results_and_counts_canonical_convolutions(tmp_path):
    res = profile_field.run(profile_field.parse_args([
        "--batch", "2", "--channels", "8", "--size", "4", "--iters", "2", "--repeats", "1",
        "--pieces", "field-vjp", "--hlo", "--tag", "t", "--out", str(tmp_path)]))
    stem = [p.name for p in tmp_path.glob("profile-field-*-t.json")]
    assert len(stem) == 1
    saved = json.loads((tmp_path / stem[0]).read_text())
    assert set(saved["pieces"]) == {"field-vjp"}
    assert {"jaxode", "eqx-gn", "tbias", "torch"} <= set(saved["pieces"]["field-vjp"])
    assert all(v["median"] > 0 for p in saved["pieces"].values() for v in p.values())
    assert (tmp_path / stem[0].replace(".json", ".md")).read_text().startswith("Per-piece profile")
    # forward, input gradient and weight gradient of the two convolutions, all in
    # XLA:CPU's canonical NHWC / HWIO layout (jaxode.nn.conv)
    for name in ("jaxode", "eqx-gn"):
        h = res["hlo"][name]
        assert h["conv_dim_labels"] == ["b01f_01io->b01f"] * 6, h
        assert (tmp_path / f"profile-field-hlo-{name}-t.txt").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--pieces", "conv-fwd,softmax"], "unknown name 'softmax'"),
    (["--channels", "48"], "GroupNorm"),
    (["--iters", "0"], "--iters"),
    (["--tag", "a/b"], "--tag"),
])
def test_bad_arguments_exit_2(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        profile_field.parse_args(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err
