"""Benchmark: memory of one gradient step against the integration length t1.

Chen et al. (2018), Sec. 2: the continuous adjoint ("backsolve") computes dL/dtheta
by integrating the adjoint a(t) = dL/dz(t) backwards,

    da/dt = -a^T df/dz,      dL/dtheta = -int_{t1}^{t0} a^T df/dtheta dt,

together with z(t) itself, so it stores no intermediate state: its memory is O(1)
in the number of solver steps.  Backpropagating through the solver stores states:
``checkpoint`` (`diffrax.RecursiveCheckpointAdjoint`, ~sqrt(max_steps) checkpoints
plus recomputation) grows slowly, ``direct`` (`diffrax.DirectAdjoint`, a nested
checkpointed loop of base 16) grows by levels.

For every gradient mode and every t1 in `--t1`, one gradient step of
``loss = mean(z(t1)^2)`` through a conv ODE block (`ConvODEFunc`: GroupNorm-ReLU-
ConcatConv3x3 twice, GroupNorm; Chen et al.'s MNIST block), and optionally of a
whole classifier (`odeonly_net` on digit-sized images, cross-entropy), is compiled
and its memory read from XLA's analysis of the compiled program
(`benchmarks.common.compile_with_memory`: temp + arguments + outputs, the buffers
the program holds; the same approach as ``tests/test_ode_memory.py``, independent of
the machine's load).  On a GPU the run's ``peak_bytes_in_use`` is recorded too
(each point then runs in its own process, as that counter is a process-wide
high-water mark).  The program is then run once for the forward and backward NFE.

The step budget grows with t1, as a user would set it: ``--steps-per-unit K`` gives
fixed-step solvers dt = 1/K (so K t1 steps) and every solver ``max_steps = K t1``.
The compiled memory of checkpoint and direct follows this budget (a static size),
not the steps actually taken, so an adaptive solver (``--solver dopri5``) needs
K large enough for its steps and the backward solve's.

Run (writes ``benchmarks/results/memory-<machine>.{json,md}`` and
``docs/figures/bench_memory_vs_t1.png``)::

    python -m benchmarks.memory                         # block, t1 = 1 ... 16, all modes
    python -m benchmarks.memory --classifier            # and the whole classifier
    python -m benchmarks.memory --t1 1,4 --modes backsolve --channels 4 --size 4   # quick

The target of issue 8: backsolve's total memory flat within 10% from t1 = 1 to 16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("backsolve", "checkpoint", "direct")
SOLVERS = ("rk4", "euler", "midpoint", "dopri5", "tsit5", "bosh3")
FLAT_TOLERANCE = 0.10
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description="Memory of one gradient step (compiled-program memory analysis; on a GPU "
        "also peak_bytes_in_use) against the end time t1, for the backsolve, checkpoint and "
        "direct gradient modes of a conv ODE block (and optionally a whole classifier), with "
        "the forward and backward NFE. Checks that backsolve stays flat within 10%%.",
        epilog="The step budget is --steps-per-unit x t1 (fixed-step solvers: dt = "
        "1/steps-per-unit), so the number of solver steps grows with t1.",
    )
    a = p.add_argument
    a("--t1", default="1,2,4,8,16", help="comma-separated end times (default 1,2,4,8,16)")
    a("--modes", default=",".join(MODES), help="comma-separated gradient modes out of "
      f"{', '.join(MODES)} (default: all)")
    a("--solver", default="rk4", choices=SOLVERS, help="ODE solver (default rk4, fixed step)")
    a("--steps-per-unit", type=int, default=4,
      help="steps per unit of time: dt = 1/K for fixed-step solvers, max_steps = K t1 for all "
      "(default 4)")
    a("--tol", type=float, default=1e-3, help="rtol = atol of an adaptive solver (default 1e-3)")
    a("--channels", type=int, default=32, help="channels of the ODE state (default 32)")
    a("--size", type=int, default=8, help="height = width of the ODE state (default 8)")
    a("--batch", type=int, default=16, help="batch size (default 16)")
    a("--classifier", action="store_true",
      help="also measure a whole classifier (odeonly_net: conv stem, the ODE block, head) on "
      "8x8x1 digit-sized images with a cross-entropy loss")
    a("--subprocess", choices=("auto", "yes", "no"), default="auto",
      help="measure each point in a fresh process (auto: only on GPU, where peak_bytes_in_use "
      "is a process-wide high-water mark)")
    a("--seed", type=int, default=0)
    a("--out", default=os.path.join(_HERE, "results"),
      help="folder for the JSON and Markdown results (default benchmarks/results)")
    a("--figure", default=os.path.join(_ROOT, "docs", "figures", "bench_memory_vs_t1.png"),
      help="PNG of memory against t1 (default docs/figures/bench_memory_vs_t1.png)")
    a("--point", help=argparse.SUPPRESS)  # internal: one point as JSON, for --subprocess
    return p


def parse_args(argv=None):
    from jaxode import cli as _cli

    p = build_parser()
    args = p.parse_args(argv)
    _cli.check_args(p, args, positive=("tol",),
                    at_least={"steps_per_unit": 1, "channels": 1, "size": 1, "batch": 1},
                    choices={"modes": MODES})
    args.modes = _cli.split_list(args.modes)
    args.t1 = _cli.check_list(p, "t1", args.t1, kind=float, minimum=0)
    if any(t <= 0 or t * args.steps_per_unit != round(t * args.steps_per_unit) for t in args.t1):
        p.error(f"argument --t1: every end time must be positive and a whole number of steps "
                f"of 1/{args.steps_per_unit} (--steps-per-unit), got {args.t1}.")
    _cli.check_widths(p, "channels", args.channels)
    return args


# ------------------------------------------------------------------------- one point


def _solve_config(args, mode, t1):
    from jaxode.ode import ADAPTIVE_SOLVERS, SolveConfig

    budget = int(round(t1 * args.steps_per_unit))
    kw = {"rtol": args.tol, "atol": args.tol} if args.solver in ADAPTIVE_SOLVERS else {
        "dt": 1.0 / args.steps_per_unit}
    return SolveConfig(solver=args.solver, adjoint=mode, max_steps=budget, **kw)


def _block_problem(args, mode, t1):
    """(loss_and_stats(model, x), model, x) for the conv ODE block."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.ode import ODEBlock

    block = ODEBlock(ConvODEFunc(args.channels, key=jax.random.PRNGKey(args.seed)), 0.0, t1,
                     _solve_config(args, mode, t1), name="conv-block")
    z0 = jnp.asarray(np.random.default_rng(args.seed).standard_normal(
        (args.batch, args.channels, args.size, args.size)), jnp.float32)

    def loss(b, z):
        z1, stats = b.batched(z)
        return jnp.mean(z1**2), stats.nfe

    return loss, block, z0


