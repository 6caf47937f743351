"""Benchmark: regularised dynamics on the MNIST ODE-Net (issue 19, the image part).

Chen et al.'s ODE-Net trained on the full MNIST training set for 2 epochs with the same
seed, data order and initial weights (config ``reg-mnist-odenet``), once per setting
of `SETTINGS`: no regulariser, RNODE's kinetic energy int ||f||^2 dt and Jacobian norm
int ||df/dz||_F^2 dt (Finlay et al., ICML 2020, eqs. 3-4), the solver's local error
estimates (after Pal et al., ICML 2021; it is differentiated through the discrete
solve, so it needs ``--adjoint checkpoint``, which changes the cost of a step: its
wall time is compared with ``none-checkpoint``, the unregularised run with the same
adjoint), STEER's random end time (Ghosh et al., NeurIPS 2020) and TayNODE's
int ||d^2 z/dt^2||^2 dt (Kelly et al., NeurIPS 2020).

Two subcommands:

- ``run``: train the settings one after the other, each in ``OUT/<setting>/`` (an
  `experiments.classify` run folder; its ``steps.csv`` has the forward and backward
  NFE of every training step).  A finished setting (``summary.json``) is skipped; an
  unfinished one resumes from its newest checkpoint.  A finished run's checkpoints
  (the weights) are deleted: metrics, summary and plots stay.  Each setting trains
  under its own lock file (``OUT/.<setting>.lock``), so several ``run`` calls (one per
  core or device) can share a campaign: a setting another call is training is skipped
  by this one.  ``OUT/campaign.json`` records
  the base config and extra flags, which a later call must repeat.
- ``report``: read the finished folders and write the table (markdown) and the figure
  "NFE against training step", and name the best setting (`best_setting`); it
  refuses, naming the missing or unfinished settings and the command that finishes
  them, unless every requested setting has finished.

::

    python -m benchmarks.reg_mnist run --out results/reg-mnist --data-root DATA
    python -m benchmarks.reg_mnist report --out results/reg-mnist
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np

# name -> (flags of experiments.classify, the setting its ratios are taken against).
# Trained in this order: the cheap settings first, RNODE's Jacobian term (a
# vector-Jacobian product inside the field, differentiated again by the adjoint) last.
# Weights: chosen by the pilot of docs/results/regularizers.md, where the terms at
# initialisation are kinetic 2,304, jacobian 13,725, local_error 1.2e-4 per batch of
# 128 against a cross-entropy of 2.34.
SETTINGS = {
    "none": ((), "none"),
    "kinetic": (("--reg", "kinetic=1e-4"), "none"),
    "kinetic-1e-3": (("--reg", "kinetic=1e-3"), "none"),
    "steer": (("--steer", "0.5"), "none"),
    "kinetic-steer": (("--reg", "kinetic=1e-4", "--steer", "0.5"), "none"),
    "none-checkpoint": (("--adjoint", "checkpoint"), "none-checkpoint"),
    "local-error": (("--reg", "local_error=1000", "--adjoint", "checkpoint"), "none-checkpoint"),
    "rnode": (("--reg", "kinetic=1e-4,jacobian=1e-5"), "none"),
    # TayNODE, K = 2 (the default --taylor-order): int ||d^2 z/dt^2||^2 dt was 9,493 per
    # example at initialisation against a cross-entropy of 2.37 (batch of 32,
    # benchmarks.jacobian_reg_cost), so 2.5e-5 makes it ~0.1 x the loss.
    "taylor": (("--reg", "taylor=2.5e-5"), "none"),
    # between kinetic (1e-4: +0.07 points, NFE held at 21 but not lowered in 2 epochs)
    # and kinetic-1e-3 (1.39x fewer NFE, +0.74 points), 2026-12-06
    "kinetic-3e-4": (("--reg", "kinetic=3e-4"), "none"),
}
DEFAULT_CONFIG = "reg-mnist-odenet"
# the goal of issue 19, for the best setting against its baseline
GOAL_NFE_RATIO, GOAL_WALL_RATIO, GOAL_ERROR_POINTS = 2.0, 1.5, 0.1
# config fields that may differ between the settings (all else must be equal)
SETTING_FIELDS = ("name", "regularizers", "steer", "adjoint", "description", "taylor_order")
# adjoints whose reverse pass is Diffrax's backprop through the stored steps: the
# trainer counts no backward NFE for them (`jaxode.ode.backward_nfe`)
UNCOUNTED_ADJOINTS = ("checkpoint", "direct")


# ------------------------------------------------------------------------------ run


def classify_argv(setting: str, out: str, config: str, extra: list[str], resume: bool):
    """The `experiments.classify` command line of `setting`."""
    return ["--config", config, "--runs-dir", out, "--name", setting, "--no-progress",
            *SETTINGS[setting][0], *extra, *(["--resume"] if resume else [])]


def status(folder: str) -> str:
    """``finished``, ``unfinished`` (a run folder without summary.json) or ``missing``."""
    if os.path.exists(os.path.join(folder, "summary.json")):
        return "finished"
    if os.path.exists(os.path.join(folder, "config.json")):
        return "unfinished"
    return "missing"


@contextlib.contextmanager
def held_lock(path: str):
    """Hold the flock of `path` while inside; yields False (holding nothing) when
    another process holds it."""
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextlib.contextmanager
def campaign_lock(out: str):
    """Hold ``OUT/.campaign.lock`` while `check_campaign` reads or writes
    ``campaign.json``; a second caller at that moment is refused."""
    os.makedirs(out, exist_ok=True)
    with held_lock(os.path.join(out, ".campaign.lock")) as held:
        if not held:
            raise SystemExit(f"another `benchmarks.reg_mnist run` is starting in {out}; "
                             "try again in a minute.")
        yield


def check_campaign(out: str, config: str, extra: list[str]) -> None:
    """Record the base config and extra flags in ``OUT/campaign.json``, or refuse when
    an earlier call used others (the settings would not be comparable)."""
    path = os.path.join(out, "campaign.json")
    now = {"config": config, "extra": list(extra)}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != now:
            raise SystemExit(
                f"{out} holds runs made with --config {saved['config']} --extra "
                f"{shlex.quote(shlex.join(saved['extra']))}; repeat those (or use another "
                "--out) so that every setting shares one recipe. Nothing was changed.")
        return
    with open(path, "w") as f:
        json.dump(now, f, indent=2)


def classify_subprocess(argv: list[str]) -> int:
    """Run ``python -m experiments.classify ARGV`` in a fresh process; its exit status."""
    return subprocess.run([sys.executable, "-m", "experiments.classify", *argv]).returncode


def run(out: str, settings: list[str], config: str, extra: list[str],
        data_root: str | None = None, log=print, launch=None) -> None:
    """Train `settings` one after the other (see the module docstring); `data_root`
    is passed on to every run (it is not part of the recipe).  `launch(argv)` runs
    one `experiments.classify` command line and returns its exit status (default:
    `classify_subprocess`)."""
    launch = launch or classify_subprocess
    data_flags = ["--data-root", data_root] if data_root else []
    with campaign_lock(out):
        check_campaign(out, config, extra)
    busy = []
    for name in settings:
        # each setting is trained under its own lock, so that several `run`s (one per
        # core or device) can share a campaign: a setting another one holds is skipped
        with held_lock(os.path.join(out, f".{name}.lock")) as held:
            if not held:
                log(f"=== {name}: another `run` is training it; skipped")
                busy.append(name)
                continue
            train_setting(out, name, config, extra, data_flags, launch, log)
    if busy:
        log(f"=== not finished by this call (trained by another): {', '.join(busy)}")


def train_setting(out, name, config, extra, data_flags, launch, log) -> None:
    """Train (or resume) one setting unless it has finished, then drop its weights."""
    folder = os.path.join(out, name)
    state = status(folder)
    if state == "missing" and os.path.isdir(folder):
        from jaxode.train.rundir import release_run_dir

        release_run_dir(folder)  # a claim left by a run killed before it wrote anything
    if state != "finished":
        argv = classify_argv(name, out, config, extra, resume=state == "unfinished")
        log(f"=== {name}: python -m experiments.classify {shlex.join(argv)}")
        sys.stdout.flush()
        code = launch([*argv, *data_flags])
        if code != 0:
            raise SystemExit(
                f"{name} stopped (exit status {code}); its folder {folder} "
                "is kept. Run the same command again to resume it.")
    ckpt = os.path.join(folder, "checkpoints")
    if os.path.isdir(ckpt):  # finished: the weights are not kept
        shutil.rmtree(ckpt)
    log(f"=== {name}: finished ({folder})")


# --------------------------------------------------------------------------- report


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def setting_numbers(folder: str) -> dict:
    """The numbers of one finished setting: per-step NFE (forward, backward) means
    over training and over its last 10% of steps, training wall time, seconds per
    epoch and per step, test error and the test NFE per image."""
    from jaxode.train.steplog import read_steps

    rows = read_steps(folder)
    summary = _load_json(os.path.join(folder, "summary.json"))
    fwd = np.array([r["nfe"] for r in rows])
    bwd = np.array([r.get("nfe_backward", np.nan) for r in rows])
    tail = max(1, int(round(0.1 * len(rows))))
    epochs = [h["train_time_s"] for h in summary["history"]]
    cfg = _load_json(os.path.join(folder, "config.json"))["classify"]
    out = {"flags": run_flags(cfg), "steps": len(rows), "nfe_fwd": float(fwd.mean()), "nfe_bwd": float(bwd.mean()),
           "nfe_fwd_last10": float(fwd[-tail:].mean()),
           "nfe_bwd_last10": float(bwd[-tail:].mean()),
           "train_wall_s": float(sum(epochs)), "s_per_epoch": float(np.mean(epochs)),
           "s_per_step_median": float(np.median([r["step_time_s"] for r in rows[1:]]
                                                or [rows[0]["step_time_s"]])),
           "test_error": float(summary["test_error"]),
           "test_nfe_per_image": summary.get("nfe_mean")}
    if cfg.get("adjoint") in UNCOUNTED_ADJOINTS:  # backprop through the steps: no adjoint solve
        out["nfe_bwd"] = out["nfe_bwd_last10"] = None
    out["nfe_total"] = out["nfe_fwd"] + (out["nfe_bwd"] or 0.0)
    # what one evaluation cost, as trained: it shows the machine's load (settings with the
    # same work per evaluation should agree)
    out["ms_per_nfe"] = 1000 * out["s_per_step_median"] / out["nfe_total"]
    return out


def run_flags(cfg: dict) -> str:
    """What a run's config.json says it regularised: ``kinetic=0.01 steer=0.5
    adjoint=checkpoint`` (the adjoint only when not the default backsolve)."""
    parts = [f"{name}={weight:g}" for name, weight in cfg.get("regularizers") or ()]
    if cfg.get("steer") is not None:
        parts.append(f"steer={cfg['steer']:g}")
    if cfg.get("adjoint", "backsolve") != "backsolve":
        parts.append(f"adjoint={cfg['adjoint']}")
    return " ".join(parts) or "—"


def check_comparable(out: str, settings: list[str]) -> list[str]:
    """The recipe fields (config.json) that differ between the settings' runs."""
    saved = {s: _load_json(os.path.join(out, s, "config.json"))["classify"] for s in settings}
    first = saved[settings[0]]
    return [f"{k}: {settings[0]}={first.get(k)!r}, {s}={cfg.get(k)!r}"
            for s, cfg in saved.items() for k in sorted(set(first) | set(cfg))
            if k not in SETTING_FIELDS and first.get(k) != cfg.get(k)]


