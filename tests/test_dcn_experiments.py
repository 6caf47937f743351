"""DCN probes (jaxode.models.dcn_probes) against independent truths, and the
`contrast`, `completion` and `reconstruct` subcommands of experiments.dcn end to end on
a tiny fake CIFAR-like image folder."""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.models.dcn import build_model
from jaxode.models.dcn_probes import (
    ReconstructionTask,
    apply_contrast,
    block1_trajectory,
    centre_mask,
    contrast_scales,
    feature_difference,
    scaled_forward,
    scale_ode_times,
)
from jaxode.ode import ODEBlock, SolveConfig


class _TimeLinear(eqx.Module):
    """dz/dt = a t z: z(T) = z0 exp(a T^2 / 2), so the field must see t in [0, c T]."""

    a: jax.Array

    def __call__(self, t, z):
        return self.a * t * z


def test_time_scaling_is_the_scaled_interval_analytic():
    cfg = SolveConfig(rtol=1e-8, atol=1e-8)
    blocks = (ODEBlock(_TimeLinear(jnp.float32(0.7)), 0.0, 2.0, cfg),
              ODEBlock(_TimeLinear(jnp.float32(-0.4)), 0.0, 1.0, cfg))
    z0 = jnp.array([1.0, -2.0], jnp.float32)
    traces = []

    @eqx.filter_jit
    def solve(bs):
        traces.append(1)
        return [b(z0)[0] for b in bs]

    for c in (1.0, 0.3, 0.05):
        out = solve(scale_ode_times(blocks, c))
        for b, a, T in zip(out, (0.7, -0.4), (2.0, 1.0)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(z0) * np.exp(a * (c * T) ** 2 / 2),
                                       rtol=1e-5)
    assert len(traces) == 1  # t1 is an array leaf: new intervals reuse the program
    only_second = scale_ode_times(blocks, 0.5, blocks=[1])
    assert float(only_second[0].t1) == 2.0 and float(only_second[1].t1) == 0.5


def test_contrast_scales_per_mode():
    t, s = contrast_scales(0.25, "naive", 3)
    assert t.tolist() == [1, 1, 1] and s.tolist() == [1, 1, 1]
    t, s = contrast_scales(0.25, "block1", 3)
    assert t.tolist() == [0.25, 1, 1] and s.tolist() == [1, 1, 1]
    t, s = contrast_scales(0.25, "all", 3)
    assert t.tolist() == [0.25] * 3 and s.tolist() == [1, 0.25, 0.25]
    with pytest.raises(ValueError, match="contrast mode"):
        contrast_scales(1.0, "bogus", 3)


@pytest.fixture(scope="module")
def tiny_odenet():
    cfg = SolveConfig(rtol=1e-1, atol=1e-1)
    return build_model("odenet", key=jax.random.PRNGKey(0), widths=(4, 4, 4), config=cfg)


def test_scaled_forward_against_rescaled_models(tiny_odenet):
    """One compiled program (traced c and factors) reproduces models changed by hand:
    T_1 -> c T_1 equals a model whose first interval was set to [0, c T]; inputs of
    blocks 2, 3 times c equal down-sampling convolutions (weights and bias) times c."""
    m = tiny_odenet
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 16, 16))
    traces = []

    @eqx.filter_jit
    def f(m, x, c, ts, ins):
        traces.append(1)
        return scaled_forward(m, x, c, ts, ins)[0]

    c, ones = jnp.float32(0.3), jnp.ones((3,))
    t_scale, _ = contrast_scales(c, "block1", 3)
    by_hand = eqx.tree_at(lambda m: m.blocks[0].t1, m, jnp.float32(0.3))
    np.testing.assert_allclose(np.asarray(f(m, x, c, t_scale, ones)),
                               np.asarray(f(by_hand, x, c, ones, ones)), rtol=1e-5, atol=1e-6)
    _, in_scale = contrast_scales(c, "all", 3)
    downs = eqx.tree_at(lambda m: [m.downs[0].conv.weight, m.downs[0].conv.bias,
                                   m.downs[1].conv.weight, m.downs[1].conv.bias], m,
                        [c * m.downs[0].conv.weight, c * m.downs[0].conv.bias,
                         c * m.downs[1].conv.weight, c * m.downs[1].conv.bias])
    np.testing.assert_allclose(np.asarray(f(m, x, c, ones, in_scale)),
                               np.asarray(f(downs, x, c, ones, ones)), rtol=1e-4, atol=1e-5)
    naive = np.asarray(f(m, x, c, ones, ones))
    assert np.abs(naive - np.asarray(f(m, x, c, t_scale, ones))).max() > 1e-4
    assert len(traces) == 1  # new c, factors and t1 values: the same program
    np.testing.assert_allclose(np.asarray(apply_contrast(x, 0.3)), 0.3 * np.asarray(x))


