"""Benchmark: accuracy, NFE and inference time of a trained ODE-Net against the
solver tolerance.

An adaptive solver (dopri5) takes steps until its local error estimate is below
``atol + rtol |z|``; loosening the tolerance at inference trades accuracy for fewer
field evaluations.  Chen et al. (2018, Sec. 3 and Fig. 3) show that the NFE of a
trained ODE-Net falls as the tolerance grows and that the test error moves little
around the training tolerance.  Carrara et al. (Sec. 4.1) measure the same on
CIFAR-10.

From a trained classifier (a run folder of `experiments.classify`, weights from its
newest checkpoint, EMA weights when the run kept them; `jaxode.train.load_run`
reads it), for every tolerance (rtol = atol = tol):

- test accuracy and NFE (mean +- std over the test set),
- time per inference batch: the median (min, max) of `--repeats` timed runs of one
  evaluation batch after the compilation, the tolerances timed round-robin
  (`benchmarks.common.time_interleaved`) so that all see the same machine load,
- the number of compilations of the evaluation step.  Tolerances are arrays inside
  the model (`SolveConfig`), so the whole sweep must reuse the first tolerance's
  compiled step: a compile counter (`benchmarks.common.CompileCounter`, a listener
  on JAX's compile events) checks that none happens after the first tolerance.

Run (writes ``benchmarks/results/tolerance-<run>-<batch mode>-<machine>.{json,md}`` and
``docs/figures/bench_tolerance.png``)::

    python -m experiments.classify --config smoke-digits        # trains runs/smoke-digits
    python -m benchmarks.tolerance --run runs/smoke-digits
    python -m benchmarks.tolerance --run runs/smoke-digits --tols 1e-1,1e-3 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tolerance",
        description="Test accuracy, NFE and time per inference batch of a trained classifier "
        "(a run folder of experiments.classify) against the ODE solver's tolerance "
        "(rtol = atol), with a check that changing the tolerance does not recompile.",
    )
    a = p.add_argument
    a("--run", required=True, help="run folder of experiments.classify (read by "
      "jaxode.train.load_run), e.g. runs/smoke-digits")
    a("--tols", default="1e-1,1e-2,1e-3,1e-4,1e-5,1e-6",
      help="comma-separated tolerances (default 1e-1,...,1e-6)")
    a("--batch-mode", choices=("joint", "per_sample"), default="joint",
      help="joint: one adaptive solve per batch (training's mode, the fast one); per_sample: "
      "one solve per image (per-image NFE)")
    a("--batch-size", type=int, help="inference batch size (default: the run's eval batch size)")
    a("--repeats", type=int, default=5,
      help="timed runs per tolerance after compilation (default 5)")
    a("--test-limit", type=int, help="use only the first N test images (default: the run's)")
    a("--data-root", help="dataset folder (default: the run's, else $JAXODE_DATA)")
    a("--out", default=os.path.join(_HERE, "results"),
      help="folder for the JSON and Markdown results (default benchmarks/results)")
    a("--figure", default=os.path.join(_ROOT, "docs", "figures", "bench_tolerance.png"),
      help="PNG of accuracy and time against tolerance (default docs/figures/bench_tolerance.png; "
      "'' for none)")
    return p


def parse_args(argv=None):
    from jaxode import cli as _cli

    p = build_parser()
    args = p.parse_args(argv)
    _cli.check_args(p, args, at_least={"repeats": 1, "batch_size": 1, "test_limit": 1},
                    existing=("data_root",))
    if not os.path.isdir(args.run):
        p.error(f"argument --run: {args.run!r} is not a folder; pass the run folder of an "
                "experiments.classify run, e.g. runs/smoke-digits.")
    args.tols = _cli.check_list(p, "tols", args.tols, kind=float)
    if any(not (t > 0 and np.isfinite(t)) for t in args.tols):
        p.error(f"argument --tols: every tolerance must be a finite number > 0, got {args.tols}.")
    from jaxode.train.runs import has_weights, read_config

    try:
        args.run_config = read_config(args.run)
    except (OSError, ValueError) as e:
        p.error(f"argument --run: {e}")
    if not isinstance(args.run_config.get("classify"), dict):
        p.error(f"argument --run: {args.run}/config.json is not from experiments.classify (no "
                "'classify' section naming the dataset); pass a classify run folder.")
    if not has_weights(args.run):
        p.error(f"argument --run: {args.run!r} holds no checkpoint (nor final weights); train "
                "the model first, e.g. python -m experiments.classify --config smoke-digits.")
    return args


def _load(args):
    """(model, task, test set, run's classify config) from the run folder."""
    from jaxode.train import load_run

    run = load_run(args.run, data_root=args.data_root)
    test = run.test_set(data_root=args.data_root, limit=args.test_limit)
    return run.model, run.task, test, run.config["classify"]


def run(args) -> dict:
    import equinox as eqx

    from benchmarks import common
    from jaxode.train import dataset_batches, evaluate, ode_blocks, with_batch_mode, with_tolerance

    info = common.describe_machine()
    model, task, test, ccfg = _load(args)
    if not ode_blocks(model):
        raise SystemExit(f"error: the model of {args.run} ({ccfg.get('model')}) has no ODE "
                         "block, so its tolerance cannot be varied.")
    model = with_batch_mode(model, args.batch_mode)
    bs = args.batch_size or int(ccfg.get("eval_batch_size") or 128)
    batches = lambda: dataset_batches(test, bs, shuffle=False)  # noqa: E731
    timing_batch = [next(iter(dataset_batches(test, bs, shuffle=False)))]
    n_timing = len(timing_batch[0]["label"])
    print(f"machine: {info['cpu']} ({info['cores']} cores, backend {info['backend']}), load "
          f"average {info.get('load_average')}", flush=True)
    print(f"run {args.run}: {ccfg.get('model')} on {ccfg['dataset']} (trained at tol "
          f"{ccfg.get('tol')}); {len(test)} test images, batch {bs}, {args.batch_mode} solves",
          flush=True)

    from tqdm.auto import tqdm

    rows, models = [], {}
    for tol in tqdm(args.tols, desc="accuracy per tolerance", leave=False):
        m = with_tolerance(model, tol)
        row = {"tol": tol}
        with common.CompileCounter() as cc:
            try:
                per = evaluate(m, task, batches(), batch_size=bs)
            except eqx.EquinoxRuntimeError as e:  # e.g. max_steps at a very tight tolerance
                why = next((ln for ln in str(e).splitlines() if "ODEBlock" in ln), str(e))
                row["error"] = why.split("EquinoxRuntimeError: ")[-1].strip()[:300]
                per = None
        row["eval_step_compiles"] = cc.count_of("_eval_step")
        row["all_compiles"] = cc.count
        if per is not None:
            models[tol] = m
            row.update(acc=float(np.mean(per["acc"])), nfe_mean=float(np.mean(per["nfe"])),
                       nfe_std=float(np.std(per["nfe"])), steps_mean=float(np.mean(per["steps"])))
            tqdm.write(f"  tol {tol:.0e}: acc {100 * row['acc']:.2f}%  NFE {row['nfe_mean']:.1f} "
                       f"+- {row['nfe_std']:.1f}  compiles of the eval step: "
                       f"{row['eval_step_compiles']}")
        else:
            tqdm.write(f"  tol {tol:.0e}: failed: {row['error']}")
        rows.append(row)
    # Time one batch per tolerance, round-robin (every tolerance sees the same load).
    calls = {tol: (lambda mm=m: evaluate(mm, task, timing_batch, batch_size=bs))
             for tol, m in models.items()}
    with common.CompileCounter() as cc:
        timings, _ = common.time_interleaved(calls, args.repeats)
    timing_compiles = cc.count_of("_eval_step")
    for row in rows:
        if row["tol"] in timings:
            t = timings[row["tol"]]
            row.update(time=dict(t), images_per_s=n_timing / t["median"])
            print(f"  tol {row['tol']:.0e}: {1e3 * t['median']:.1f} ms per batch of {n_timing} "
                  f"(min {1e3 * t['min']:.1f}, max {1e3 * t['max']:.1f})", flush=True)
    later = sum(r["eval_step_compiles"] for r in rows[1:]) + timing_compiles
    results = {"config": {k: v for k, v in vars(args).items() if k != "run_config"}
               | {"batch_size": bs, "timing_batch_images": n_timing},
               "run": {"path": args.run, "model": ccfg.get("model"), "dataset": ccfg["dataset"],
                       "train_tol": ccfg.get("tol"), "test_images": len(test)},
               "machine": info, "rows": rows,
               "eval_step_compiles_after_first_tol": later,
               "no_recompilation": later == 0}
    stem = (f"tolerance-{os.path.basename(os.path.normpath(args.run))}-{args.batch_mode}-"
            f"{common.machine_tag(info)}")
    common.report(results, args.out, stem, to_markdown)
    if args.figure and any("acc" in r for r in rows):
        plot(results, args.figure)
        print(f"wrote {args.figure}")
    return results


def to_markdown(results) -> str:
    from benchmarks.common import markdown_table

    m, c, r0 = results["machine"], results["config"], results["run"]
    head = (f"Inference against the solver tolerance (rtol = atol): {r0['model']} from "
            f"`{r0['path']}` (trained at tol {r0['train_tol']}), {r0['dataset']} test set "
            f"({r0['test_images']} images), {c['batch_mode']} solves, batch {c['batch_size']}; "
            f"time = median (min-max) of {c['repeats']} runs of one batch of "
            f"{c['timing_batch_images']} images after compilation, tolerances timed "
            "round-robin.\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['backend']}: {m['device']}); load "
            f"average before/after: {m.get('load_average')} / {results.get('load_average_after')}; "
            f"{m['date']}; jax {m['jax']}, diffrax {m.get('diffrax')}.\n")
    headers = ["tol", "test acc %", "NFE mean +- std", "steps", "ms / batch: median (min-max)",
               "images / s", "compiles of the eval step"]
    rows = []
    for r in results["rows"]:
        if "acc" not in r:
            rows.append([f"{r['tol']:.0e}", "failed", r.get("error", "")[:80], "-", "-", "-",
                         r["eval_step_compiles"]])
            continue
        t = r["time"]
        rows.append([f"{r['tol']:.0e}", f"{100 * r['acc']:.2f}",
                     f"{r['nfe_mean']:.1f} +- {r['nfe_std']:.1f}", f"{r['steps_mean']:.2f}",
                     f"{1e3 * t['median']:.1f} ({1e3 * t['min']:.1f}-{1e3 * t['max']:.1f})",
                     f"{r['images_per_s']:.0f}", r["eval_step_compiles"]])
    foot = (f"\nCompilations of the evaluation step after the first tolerance: "
            f"{results['eval_step_compiles_after_first_tol']} "
            f"({'no recompilation' if results['no_recompilation'] else 'RECOMPILED'}).")
    return head + "\n" + markdown_table(headers, rows) + "\n" + foot


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "acc" in r]
    tols = [r["tol"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(5.6, 3.8))
    ax1.semilogx(tols, [100 * r["acc"] for r in rows], "o-", color="C0", label="test accuracy")
    ax1.set_xlabel("inference tolerance (rtol = atol)")
    ax1.set_ylabel("test accuracy (%)", color="C0")
    ax1.invert_xaxis()
    ax2 = ax1.twinx()
    med = [1e3 * r["time"]["median"] for r in rows]
    err = [[m - 1e3 * r["time"]["min"] for m, r in zip(med, rows)],
           [1e3 * r["time"]["max"] - m for m, r in zip(med, rows)]]
    ax2.errorbar(tols, med, err, fmt="s--", color="C1", capsize=3, label="time per batch")
    for t, y, r in zip(tols, med, rows):
        ax2.annotate(f"NFE {r['nfe_mean']:.0f}", (t, y), textcoords="offset points",
                     xytext=(0, 6), fontsize=7, ha="center", color="C1")
    ax2.margins(y=0.15)
    ax2.set_ylabel(f"ms per batch of {results['config']['timing_batch_images']} (median)",
                   color="C1")
    r0 = results["run"]
    ax1.set_title(f"{r0['model']} on {r0['dataset']} (trained at tol {r0['train_tol']})",
                  fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    t = time.perf_counter()
    results = run(args)
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
