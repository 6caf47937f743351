"""Benchmark suite: every model family of jaxode beside PyTorch + torchdiffeq.

For each model (`benchmarks._suite_models`: Chen et al.'s MNIST ODE block and whole
ODE-Net, Carrara et al.'s ODE-only and Res-ODE nets on 32x32 inputs, Tomen et al.'s
DCN-ODE, SegNode at a small crop, the NODE-EW block, the 2-D CNF) and one size, the
suite measures in one process:

- the time of one training step (loss and gradients of all parameters; no optimiser
  update) and of one inference batch: median (min, max) of `--repeats` runs after
  the first call, each waited on with ``block_until_ready``; all four candidates of a
  model (jaxode train / infer, torch train / infer) are timed round-robin so they
  share the machine's load (`common.time_interleaved`);
- forward and backward NFE (jaxode: `SolveStats.nfe` and `backward_nfe`; torch: a
  counter in the field);
- compile time (first call minus the median run, and XLA's own backend compile time
  from ``jax.monitoring``);
- memory: the compiled program's ``memory_analysis()`` (arguments + outputs +
  temporaries - aliased), and on a GPU the device's peak bytes in use;
- that changing the tolerance, the end time t1 or the batch's content does not
  recompile (the jitted function's ``_cache_size()`` and the compile events during the
  call; the non-array part of the model must also be unchanged);
- the same model in torch with the same weights (`benchmarks.torch_ref`), the same
  tolerance (dopri5, rtol = atol), batch and loss, gradients by ``odeint_adjoint`` (the
  continuous adjoint, as jaxode's default ``backsolve``), and the ratios jaxode / torch.

Run (writes ``benchmarks/results/suite-<machine>.json`` and ``.md``; other sizes add
``-<size>`` to the name)::

    python -m benchmarks.suite                       # all models, --size small
    python -m benchmarks.suite --models chen-block,cnf --repeats 3
    python -m benchmarks.suite --size paper --models carrara-odeonly

torch uses as many threads as this process has cores (XLA:CPU uses all of them), with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: spinning OpenMP threads
made torch's 2-thread steps 6-12x slower on the shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from jaxode.compile_log import CompileLog

from benchmarks._suite_models import CASES, MODEL_NAMES, SIZES, NotPorted, describe

COMPILE_LIMIT_S = 60.0


def parse_args(argv=None):
    from jaxode.cli import check_args

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description="Time one training step and one inference batch of every jaxode model "
        "family (NFE, compile time, memory, recompilation checks) beside the same model in "
        "PyTorch + torchdiffeq with the same weights, tolerance and batch.",
    )
    p.add_argument("--size", choices=("small", "paper", "tiny"), default="small",
                   help="model and batch sizes: small (default; the whole CPU run takes a few "
                   "minutes), paper (the papers' widths and batches), tiny (for tests)")
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help=f"comma-separated subset of {', '.join(MODEL_NAMES)} (default: all)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="rtol = atol of both libraries' dopri5 (default 1e-3, the papers')")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the first call (default 5)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch / torchdiffeq")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: the cores of this process, as XLA:CPU "
                   "uses; OMP_WAIT_POLICY=PASSIVE unless set in the environment)")
    p.add_argument("--torch-device", default="auto",
                   help="torch device: auto (default: cuda when JAX runs on a GPU and torch sees "
                   "CUDA, else cpu), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    p.add_argument("--xla-cpu", choices=("default", "fast"), default=None,
                   help="XLA:CPU options: default (XLA's) or fast (jaxode.backend.CPU_FAST_FLAGS: "
                   "YNN fusions for elementwise ops and dots too; no effect on a GPU; see "
                   "docs/results/field_cost.md: not a repeatable gain on the loaded CPU). Default: "
                   "fast if JAXODE_CPU_FAST=1, else default. Results of 'fast' are written with "
                   "'-cpufast' in their name; the setting and XLA_FLAGS are in both outputs")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                   help="folder for the JSON and Markdown results (default benchmarks/results)")
    args = p.parse_args(argv)
    check_args(p, args, positive=("tol", "repeats", "torch_threads"), choices={"models": MODEL_NAMES})
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


# --------------------------------------------------------------- compile events


class Jitted:
    """``fn(model, *batch)`` compiled with ``jax.jit`` over the model's arrays; the
    model's non-array part is fixed at construction.  Calling with a model whose
    non-array part differs raises (that would be a recompilation under
    ``eqx.filter_jit``), so a call that succeeds without growing `cache_size` reused
    the compiled program."""

    def __init__(self, fn, model):
        import equinox as eqx
        import jax

        _, self.static = eqx.partition(model, eqx.is_array)
        static = self.static
        self.jit = jax.jit(lambda params, *batch: fn(eqx.combine(params, static), *batch))

    def same_static(self, model) -> bool:
        import equinox as eqx

        return bool(eqx.tree_equal(eqx.partition(model, eqx.is_array)[1], self.static))

    def params(self, model):
        import equinox as eqx

        if not self.same_static(model):
            raise ValueError("the model's non-array part changed: this would recompile")
        return eqx.partition(model, eqx.is_array)[0]

    def __call__(self, model, *batch):
        return self.jit(self.params(model), *batch)

    def cache_size(self) -> int:
        return self.jit._cache_size()

    def memory(self, model, *batch) -> dict:
        """The compiled program's memory analysis (bytes) for these arguments."""
        stats = self.jit.lower(self.params(model), *batch).compile().memory_analysis()
        if stats is None:
            return {}
        out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in
               ("argument", "output", "alias", "temp", "generated_code")}
        out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
        return out