def _classifier_problem(args, mode, t1):
    """(loss_and_stats, model, batch) for `odeonly_net` on 8x8x1 images."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxode.models import odeonly_net
    from jaxode.train import ClassificationTask

    k_model, k_loss = jax.random.split(jax.random.PRNGKey(args.seed))
    model = odeonly_net(10, in_channels=1, channels=args.channels, stem_kernel=3,
                        stem_stride=1, stem_padding=1, dropout=0.0,
                        solve=_solve_config(args, mode, t1), key=k_model)
    model = eqx.tree_at(lambda m: m.ode.t1, model, jnp.asarray(t1, jnp.float32))
    rng = np.random.default_rng(args.seed)
    batch = {"image": rng.integers(0, 17, (args.batch, 8, 8, 1)).astype(np.uint8),
             "label": rng.integers(0, 10, (args.batch,)).astype(np.int32)}
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    task = ClassificationTask()

    def loss(m, b):
        value, metrics = task.train_loss(m, b, k_loss)
        return value, metrics["nfe"]

    return loss, model, batch


def measure_point(args, target: str, mode: str, t1: float) -> dict:
    """Compile one gradient step, read its memory, run it once for NFE (and on a
    GPU the peak bytes in use)."""
    import jax

    from benchmarks.common import compile_with_memory
    from jaxode.ode import backward_nfe, train_value_and_grad

    make = _block_problem if target == "block" else _classifier_problem
    loss, model, x = make(args, mode, t1)

    def grad_step(m, inp):
        (value, nfe), grads = train_value_and_grad(loss, has_aux=True)(m, inp)
        return value, nfe, backward_nfe(grads), grads

    t = time.perf_counter()
    call, memory = compile_with_memory(grad_step, model, x)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    value, nfe, nfe_bwd, _ = call()
    run_s = time.perf_counter() - t
    row = {"target": target, "mode": mode, "t1": t1,
           "max_steps": int(round(t1 * args.steps_per_unit)), "memory": memory,
           "nfe_fwd": int(jax.device_get(nfe)), "nfe_bwd": int(jax.device_get(nfe_bwd)),
           "loss": float(value), "compile_s": compile_s, "run_s": run_s}
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        row["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    return row


def _point_in_subprocess(argv, target, mode, t1) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", *argv,
           "--point", json.dumps([target, mode, t1]), "--subprocess", "no"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT)
    line = [s for s in proc.stdout.splitlines() if s.startswith("POINT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"point {target}/{mode}/t1={t1} failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[-1][len("POINT "):])


# ------------------------------------------------------------------------------ run


def flatness(rows, target="block", mode="backsolve", key="total"):
    """max / min of the memory `key` over t1 for one target and mode (None: no data)."""
    values = [r["memory"][key] for r in rows
              if r["target"] == target and r["mode"] == mode and r["memory"]]
    return max(values) / min(values) if len(values) > 1 else None


def run(args, argv=None) -> dict:
    from benchmarks import common

    info = common.describe_machine()
    isolate = args.subprocess == "yes" or (args.subprocess == "auto" and info["backend"] != "cpu")
    targets = ["block"] + (["classifier"] if args.classifier else [])
    print(f"machine: {info['cpu']} ({info['cores']} cores, backend {info['backend']}), load "
          f"average {info.get('load_average')}", flush=True)
    print(f"conv ODE block {args.channels}ch {args.size}x{args.size}, batch {args.batch}, "
          f"{args.solver}, max_steps = {args.steps_per_unit} t1"
          + (f", dt = 1/{args.steps_per_unit}" if args.solver in ("rk4", "euler", "midpoint")
             else f", rtol = atol = {args.tol:g}"), flush=True)
    from tqdm.auto import tqdm

    points = [(tg, m, t1) for tg in targets for m in args.modes for t1 in args.t1]
    rows = []
    for tg, m, t1 in tqdm(points, desc="memory", leave=False):
        row = (_point_in_subprocess(argv or [], tg, m, t1) if isolate
               else measure_point(args, tg, m, t1))
        rows.append(row)
        mem = row["memory"]
        tqdm.write(f"  {tg:10s} {m:10s} t1={t1:<5g} total "
                   f"{mem['total'] / 2**20 if mem else float('nan'):8.3f} MiB  NFE "
                   f"{row['nfe_fwd']}/{row['nfe_bwd']}  compile {row['compile_s']:.1f} s")
    results = {"config": {k: v for k, v in vars(args).items() if k != "point"},
               "machine": info, "rows": rows, "isolated_processes": isolate,
               "flatness": {f"{tg}/{m}": flatness(rows, tg, m) for tg in targets
                            for m in args.modes}}
    bs = results["flatness"].get("block/backsolve")
    if bs is not None:
        results["target_backsolve_flat_within_10pct"] = bool(bs <= 1 + FLAT_TOLERANCE)
    common.report(results, args.out, f"memory-{common.machine_tag(info)}", to_markdown)
    if args.figure:
        plot(results, args.figure)
        print(f"wrote {args.figure}")
    return results


def to_markdown(results) -> str:
    from benchmarks.common import markdown_table

    m, c = results["machine"], results["config"]
    gpu = any("peak_bytes_in_use" in r for r in results["rows"])
    head = (f"Memory of one gradient step (forward + backward of the loss) against the end "
            f"time t1. Conv ODE block: ConvODEFunc, {c['channels']} channels at "
            f"{c['size']}x{c['size']}, batch {c['batch']}, loss mean(z(t1)^2)"
            + ("; classifier: odeonly_net (conv stem, the block, head) on 8x8x1 images, "
               "cross-entropy" if c["classifier"] else "")
            + f". Solver {c['solver']}, max_steps = {c['steps_per_unit']} t1"
            + (f" (dt = 1/{c['steps_per_unit']})" if c["solver"] in ("rk4", "euler", "midpoint")
               else f" (rtol = atol = {c['tol']:g})")
            + ". Memory from XLA's analysis of the compiled program: total = temp + arguments "
            "+ outputs (- aliased), in MiB"
            + ("; peak = device peak_bytes_in_use of a fresh process per point" if gpu else "")
            + ".\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['backend']}: {m['device']}); load "
            f"average before/after: {m.get('load_average')} / "
            f"{results.get('load_average_after')}; {m['date']}; jax {m['jax']}, diffrax "
            f"{m.get('diffrax')}.\n")
    headers = ["target", "mode", "t1", "max_steps", "total MiB", "temp MiB", "args MiB",
               "outputs MiB"] + (["peak MiB"] if gpu else []) + ["NFE fwd", "NFE bwd",
                                                                  "compile s"]
    mib = lambda b: f"{b / 2**20:.3f}"  # noqa: E731
    rows = []
    for r in results["rows"]:
        mem = r["memory"] or {}
        rows.append([r["target"], r["mode"], f"{r['t1']:g}", r["max_steps"],
                     mib(mem["total"]) if mem else "-", mib(mem["temp"]) if mem else "-",
                     mib(mem["arguments"]) if mem else "-", mib(mem["outputs"]) if mem else "-"]
                    + ([mib(r["peak_bytes_in_use"]) if "peak_bytes_in_use" in r else "-"]
                       if gpu else [])
                    + [r["nfe_fwd"], r["nfe_bwd"], f"{r['compile_s']:.1f}"])
    lines = []
    for name, ratio in results["flatness"].items():
        if ratio is not None:
            lines.append(f"- {name}: max/min total over t1 = {ratio:.3f}")
    verdict = results.get("target_backsolve_flat_within_10pct")
    if verdict is not None:
        lines.append(f"- target (block backsolve flat within 10%): "
                     f"{'met' if verdict else 'NOT met'}")
    return head + "\n" + markdown_table(headers, rows) + "\n\n" + "\n".join(lines)


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["memory"]]
    targets = sorted({r["target"] for r in rows}, key=["block", "classifier"].index)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8), squeeze=False)
    for ax, tg in zip(axes[0], targets):
        for i, mode in enumerate(MODES):
            pts = sorted((r["t1"], r["memory"]["total"] / 2**20, r["nfe_fwd"] + r["nfe_bwd"])
                         for r in rows if r["target"] == tg and r["mode"] == mode)
            if not pts:
                continue
            ts, mem, nfe = zip(*pts)
            ax.plot(ts, mem, "o-", color=f"C{i}", label=mode)
            for t, y, n in zip(ts, mem, nfe):
                ax.annotate(f"{n}", (t, y), textcoords="offset points",
                            xytext=(0, -11 if mode == "backsolve" else 5),
                            fontsize=6, ha="center", color=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("end time t1 (steps grow with t1)")
        ax.set_ylabel("compiled memory, MiB (temp + args + outputs)")
        ax.set_title(f"{tg}: one gradient step (labels: NFE fwd+bwd)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.point:
        target, mode, t1 = json.loads(args.point)
        print("POINT " + json.dumps(measure_point(args, target, mode, float(t1))), flush=True)
        return None
    # A parent that measures points in child processes must leave the GPU's memory to them.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    t = time.perf_counter()
    results = run(args, argv)
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
