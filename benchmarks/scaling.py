"""Benchmark: data-parallel training step on 1, 2, 4 devices.

`jaxode.train.parallel` splits each batch along its leading axis over a 1-D device
mesh (axis ``"data"``) and replicates the model; the jitted step is the one-device
program and XLA inserts the all-reduces: of the gradients, and for a joint-batch
adaptive ODE solve of the error norm, so every device takes the same solver steps.
Hence the sharded step must compute the single-device loss and gradients up to the
order of floating-point summation, and this benchmark proves it for each device
count (max abs difference of loss and of every gradient leaf, same weights and
batch).

For each N in `--devices`, a fresh process (JAX fixes its device count at start-up:
on the CPU ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before jax
is imported; where GPUs are present they are used instead) builds the ODE-only
classifier of `smoke-digits` (`odeonly_net`, conv stem, ConvODEFunc block with
dopri5 + backsolve adjoint, head) on 8x8 digits, and times the training step that
`jaxode.train.fit` runs (`jaxode.train.loop._train_step`: loss, gradients,
SGD-momentum update) on a fixed global batch (strong scaling): median (min, max) of
`--repeats` runs after compilation, throughput = batch / median.  It also checks that
changing the tolerance, the end time t1 or the batch contents does not recompile
the step (`benchmarks.common.CompileCounter`).

CPU host devices share the machine's cores: on a 2-core CPU, 4 host devices cannot
run faster than 2, and even 2 compete with XLA's own intra-op threads, so the CPU
numbers show the overhead of sharding, not a speed-up; real scaling needs real
devices.

Run (writes ``benchmarks/results/scaling-<machine>.{json,md}``)::

    python -m benchmarks.scaling                      # 1, 2, 4 devices, batch 64
    python -m benchmarks.scaling --devices 1,2 --batch 16 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description="Step time and throughput of the data-parallel training step of an ODE-Net "
        "classifier on 1, 2, 4 devices (CPU host devices or GPUs), the proof that the "
        "sharded step computes the single-device loss and gradients, and a check that "
        "changing tolerance, t1 or batch contents does not recompile the step.",
    )
    a = p.add_argument
    a("--devices", default="1,2,4", help="comma-separated device counts (default 1,2,4)")
    a("--batch", type=int, default=64,
      help="global batch size, the same for every device count (default 64)")
    a("--channels", type=int, default=32, help="width of the ODE block (default 32, smoke-digits)")
    a("--solver", choices=("dopri5", "euler"), default="dopri5",
      help="dopri5 (adaptive, smoke-digits' solver; default) or euler (fixed step, "
      "--euler-steps steps; compiles faster)")
    a("--tol", type=float, default=1e-3, help="rtol = atol of dopri5 (default 1e-3)")
    a("--euler-steps", type=int, default=10, help="steps of the euler solver (default 10)")
    a("--repeats", type=int, default=5, help="timed steps after compilation (default 5)")
    a("--platform", choices=("auto", "cpu"), default="auto",
      help="auto: GPUs where present, else CPU host devices; cpu: always CPU host devices")
    a("--proof-only", action="store_true",
      help="only compare the sharded loss and gradients with the single-device ones (no "
      "step timing, no recompilation check; quick)")
    a("--seed", type=int, default=0)
    a("--out", default=os.path.join(_HERE, "results"),
      help="folder for the JSON and Markdown results (default benchmarks/results)")
    a("--worker", type=int, help=argparse.SUPPRESS)  # internal: one device count
    return p


def parse_args(argv=None):
    from jaxode import cli as _cli

    p = build_parser()
    args = p.parse_args(argv)
    _cli.check_args(p, args, positive=("tol",), at_least={"batch": 1, "repeats": 1,
                                                           "channels": 1, "euler_steps": 1})
    _cli.check_widths(p, "channels", args.channels)
    args.devices = _cli.check_list(p, "devices", args.devices, kind=int, minimum=1)
    bad = [n for n in args.devices if args.batch % n]
    if bad:
        p.error(f"argument --batch: a batch of {args.batch} cannot be split evenly over "
                f"{bad} devices; pass a batch divisible by every count in --devices.")
    return args


# --------------------------------------------------------------------------- worker


def _setup(args, n_devices):
    """Model, task, two different batches of digits, and the optimiser pieces."""
    import jax
    import numpy as np

    from jaxode.data import load_dataset
    from jaxode.models import odeonly_net
    from jaxode.ode import SolveConfig
    from jaxode.train import ClassificationTask, TrainConfig
    from jaxode.train.loop import make_optimizer, train_state

    model = odeonly_net(10, in_channels=1, channels=args.channels, stem_kernel=3,
                        stem_stride=2, stem_padding=1, dropout=0.0,
                        solve=SolveConfig(rtol=args.tol, atol=args.tol)
                        if args.solver == "dopri5" else
                        SolveConfig(solver="euler", num_steps=args.euler_steps),
                        key=jax.random.PRNGKey(args.seed))
    train = load_dataset("digits", "train")
    if len(train) < 2 * args.batch:
        raise SystemExit(f"error: --batch {args.batch} is too large for the {len(train)} "
                         "digits training images (two batches are needed).")
    batches = [{"image": np.asarray(train.images[i * args.batch:(i + 1) * args.batch]),
                "label": np.asarray(train.labels[i * args.batch:(i + 1) * args.batch],
                                    np.int32)} for i in range(2)]
    tcfg = TrainConfig(epochs=1, batch_size=args.batch, lr=0.1, weight_decay=1e-4)
    tx = make_optimizer(tcfg)
    return model, ClassificationTask(), batches, tx, train_state(model, tcfg)["opt_state"]


def _max_abs_diff(a, b) -> tuple[float, float]:
    """(max |a - b|, max |b|) over the array leaves of two equal PyTrees."""
    import equinox as eqx
    import jax
    import numpy as np

    la = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))]
    lb = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))]
    diff = max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(la, lb))
    scale = max(float(np.max(np.abs(y))) if y.size else 0.0 for y in lb)
    return diff, scale


def worker(args, n: int) -> dict:
    """Everything measured with `n` devices, in this process."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from benchmarks import common
    from jaxode.ode import backward_nfe, train_value_and_grad, trainable
    from jaxode.train import data_mesh, replicate, shard_batch, with_tolerance
    from jaxode.train.loop import _train_step

    devices = jax.devices()
    if len(devices) < n:
        raise SystemExit(f"error: {n} devices requested, {len(devices)} present ({devices}).")
    info = common.describe_machine()
    model, task, batches, tx, opt_state = _setup(args, n)
    mesh1, mesh = data_mesh(devices=devices[:1]), data_mesh(devices=devices[:n])
    key = jax.random.PRNGKey(args.seed + 1)

    # 1. The sharded loss and gradients equal the single-device ones.
    @eqx.filter_jit
    def loss_and_grads(m, batch, k):
        (loss, metrics), grads = train_value_and_grad(task.train_loss, has_aux=True)(
            m, batch, k)
        return loss, metrics["nfe"], eqx.filter(grads, trainable(m)), backward_nfe(grads)

    one = loss_and_grads(replicate(model, mesh1), shard_batch(batches[0], mesh1), key)
    many = loss_and_grads(replicate(model, mesh), shard_batch(batches[0], mesh), key)
    grad_diff, grad_scale = _max_abs_diff(many[2], one[2])
    proof = {"loss_single": float(one[0]), "loss_sharded": float(many[0]),
             "loss_abs_diff": abs(float(many[0]) - float(one[0])),
             "nfe_single": float(one[1]), "nfe_sharded": float(many[1]),
             "nfe_backward_single": float(one[3]), "nfe_backward_sharded": float(many[3]),
             "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_scale,
             "grad_sharding_devices":
                 len(jax.tree_util.tree_leaves(many[2])[0].sharding.device_set)}

    result = {"devices": n, "device_kinds": [str(d) for d in devices[:n]], "machine": info,
              "proof": proof}
    if args.proof_only:
        return result

    # 2. Step time of the training step `fit` runs.
    lr = jnp.asarray(0.1, jnp.float32)

    def step(m, b):
        return _train_step(m, opt_state_r, None, b, key, lr, task, tx, None)

    model_r, opt_state_r = replicate((model, opt_state), mesh)
    batch_r = shard_batch(batches[0], mesh)
    timing, out = common.time_jax(step, model_r, batch_r, repeats=args.repeats)

    # 3. No recompilation when tolerance, t1 or batch contents change.
    changes = {
        "tolerance 1e-3 -> 1e-2": (with_tolerance(model, 1e-2), batches[0]),
        "t1 1 -> 0.5": (eqx.tree_at(lambda m: m.ode.t1, model,
                                    jnp.asarray(0.5, model.ode.t1.dtype)), batches[0]),
        "new batch contents": (model, batches[1]),
    }
    recompiles = {}
    for what, (m, b) in changes.items():
        m, b = replicate(m, mesh), shard_batch(b, mesh)
        with common.CompileCounter() as cc:
            jax.block_until_ready(step(m, b))
        recompiles[what] = cc.count_of("_train_step")
    return result | {"time": dict(timing), "images_per_s": args.batch / timing["median"],
                     "compile_s": timing["first"] - timing["median"],
                     "train_loss": float(out[3]), "train_step_recompiles": recompiles}