# --------------------------------------------------------------------- the steps


def jax_steps(case, model):
    """(train, infer) `Jitted` functions.  train: loss, forward NFE, backward NFE and
    the gradients of the trainable arrays; infer: output and forward NFE."""
    import equinox as eqx

    from jaxode.ode import backward_nfe, train_value_and_grad, trainable

    def train(model, *batch):
        (loss, nfe), grads = train_value_and_grad(case.loss, has_aux=True)(model, *batch)
        return loss, nfe, backward_nfe(grads), eqx.filter(grads, trainable(model))

    def infer(model, *batch):
        return case.infer(model, *batch)

    return Jitted(train, model), Jitted(infer, model)


def torch_steps(case, tmodel, batch_np, device="cpu"):
    """(train, infer) zero-argument torch calls returning (loss or None, NFE fwd, NFE bwd),
    on `device` (the model must already be there); on a GPU each call waits for its
    kernels (``torch.cuda.synchronize``) so that its time is the step's."""
    import torch

    from benchmarks.torch_ref import reset_nfe, torch_nfe

    batch = tuple(torch.from_numpy(np.array(b, copy=True)).to(device) for b in batch_np)
    wait = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def train():
        tmodel.zero_grad(set_to_none=True)
        reset_nfe(tmodel)
        loss = case.torch_loss(tmodel, *batch)
        nf = torch_nfe(tmodel)
        loss.backward()
        wait()
        return float(loss.detach()), nf, torch_nfe(tmodel) - nf

    def infer():
        reset_nfe(tmodel)
        with torch.no_grad():
            case.torch_infer(tmodel, *batch)
        wait()
        return None, torch_nfe(tmodel), 0

    return train, infer


# ------------------------------------------------------------- model variations


def with_end_time(model, factor: float):
    """`model` with every ODE block's t1 scaled by `factor` (an array: no recompile)."""
    import equinox as eqx

    from jaxode.train.utils import ode_blocks

    blocks = ode_blocks(model)
    return eqx.tree_at(lambda m: [b.t1 for b in ode_blocks(m)], model,
                       [b.t1 * factor for b in blocks])


def recompile_checks(fn: Jitted, model, batch, fresh_batch) -> dict:
    """Call `fn` with a looser tolerance, a shorter end time and a fresh batch; for
    each, the number of new compiled programs (0 = reused)."""
    import jax

    from jaxode.train.utils import ode_blocks, with_tolerance

    tol = float(ode_blocks(model)[0].config.rtol)
    variants = {
        "tolerance": (with_tolerance(model, 2 * tol), batch),
        "t1": (with_end_time(model, 0.9), batch),
        "batch": (model, fresh_batch),
    }
    log = CompileLog.get()
    out = {}
    for name, (m, b) in variants.items():
        if not fn.same_static(m):
            out[name] = "static part changed"
            continue
        params = fn.params(m)
        before, mark = fn.cache_size(), log.mark()
        jax.block_until_ready(fn.jit(params, *b))
        ev = log.since(mark)
        out[name] = max(fn.cache_size() - before, ev["compiles"])
    return out


# ------------------------------------------------------------------------ one model