def unfinished_message(out: str, settings: list[str]) -> str | None:
    """None when every setting has finished with a steps.csv; else what is missing and
    the command that finishes it."""
    todo = []
    for s in settings:
        folder = os.path.join(out, s)
        state = status(folder)
        if state == "finished" and not os.path.exists(os.path.join(folder, "steps.csv")):
            state = "finished without steps.csv (trained before per-step NFE were logged)"
        if state != "finished":
            todo.append((s, state))
    if not todo:
        return None
    campaign = os.path.join(out, "campaign.json")
    saved = _load_json(campaign) if os.path.exists(campaign) else {"config": DEFAULT_CONFIG,
                                                                  "extra": []}
    known = [s for s, _ in todo if s in SETTINGS]
    cmd = (f"python -m benchmarks.reg_mnist run --out {shlex.quote(out)} --settings "
           f"{','.join(known)}")
    if saved["config"] != DEFAULT_CONFIG:
        cmd += f" --config {saved['config']}"
    if saved["extra"]:
        cmd += f" --extra {shlex.quote(shlex.join(saved['extra']))}"
    lines = [f"  {s}: {state}" for s, state in todo]
    return ("cannot report: these settings have not finished:\n" + "\n".join(lines) +
            (f"\nFinish them with:\n  {cmd}" if known else "") +
            ("\n(a run finished without steps.csv must first be moved away by hand.)"
             if any(state.startswith("finished") for _, state in todo) else "") +
            "\nNothing was written or deleted.")