def _child(argv, n: int, platform: str) -> dict:
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={n}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", *argv, "--worker", str(n)],
                          env=env, capture_output=True, text=True, cwd=_ROOT)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {n}-device process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------- run


def run(args, argv) -> dict:
    from tqdm.auto import tqdm

    from benchmarks import common

    rows = []
    for n in tqdm(args.devices, desc="device counts", leave=False):
        r = _child(argv, n, args.platform)
        rows.append(r)
        p = r["proof"]
        timed = (f"{1e3 * r['time']['median']:.1f} ms/step, {r['images_per_s']:.0f} images/s; "
                 if "time" in r else "")
        tqdm.write(f"  {n} device(s): {timed}|loss_sharded - loss_single| = "
                   f"{p['loss_abs_diff']:.2e}, max |grad diff| = {p['grad_max_abs_diff']:.2e} "
                   f"(max |grad| {p['grad_max_abs']:.2e}); NFE fwd {p['nfe_single']:.0f} / "
                   f"{p['nfe_sharded']:.0f}, bwd {p['nfe_backward_single']:.0f} / "
                   f"{p['nfe_backward_sharded']:.0f}"
                   + (f"; recompiles {r['train_step_recompiles']}" if "time" in r else ""))
    info = rows[0]["machine"]
    base = next((r for r in rows if r["devices"] == 1 and "time" in r), None)
    for r in rows:
        r["speedup_vs_1"] = (base["time"]["median"] / r["time"]["median"]
                             if base and "time" in r else None)
    results = {"config": {k: v for k, v in vars(args).items() if k != "worker"},
               "machine": info, "rows": rows,
               "max_loss_abs_diff": max(r["proof"]["loss_abs_diff"] for r in rows),
               "max_grad_abs_diff": max(r["proof"]["grad_max_abs_diff"] for r in rows),
               "no_recompilation": None if args.proof_only else all(
                   v == 0 for r in rows for v in r["train_step_recompiles"].values())}
    common.report(results, args.out, f"scaling-{common.machine_tag(info)}", to_markdown)
    return results