def test_centre_mask_counts_and_place():
    x = jnp.ones((2, 3, 32, 32))
    for n in (0, 1, 4, 7, 14, 32):
        m = np.asarray(centre_mask(x, n))
        assert (m == 0).sum() == 2 * 3 * n * n
        if n:
            top = (32 - n) // 2
            assert np.all(m[:, :, top:top + n, top:top + n] == 0)
    even = np.asarray(centre_mask(jnp.ones((1, 1, 8, 8)), 4))[0, 0]
    assert np.array_equal(even, even[::-1, ::-1])  # centred: symmetric for even n


def test_feature_difference_hand_made():
    h = jnp.ones((1, 2, 2, 3, 3))  # (N, T, C, H, W); sum |h| = 18 per time
    hm = h.at[0, 0, 0, 0, 0].set(4.0).at[0, 1].set(0.0)
    d = np.asarray(feature_difference(h, hm))
    np.testing.assert_allclose(d, [[3.0 / 18.0, 1.0]], rtol=1e-6)
    assert float(feature_difference(h, h).max()) == 0.0


def test_block1_trajectory_endpoints(tiny_odenet):
    """Two solver paths agree: the dense solve at t = 0 is the stem output and at t = T
    the block's output of `features`."""
    m = tiny_odenet
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, 3, 16, 16))
    traj, _ = eqx.filter_jit(block1_trajectory)(m, x, jnp.linspace(0.0, 1.0, 3))
    feats, _ = eqx.filter_jit(lambda m, x: m.features(x, n_stages=1))(m, x)
    np.testing.assert_allclose(np.asarray(traj[:, 0]), np.asarray(jax.vmap(m.stem)(x)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(traj[:, -1]), np.asarray(feats[0]), rtol=1e-4,
                               atol=1e-5)


def test_reconstruction_loss_is_mse_of_centre_crop():
    class Const(eqx.Module):
        def __call__(self, x, *, key=None):
            return jnp.full((x.shape[0], 3, 28, 28), 0.5), {"nfe": jnp.zeros(())}

    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[1, 2:30, 2:30] = 255  # image 1: the centre crop is white
    m = ReconstructionTask().eval_metrics(Const(), {"image": jnp.asarray(img)}, None)
    np.testing.assert_allclose(np.asarray(m["loss"]), [0.25, 0.25], rtol=1e-6)


# ---------------------------------------------------------------- CLIs end to end


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_odenet, make_image_folder):
    """A tiny image folder and a 'classify' run folder of an untrained width-4 ODE-Net
    (config.json + checkpoint, as `experiments.dcn classify` writes them)."""
    from experiments.configs import get_config
    from jaxode.train import save_checkpoint

    root = tmp_path_factory.mktemp("dcn_probe")
    make_image_folder(root / "data", {"cat": 3, "dog": 3, "ship": 2})
    cfg = dict(get_config("smoke", "dcn"), widths=(4, 4, 4), tol=0.1, batch_size=4)
    conf = {"model": "odenet", "seed": 0, "max_half_width": 8, "support": "margin",
            "margin": 1, **cfg, "train": {"ema_decay": None}}
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(conf))
    model = tiny_odenet
    save_checkpoint(str(run / "checkpoints"), 1, {"ema": None, "model": model,
                                                  "opt_state": None}, {"epoch": 1})
    return root, model


