"""Multi-process data parallelism under `jax.distributed` (issue 22): two CPU processes on
127.0.0.1 (one device each, gloo collectives) train a tiny ODE-Net on their halves of
each batch; their loss and weights must equal those of one process training on the
whole batches, to 1e-5.  Only process 0 writes the run folder."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

_WORKER = textwrap.dedent("""
    import json, sys
    mode, coordinator, pid, out, run_path = sys.argv[1:6]
    pid = int(pid)
    import jax
    from jaxode.train.parallel import initialize_distributed, process_shard
    if mode == "multi":
        initialize_distributed(coordinator, num_processes=2, process_id=pid)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    import numpy as np
    from jaxode.data import load_dataset
    from jaxode.models import odeonly_net
    from jaxode.ode import SolveConfig
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit

    assert jax.local_device_count() == 1, jax.local_devices()
    assert jax.process_count() == (2 if mode == "multi" else 1)
    train = load_dataset("digits", "train").subset(slice(0, 48))
    test = load_dataset("digits", "test").subset(slice(0, 10))
    model = odeonly_net(10, in_channels=1, channels=4, stem_kernel=3, stem_stride=2,
                        stem_padding=1, dropout=0.0,
                        solve=SolveConfig(solver="rk4", num_steps=2), key=jax.random.PRNGKey(0))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, weight_decay=1e-4, progress=False)
    run = RunDir(run_path, {"mode": mode})
    res = fit(model, ClassificationTask(),
              lambda e: process_shard(dataset_batches(train, 16, seed=(0, e), drop_last=True)),
              lambda: dataset_batches(test, 10, shuffle=False),
              config=cfg, run=run, log=lambda s: print(s, flush=True))
    run.close()
    leaves = jax.tree_util.tree_leaves(
        __import__("equinox").filter(res.model, __import__("equinox").is_inexact_array))
    w = np.concatenate([np.asarray(x.addressable_data(0)).ravel() for x in leaves])
    with open(out, "w") as f:
        json.dump({"history": res.history, "w": w.tolist(),
                   "global_devices": len(leaves[0].sharding.device_set)}, f)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: dict, folder, timeout: float) -> dict[str, str]:
    """Wait for every process; when one fails or the time is up, stop the rest (a
    process whose partner died would wait in a collective forever).  Returns the logs."""
    import time

    end = time.monotonic() + timeout
    while any(p.poll() is None for p in procs.values()):
        if time.monotonic() > end or any(p.poll() not in (None, 0) for p in procs.values()):
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.5)
    logs = {}
    for name, p in procs.items():
        p.wait()
        logs[name] = (folder / f"{name}.log").read_text()
        if p.returncode and p.returncode < 0:
            logs[name] += f"\n[stopped: timeout {timeout} s or another process failed]"
    return logs


def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    coordinator = f"127.0.0.1:{_free_port()}"
    jobs = {"single": ("single", 0, tmp_path / "single"), "p0": ("multi", 0, tmp_path / "multi"),
            "p1": ("multi", 1, tmp_path / "multi")}
    procs = {}
    for name, (mode, pid, run) in jobs.items():
        argv = [sys.executable, "-c", _WORKER, mode, coordinator, str(pid),
                str(tmp_path / f"{name}.json"), str(run)]
        with open(tmp_path / f"{name}.log", "w") as log:  # a file: a full pipe cannot block it
            procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    logs = _wait(procs, tmp_path, timeout=480)
    failed = [n for n, p in procs.items() if p.returncode != 0]
    assert not failed, "\n".join(f"--- {n} (exit {procs[n].returncode}):\n{logs[n][-3000:]}"
                                 for n in failed)
    out = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in procs}
    one, p0, p1 = out["single"], out["p0"], out["p1"]
    assert one["global_devices"] == 1 and p0["global_devices"] == p1["global_devices"] == 2
    for row_1, row_0, row_p1 in zip(one["history"], p0["history"], p1["history"]):
        for k in ("train_loss", "train_acc", "eval_loss", "eval_acc"):
            assert abs(row_0[k] - row_1[k]) <= 1e-5, (k, row_0[k], row_1[k])
            assert row_p1[k] == row_0[k], k
    assert len(one["history"]) == len(p0["history"]) == 2
    np.testing.assert_allclose(p0["w"], one["w"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(p1["w"], p0["w"])
    # one writer: the shared run folder holds one run's files, written by process 0
    multi = tmp_path / "multi"
    assert sorted(os.listdir(multi / "checkpoints")) == sorted(
        os.listdir(tmp_path / "single" / "checkpoints"))
    assert (multi / "metrics.csv").read_text().count("\n") == 3
    assert len(list((multi / "tb").iterdir())) == 1  # one event file, not one per process