def prepare_torch(args) -> tuple[bool, int]:
    """Import torch + torchdiffeq for the suite (unless ``args.no_torch``): passive
    OpenMP waiting, `args.torch_threads` threads (default: this process's cores), and
    ``args.torch_device`` resolved.  Returns (torch usable, threads)."""
    from benchmarks import common

    threads = args.torch_threads or common.cpu_count()
    if args.no_torch:
        return False, threads
    # OpenMP threads that spin while waiting make a multi-threaded torch step 6-12x
    # slower on a shared CPU (measured: Chen block, 2 threads, load 7: 4.5-8.4 s
    # spinning, 0.9-1.2 s passive, 0.7 s with 1 thread); read when torch loads
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        print("torch was imported before the suite: OMP_WAIT_POLICY not applied", flush=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        import torchdiffeq  # noqa: F401
    except ImportError as e:
        print(f"torch / torchdiffeq not importable ({e}); timing jaxode only", flush=True)
        return False, threads
    torch.set_num_threads(threads)
    args.torch_device = resolve_torch_device(getattr(args, "torch_device", "auto"))
    return True, threads


def resolve_torch_device(choice: str = "auto") -> str:
    """``auto`` -> ``cuda`` when JAX's backend is a GPU and torch sees CUDA, else
    ``cpu``; ``cpu`` / ``cuda`` as given (``cuda`` without CUDA in torch: an error)."""
    import jax
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--torch-device must be auto, cpu or cuda, got {choice!r}.")
    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--torch-device cuda: this torch sees no CUDA device; pass cpu or auto.")
    return choice


def _params(model) -> int:
    from jaxode.train.utils import count_params

    return count_params(model)


def _fresh_batch(batch_np, seed):
    """A batch of the same shapes and dtypes with other contents: inputs moved by
    N(0, 0.1^2) noise, integer labels permuted."""
    rng = np.random.default_rng(seed)
    out = []
    for b in batch_np:
        if np.issubdtype(b.dtype, np.floating):
            out.append((b + 0.1 * rng.standard_normal(b.shape)).astype(b.dtype))
        else:
            out.append(rng.permutation(b.reshape(-1)).reshape(b.shape))
    return tuple(out)


def _device_peak() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return None if not stats else stats.get("peak_bytes_in_use")


def run_model(name, args, use_torch, say):
    import jax
    import jax.numpy as jnp

    case = CASES[name]
    s = SIZES[name][args.size]
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    # rbg bits for the initialisation: with JAX's default threefry, drawing the weights
    # costs 5-20 s of compilation per model on a CPU (same distributions, other bits)
    with jax.default_prng_impl("rbg"):
        model, batch_np = case.build(s, args.tol, jax.random.PRNGKey(args.seed), rng)
    build_s = time.perf_counter() - t
    batch = tuple(jnp.asarray(b) for b in batch_np)
    fresh = tuple(jnp.asarray(b) for b in _fresh_batch(batch_np, args.seed + 1))
    row = dict(model=name, title=case.title, setting=describe(name, args.size), size=args.size,
               params=_params(model), build_s=build_s)

    train, infer = jax_steps(case, model)
    log = CompileLog.get()
    first_events = {}

    def jax_call(label, fn):
        def call():
            mark = log.mark()
            out = jax.block_until_ready(fn(model, *batch))
            if label not in first_events:
                first_events[label] = log.since(mark)
            return out

        return call

    calls = {"jax train": jax_call("train", train), "jax infer": jax_call("infer", infer)}
    tmodel = None
    if use_torch:
        try:
            if case.torch_model is None:
                raise NotPorted("torch: not ported")
            tmodel = case.torch_model(model)
        except NotPorted as e:
            row["torch"] = str(e)
        else:
            device = getattr(args, "torch_device", "cpu")
            tt, ti = torch_steps(case, tmodel.to(device), batch_np, device)
            calls["torch train"], calls["torch infer"] = tt, ti
            row["torch"] = "ported"
    else:
        row["torch"] = "skipped (--no-torch)"

    timings, outs = _time(calls, args.repeats, say)
    loss, nf, nb, _ = outs["jax train"]
    _, nfi = outs["jax infer"]
    row["jax"] = dict(
        train=dict(timings["jax train"]), infer=dict(timings["jax infer"]),
        nfe_fwd=int(nf), nfe_bwd=int(nb), nfe_infer=int(nfi), loss=float(loss),
        compile_train_s=timings["jax train"]["first"] - timings["jax train"]["median"],
        compile_infer_s=timings["jax infer"]["first"] - timings["jax infer"]["median"],
        compile_events_train=first_events.get("train"), compile_events_infer=first_events.get("infer"),
        memory_train=train.memory(model, *batch), memory_infer=infer.memory(model, *batch),
    )
    row["jax"]["compile_ok"] = bool(max(row["jax"]["compile_train_s"], row["jax"]["compile_infer_s"])
                                    < COMPILE_LIMIT_S)
    peak = _device_peak()
    if peak is not None:
        row["jax"]["device_peak_bytes"] = int(peak)
    if "torch train" in timings:
        tloss, tnf, tnb = outs["torch train"]
        _, tnfi, _ = outs["torch infer"]
        tr, ti = timings["torch train"], timings["torch infer"]
        row["torch_result"] = dict(train=dict(tr), infer=dict(ti), nfe_fwd=tnf, nfe_bwd=tnb,
                                   nfe_infer=tnfi, loss=tloss)
        jt, ji = timings["jax train"]["median"], timings["jax infer"]["median"]
        row["ratio_train"] = jt / tr["median"]
        row["ratio_infer"] = ji / ti["median"]
        jn, tn = max(int(nf) + int(nb), 1), max(tnf + tnb, 1)
        row["ratio_train_per_nfe"] = (jt / jn) / (tr["median"] / tn)
        row["loss_rel_diff"] = abs(float(loss) - tloss) / max(abs(tloss), 1e-30)
        row["target_met"] = bool(row["ratio_train"] <= 1.0)
    say(f"{name}: recompilation checks")
    row["recompiles"] = dict(train=recompile_checks(train, model, batch, fresh),
                             infer=recompile_checks(infer, model, batch, fresh))
    return row


def _time(calls, repeats, say):
    from benchmarks import common

    return common.time_interleaved(calls, repeats, progress=lambda msg: say("  " + msg))


# --------------------------------------------------------------------------- output


def _t(t):
    return f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"


def _mib(n):
    return f"{n / 2**20:.2f}"


def to_markdown(results) -> str:
    from benchmarks.common import markdown_table

    m, c = results["machine"], results["config"]
    head = (f"jaxode model suite, size `{c['size']}`: one training step (loss + gradients, no "
            f"optimiser update) and one inference batch per model, dopri5 with rtol = atol = "
            f"{c['tol']:g}, gradients by backsolve (jaxode) / odeint_adjoint (torchdiffeq), same "
            f"weights and batch in both; median (min-max) of {c['repeats']} runs after the first "
            f"call, the four candidates of a model timed round-robin.\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['backend']}: {m['device']}); torch "
            f"device {c.get('torch_device', 'cpu')}, threads: {c.get('torch_threads')} (OMP_WAIT_POLICY={c.get('omp_wait_policy')}); load average before/after: {m.get('load_average')}"
            f" / {results.get('load_average_after')}; {m['date']}; jax {m['jax']}, diffrax "
            f"{m.get('diffrax')}, equinox {m.get('equinox')}, torch {m.get('torch')}, torchdiffeq "
            f"{m.get('torchdiffeq')}. XLA:CPU options: {c.get('xla_cpu', 'default')} (XLA_FLAGS="
            f"{c.get('xla_flags') or '(none)'}). Total wall time {results.get('wall_s', 0):.0f} s.\n")
    headers = ["model", "setting", "params", "train s jaxode", "train s torch", "ratio",
               "<= 1.0x?", "infer s jaxode", "infer s torch", "ratio",
               "NFE f/b jaxode", "NFE f/b torch"]
    rows = []
    for r in results["rows"]:
        j, tr = r["jax"], r.get("torch_result")
        rows.append([
            r["model"], r["setting"], f"{r['params']:,}", _t(j["train"]),
            _t(tr["train"]) if tr else r["torch"], f"{r['ratio_train']:.2f}" if tr else "-",
            ("yes" if r["target_met"] else "**no**") if tr else "-",
            _t(j["infer"]), _t(tr["infer"]) if tr else "-",
            f"{r['ratio_infer']:.2f}" if tr else "-",
            f"{j['nfe_fwd']}/{j['nfe_bwd']}", f"{tr['nfe_fwd']}/{tr['nfe_bwd']}" if tr else "-",
        ])
    table1 = markdown_table(headers, rows)
    headers2 = ["model", "compile s train / infer", "XLA compile s train / infer", "< 60 s?",
                "XLA memory MiB train / infer (temp)", "recompiles train (tol/t1/batch)",
                "recompiles infer (tol/t1/batch)", "train ratio per NFE", "loss rel. diff vs torch"]
    rows2 = []
    for r in results["rows"]:
        j = r["jax"]
        ev_t, ev_i = j.get("compile_events_train") or {}, j.get("compile_events_infer") or {}
        mt, mi = j["memory_train"], j["memory_infer"]
        rc = r["recompiles"]
        mem = (f"{_mib(mt['total'])} ({_mib(mt['temp'])}) / {_mib(mi['total'])} ({_mib(mi['temp'])})"
               if mt and mi else "-")
        if "device_peak_bytes" in j:
            mem += f"; device peak {_mib(j['device_peak_bytes'])}"
        rows2.append([
            r["model"], f"{j['compile_train_s']:.1f} / {j['compile_infer_s']:.1f}",
            f"{ev_t.get('backend_compile_s', 0):.1f} / {ev_i.get('backend_compile_s', 0):.1f}",
            "yes" if j["compile_ok"] else "**no**", mem,
            "/".join(str(rc["train"][k]) for k in ("tolerance", "t1", "batch")),
            "/".join(str(rc["infer"][k]) for k in ("tolerance", "t1", "batch")),
            f"{r['ratio_train_per_nfe']:.2f}" if "ratio_train_per_nfe" in r else "-",
            f"{r['loss_rel_diff']:.1e}" if "loss_rel_diff" in r else "-",
        ])
    foot = ("\nratio = jaxode / torch (below 1: jaxode is faster); the target is a training step "
            "<= 1.0x torchdiffeq's time. NFE f/b: forward / backward evaluations of the field in "
            "the training step (the two libraries' step-size controllers differ, so equal "
            "tolerance is not equal work; 'ratio per NFE' divides it out). compile s: first call "
            "minus the median run (tracing + XLA); XLA compile s: XLA's own compile time "
            "(jax.monitoring). Memory: the compiled program's memory_analysis(), arguments + "
            "outputs + temporaries - aliased (temporaries alone in brackets). Recompiles: new "
            "compiled programs when the tolerance is doubled, t1 scaled by 0.9 and the batch is "
            "replaced (0 = the program was reused). Loss rel. diff: the two libraries' loss at "
            "the same weights (differs by the solvers' discretisation error).")
    return head + "\n" + table1 + "\n\n" + markdown_table(headers2, rows2) + "\n" + foot


# ----------------------------------------------------------------------------- main


def run(args):
    from tqdm import tqdm

    from benchmarks import common
    from jaxode import backend

    t_start = time.perf_counter()
    if getattr(args, "xla_cpu", None) == "fast":
        backend.use_cpu_fast()  # before describe_machine creates the backend
    xla_cpu = backend.xla_cpu_setting()
    if getattr(args, "xla_cpu", None) == "default" and xla_cpu == "fast":
        raise SystemExit("--xla-cpu default, but XLA_FLAGS already holds jaxode.backend.CPU_FAST_FLAGS "
                         "(JAXODE_CPU_FAST=1 or set by hand): unset it to time XLA's defaults.")
    use_torch, threads = prepare_torch(args)
    info = common.describe_machine()
    print(f"machine: {info['cpu']} ({info['cores']} cores, backend {info['backend']}), load "
          f"average {info.get('load_average')}; size {args.size}; torch threads {threads}; XLA:CPU "
          f"options {xla_cpu} (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)
    CompileLog.get()
    results = {"config": vars(args) | {"torch_threads": threads if use_torch else None,
                                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                       "xla_cpu": xla_cpu, "xla_flags": os.environ.get("XLA_FLAGS", "")},
               "machine": info, "rows": []}
    bar = tqdm(args.models, desc="models", unit="model", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        row = run_model(name, args, use_torch, lambda msg: tqdm.write(msg, file=sys.stderr))
        results["rows"].append(row)
        j = row["jax"]
        msg = (f"{name:16s} train {j['train']['median']:.3f} s, infer {j['infer']['median']:.3f} s, "
               f"NFE {j['nfe_fwd']}/{j['nfe_bwd']}, compile {j['compile_train_s']:.1f} s")
        if "ratio_train" in row:
            msg += f"; torch train {row['torch_result']['train']['median']:.3f} s, ratio {row['ratio_train']:.2f}"
        else:
            msg += f"; {row['torch']}"
        tqdm.write(msg)
    results["wall_s"] = time.perf_counter() - t_start
    tag = common.machine_tag(info)
    stem = (f"suite-{tag}" + ("" if args.size == "small" else f"-{args.size}")
            + ("-cpufast" if xla_cpu == "fast" else ""))
    common.report(results, args.out, stem, to_markdown)
    return results


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