def test_load_run_reads_the_checkpoint(fake_run):
    from jaxode.models.dcn_analysis import load_probe_run

    root, model = fake_run
    loaded, cfg = load_probe_run(str(root / "run"), tol=0.05, max_steps=64)
    a = jax.tree_util.tree_leaves(eqx.filter(model.blocks[0].field, eqx.is_array))
    b = jax.tree_util.tree_leaves(eqx.filter(loaded.blocks[0].field, eqx.is_array))
    assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))
    assert loaded.blocks[0].config.on_max_steps == "flag"
    assert float(loaded.blocks[1].config.rtol) == pytest.approx(0.05)
    assert loaded.blocks[2].config.max_steps == 64
    assert cfg["model"] == "odenet" and cfg["epoch"] == 1


def test_contrast_and_completion_cli(fake_run, monkeypatch, capsys):
    from experiments import dcn

    root, _ = fake_run
    monkeypatch.chdir(root)
    dcn.main(["contrast", "--checkpoint", "run", "--data-root", "data", "--out", "con",
              "--contrasts", "0.1,1", "--modes", "naive,block1,all", "--batch-size", "4"])
    rows = json.loads((root / "con" / "contrast.json").read_text())["rows"]
    assert len(rows) == 6 and (root / "con" / "contrast.png").stat().st_size > 0
    assert {r["compiles"] for r in rows} <= {0, 1}  # 2 contrasts x 3 modes: one program
    by = {(r["mode"], r["c"]): r for r in rows}
    assert by[("naive", 1.0)]["acc"] == by[("block1", 1.0)]["acc"] == by[("all", 1.0)]["acc"]
    for r in rows:
        assert r["nfe_total"] == pytest.approx(r["nfe_block1"] + r["nfe_block2"] + r["nfe_block3"])
    dcn.main(["completion", "--checkpoint", "run", "--data-root", "data", "--out", "com",
              "--mask-sizes", "0,32", "--d-mask-size", "6", "--d-images", "5", "--times", "3",
              "--batch-size", "4"])
    res = json.loads((root / "com" / "completion.json").read_text())["models"]["odenet"]
    assert set(res["accuracy_by_mask_size"]) == {"0", "32"} and len(res["D_mean"]) == 3
    assert res["D_mean"][0] > 0
    assert {p for p in os.listdir(root / "com")} == {"completion.json", "completion.png",
                                                      "completion_maps_odenet.png"}
    with pytest.raises(SystemExit) as info:  # an existing output folder is never reused
        dcn.main(["completion", "--checkpoint", "run", "--data-root", "data", "--out", "com"])
    assert info.value.code == 2
    assert "already holds" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JAXODE_SLOW_TESTS"),
                    reason="compiles the encoder-decoder's training step (about 40 s on a 2-core CPU); set JAXODE_SLOW_TESTS=1 to run")
def test_reconstruct_cli(fake_run, monkeypatch):
    from experiments import dcn

    root, _ = fake_run
    monkeypatch.chdir(root)
    dcn.main(["reconstruct", "--model", "resnet_blocks", "--widths", "4,4,4", "--data-root",
              "data", "--batch-size", "4", "--epochs", "1", "--name", "rec"])
    s = json.loads((root / "runs" / "rec" / "summary.json").read_text())
    assert s["train_images"] == 8 and s["test_images"] == 8 and np.isfinite(s["test_mse"])
    assert 0 < s["test_mse"] < 1 and (root / "runs" / "rec" / "reconstructions.png").exists()


@pytest.mark.parametrize("argv,needle", [
    (["contrast", "--checkpoint", "nope", "--out", "o"], "does not exist"),
    (["contrast", "--checkpoint", ".", "--out", "o", "--contrasts", "0,1"], "holds a zero"),
    (["contrast", "--checkpoint", ".", "--out", "o", "--modes", "naive,fast"], "unknown name"),
    (["completion", "--checkpoint", ".", "--out", "o", "--mask-sizes", "4,40"], "larger than"),
])
def test_probe_arguments_refused(argv, needle, tmp_path, monkeypatch, capsys):
    from experiments import dcn

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        dcn.main(argv)
    assert info.value.code == 2 and needle in capsys.readouterr().err


def _summary(folder, name, model, seed, acc, images=20):
    os.makedirs(folder / name)
    with open(folder / name / "summary.json", "w") as f:
        json.dump({"model": model, "params": 1234, "seed": seed, "final_eval_acc": acc,
                   "epochs": 7, "train_images": images, "test_images": 50}, f)