def compare(numbers: dict[str, dict]) -> dict[str, dict]:
    """Ratios of each setting against its baseline (`SETTINGS`): NFE (forward +
    backward per step, mean over training; forward only when either run used an
    adjoint whose backward NFE are not counted) and training wall time, baseline /
    setting (> 1: the setting is cheaper), and the test error difference in points;
    ``goal`` when all three meet issue 19's goal."""
    out = {}
    for s, n in numbers.items():
        base_name = SETTINGS.get(s, ((), "none"))[1]
        base_name = base_name if base_name in numbers else "none"
        base = numbers.get(base_name)
        if base is None:
            continue
        both = n["nfe_bwd"] is not None and base["nfe_bwd"] is not None
        key = "nfe_total" if both else "nfe_fwd"  # forward only where one has no backward count
        r = {"baseline": base_name, "nfe_ratio": base[key] / n[key],
             "nfe_ratio_of": "forward + backward" if both else "forward",
             "wall_ratio": base["train_wall_s"] / n["train_wall_s"],
             "error_points": 100 * (n["test_error"] - base["test_error"])}
        r["goal"] = (s != base_name and r["nfe_ratio"] >= GOAL_NFE_RATIO
                     and r["wall_ratio"] >= GOAL_WALL_RATIO
                     and keeps_accuracy(r))
        out[s] = r
    return out