def to_markdown(results) -> str:
    from benchmarks.common import markdown_table

    m, c = results["machine"], results["config"]
    head = (f"Data-parallel training step (`jaxode.train.loop._train_step`: loss, gradients, "
            f"SGD-momentum update) of the smoke-digits ODE-only net ({c['channels']} channels, "
            + (f"dopri5 rtol = atol = {c['tol']:g}" if c["solver"] == "dopri5"
               else f"euler, {c['euler_steps']} steps")
            + f", backsolve adjoint) on a global batch of "
            f"{c['batch']} 8x8 digits, split over N devices (`jaxode.train.parallel`); time = "
            f"median (min-max) of {c['repeats']} steps after compilation, one process per N.\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['backend']}: {m['device']}); load "
            f"average before/after: {m.get('load_average')} / {results.get('load_average_after')}; "
            f"{m['date']}; jax {m['jax']}.\n")
    headers = ["devices", "ms / step: median (min-max)", "images / s", "speed-up vs 1",
               "loss (1 dev)", "abs diff loss", "max abs diff grads (max abs grad)",
               "NFE fwd, bwd: 1 dev / N dev", "recompiles (tol, t1, batch)"]
    rows = []
    for r in results["rows"]:
        t, p = r.get("time"), r["proof"]
        rows.append([r["devices"],
                     f"{1e3 * t['median']:.1f} ({1e3 * t['min']:.1f}-{1e3 * t['max']:.1f})"
                     if t else "-", f"{r['images_per_s']:.0f}" if t else "-",
                     f"{r['speedup_vs_1']:.2f}" if r["speedup_vs_1"] else "-",
                     f"{p['loss_single']:.6f}", f"{p['loss_abs_diff']:.1e}",
                     f"{p['grad_max_abs_diff']:.1e} ({p['grad_max_abs']:.1e})",
                     f"{p['nfe_single']:.0f}, {p['nfe_backward_single']:.0f} / "
                     f"{p['nfe_sharded']:.0f}, {p['nfe_backward_sharded']:.0f}",
                     ", ".join(str(v) for v in r["train_step_recompiles"].values())
                     if t else "-"])
    rel = max(r["proof"]["grad_max_abs_diff"] / max(r["proof"]["grad_max_abs"], 1e-30)
              for r in results["rows"])
    notes = [f"\nSharded vs single device: max |loss diff| {results['max_loss_abs_diff']:.1e}, "
             f"max |gradient diff| {results['max_grad_abs_diff']:.1e} ({rel:.1e} of the largest "
             "gradient)."
             + (" Float32 summation order only." if rel < 1e-4 else
                " Above summation order: most likely the reordered sums moved a step-size "
                "decision of the adaptive (backward) solve, so the gradients differ by up to the "
                "solver's discretisation error (equal NFE; rerun with another --tol or --solver "
                "euler to "
                "see rounding-level agreement).")
             + ("" if results["no_recompilation"] is None else
                " Changing tolerance, t1 or batch contents "
                f"{'never recompiled' if results['no_recompilation'] else 'RECOMPILED'} the step.")]
    if m["backend"] == "cpu":
        notes.append(f"CPU host devices (`--xla_force_host_platform_device_count`) share this "
                     f"machine's {m['cores']} cores: more devices than cores cannot speed a step "
                     "up, so these numbers show the cost of sharding, not a parallel speed-up.")
    return head + "\n" + markdown_table(headers, rows) + "\n" + "\n".join(notes)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker is not None:
        print("RESULT " + json.dumps(worker(args, args.worker), default=float), flush=True)
        return None
    t = time.perf_counter()
    results = run(args, argv)
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