def test_small_data_table_groups_seeds_and_skips_unfinished(tmp_path, monkeypatch, capsys):
    """Table 2 from run folders: mean and population std per (model, size) over seeds,
    unfinished runs listed and left out, earlier tables never overwritten."""
    from experiments import dcn

    runs = tmp_path / "runs"
    accs = {0: 0.15, 1: 0.25, 2: 0.11}
    for seed, acc in accs.items():
        _summary(runs, f"dcn-small-odenet-2-s{seed}", "odenet", seed, acc)
    _summary(runs, "dcn-small-odenet-4-s0", "odenet", 0, 0.30, images=40)
    os.makedirs(runs / "dcn-small-dcn_ode-2-s0")  # still training: no summary
    dcn.main(["small-data-table", str(runs)])
    with open(runs / "table2.json") as f:
        table = json.load(f)
    two = [r for r in table["rows"] if r["per_class"] == 2]
    assert len(two) == 1 and two[0]["seeds"] == [0, 1, 2]
    expect = 100 * np.array(list(accs.values()))
    assert two[0]["mean"] == pytest.approx(expect.mean())
    assert two[0]["std"] == pytest.approx(np.sqrt(np.mean((expect - expect.mean()) ** 2)))
    assert [r["per_class"] for r in table["rows"]] == [2, 4]
    assert table["unfinished"] == [str(runs / "dcn-small-dcn_ode-2-s0")]
    assert (runs / "table2.png").stat().st_size > 0
    assert "17.0 +- 5.9" in (runs / "table2.md").read_text()
    with pytest.raises(SystemExit) as info:  # a second call would overwrite the table
        dcn.main(["small-data-table", str(runs)])
    assert info.value.code == 2 and "already exists" in capsys.readouterr().err
    empty = tmp_path / "empty"
    os.makedirs(empty)
    with pytest.raises(SystemExit, match="no finished small-data run"):
        dcn.main(["small-data-table", str(empty)])


# ---------------------------------------------------------------- configs and flags


def test_named_configs_state_table_and_command():
    """Every training subcommand has paper + smoke configs; each config's docstring names
    the paper table and a command that runs that subcommand with that config."""
    from experiments import dcn
    from experiments.configs import command, describe, names

    for cmd, group in dcn.GROUPS.items():
        assert names(group) == ["paper", "smoke"], group
        for name in names(group):
            assert "Table" in describe(name, group), (group, name)
            line = command(name, group)
            assert f"experiments.dcn {cmd} " in line and f"--config {name}" in line, line


def test_smoke_config_is_the_recorded_one():
    """The classify smoke settings whose metrics docs/results/dcn.md records (64 + 64
    images, widths 8/16/32, batch 16, tol 1e-2, separable support, lr 0.1 x 16/128)."""
    from experiments.configs import get_config

    assert get_config("smoke", "dcn") == dict(
        epochs=1, batch_size=16, lr=0.1, milestones=(), train_limit=64, test_limit=64,
        widths=(8, 16, 32), tol=1e-2, support="separable")
    assert get_config("paper", "dcn-reconstruct")["milestones"] == (25, 40)


def test_old_run_flag_is_an_alias_of_name(tmp_path, monkeypatch):
    """``--run`` still works (a FutureWarning naming --name); a bare NAME goes under
    --runs-dir, a path is the folder itself (`jaxode.cli.run_path`)."""
    from experiments import dcn

    seen = []

    def stop_before_data(args, cfg, seeds=None):
        seen.append(dcn._run_paths(args))
        raise SystemExit(0)

    monkeypatch.setattr(dcn, "_data", stop_before_data)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FutureWarning, match="--name"), pytest.raises(SystemExit):
        dcn.main(["classify", "--run", "old"])
    with pytest.raises(SystemExit):
        dcn.main(["reconstruct", "--name", "a/b", "--runs-dir", "elsewhere"])
    with pytest.raises(SystemExit):
        dcn.main(["small-data", "--name", "sm", "--seeds", "3", "--per-class", "5"])
    assert seen == [[os.path.join("runs", "old")], ["a/b"],
                    [os.path.join("runs", "sm", "dcn-small-dcn_ode-5-s3")]]