def keeps_accuracy(ratio: dict) -> bool:
    """The accuracy part of issue 19's goal: at most ``GOAL_ERROR_POINTS`` more test
    error than the baseline (`compare`'s ``error_points``)."""
    return ratio["error_points"] <= GOAL_ERROR_POINTS


def best_setting(ratios: dict[str, dict]) -> str | None:
    """Issue 19's best setting: of the regularised settings whose test error is at most
    ``GOAL_ERROR_POINTS`` above their baseline's, the one with the largest NFE ratio
    (ties: the larger wall ratio).  None when no regulariser kept the accuracy: then
    the baseline stays the default."""
    kept = [(r["nfe_ratio"], r["wall_ratio"], s) for s, r in ratios.items()
            if s != r["baseline"] and keeps_accuracy(r)]
    return max(kept)[2] if kept else None


def best_line(ratios: dict[str, dict]) -> str:
    """One sentence naming `best_setting` and whether it meets the whole goal."""
    best = best_setting(ratios)
    if best is None:
        return (f"best setting: none of the regularised settings kept the test error within "
                f"{GOAL_ERROR_POINTS} points of its baseline, so no regulariser is the default.")
    r = ratios[best]
    return (f"best setting: {best} ({r['nfe_ratio']:.2f}x fewer NFE, wall {r['wall_ratio']:.2f}x, "
            f"error {r['error_points']:+.2f} points against {r['baseline']}); issue 19's goal "
            f"(>= {GOAL_NFE_RATIO}x NFE, >= {GOAL_WALL_RATIO}x wall) is "
            f"{'met' if r['goal'] else 'not met'}.")


def _num(v) -> str:
    return "n/c" if v is None else f"{v:.1f}"  # n/c: not counted (checkpoint adjoint)


def table(numbers: dict[str, dict], ratios: dict[str, dict]) -> str:
    """The markdown table of `report`."""
    head = ("| setting | trained with | NFE fwd / bwd per step: mean; last 10% | training s "
            "| s/epoch | median s/step | ms/NFE | test error (%) | test NFE per image "
            "| vs | NFE ratio | wall ratio | error Δ (points) | goal |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s, n in numbers.items():
        r = ratios.get(s, {})
        flags = n["flags"]
        test_nfe = n["test_nfe_per_image"]
        lines.append(
            f"| {s} | `{flags}` | {n['nfe_fwd']:.1f} / {_num(n['nfe_bwd'])}; "
            f"{n['nfe_fwd_last10']:.1f} / {_num(n['nfe_bwd_last10'])} | {n['train_wall_s']:.0f} "
            f"| {n['s_per_epoch']:.0f} | {n['s_per_step_median']:.2f} | {n['ms_per_nfe']:.0f}"
            f"{' (fwd)' if n['nfe_bwd'] is None else ''} "
            f"| {100 * n['test_error']:.2f} | {'—' if test_nfe is None else f'{test_nfe:.1f}'} "
            f"| {r.get('baseline', '—')} | {r['nfe_ratio']:.2f}"
            f"{'' if r['nfe_ratio_of'] != 'forward' else ' (fwd)'} | {r['wall_ratio']:.2f} "
            f"| {r['error_points']:+.2f} | {'yes' if r['goal'] else 'no'} |"
            if r else f"| {s} | `{flags}` | (no baseline run) |")
    return "\n".join(lines) + "\n\n" + best_line(ratios) + "\n"


def nfe_figure(out: str, settings: list[str], path: str, smooth: int) -> None:
    """NFE against training step, forward and backward panels, one line per setting
    (moving average over `smooth` steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxode.train.steplog import read_steps

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for i, s in enumerate(settings):
        rows = read_steps(os.path.join(out, s))
        style = ("-", "--", ":", "-.")[i % 4]  # equal curves stay visible
        step = np.array([r["step"] for r in rows])
        for ax, key in zip(axes, ("nfe", "nfe_backward")):
            y = np.array([r.get(key, np.nan) for r in rows])
            if key == "nfe_backward" and _load_json(os.path.join(out, s, "config.json"))[
                    "classify"].get("adjoint") in UNCOUNTED_ADJOINTS:
                continue  # not counted: no line rather than a line at zero
            w = max(1, min(smooth, len(y)))
            ys = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(step[w - 1:], ys, style, label=s, lw=1.3)
    for ax, what in zip(axes, ("forward", "backward (adjoint)")):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{what} NFE per step")
        ax.set_title(f"{what} NFE, moving average over {smooth} steps", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels, off the lines
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 5), 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: str, settings: list[str], table_path: str, figure_path: str,
           smooth: int = 20, log=print) -> dict:
    """Write the table and the figure of the finished `settings` (see `run`); raises
    SystemExit with `unfinished_message` when some have not finished."""
    message = unfinished_message(out, settings)
    if message:
        raise SystemExit(message)
    differ = check_comparable(out, settings)
    if differ:
        raise SystemExit("cannot report: the runs do not share one recipe:\n  " +
                         "\n  ".join(differ))
    numbers = {s: setting_numbers(os.path.join(out, s)) for s in settings}
    ratios = compare(numbers)
    best = best_setting(ratios)
    text = table(numbers, ratios)
    os.makedirs(os.path.dirname(table_path) or ".", exist_ok=True)
    with open(table_path, "w") as f:
        f.write(text)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"numbers": numbers, "ratios": ratios, "best": best}, f, indent=2)
    nfe_figure(out, settings, figure_path, smooth)
    log(text)
    log(f"table: {table_path}\nfigure: {figure_path}\nnumbers: {os.path.join(out, 'report.json')}")
    return {"numbers": numbers, "ratios": ratios, "best": best}


def main(argv=None) -> int:
    from jaxode.cli import ArgumentParser, split_list

    p = ArgumentParser(prog="python -m benchmarks.reg_mnist", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("run", help="train the settings (resumable)")
    pp = sub.add_parser("report", help="table and figure of the finished settings")
    for q in (pr, pp):
        q.add_argument("--out", default="results/reg-mnist", help="folder of the run folders")
        q.add_argument("--settings", default=",".join(SETTINGS),
                       help=f"comma-separated, from {', '.join(SETTINGS)} (report: also "
                            "other run folders of OUT, compared with 'none')")
    pr.add_argument("--config", default=DEFAULT_CONFIG,
                    help="experiments.classify config every setting starts from")
    pr.add_argument("--data-root", help="folder holding mnist/ (default: $JAXODE_DATA)")
    pr.add_argument("--extra", default="",
                    help="more experiments.classify flags for every setting, one string, "
                         "e.g. '--train-limit 6000 --epochs 1' (a pilot)")
    pp.add_argument("--table", default="docs/results/reg_mnist_table.md")
    pp.add_argument("--figure", default="docs/figures/reg_mnist_nfe.png")
    pp.add_argument("--smooth", type=int, default=20, help="moving average over N steps")
    args = p.parse_args(argv)
    settings = split_list(args.settings)
    # a report may also read other run folders of OUT (e.g. a pilot's), against "none"
    unknown = [s for s in settings if s not in SETTINGS and args.command == "run"]
    if unknown or not settings:
        p.error(f"argument --settings: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(SETTINGS)}.")
    if args.command == "run":
        run(args.out, settings, args.config, shlex.split(args.extra), args.data_root)
    else:
        if args.smooth < 1:
            p.error(f"argument --smooth: {args.smooth} must be >= 1.")
        report(args.out, settings, args.table, args.figure, args.smooth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
