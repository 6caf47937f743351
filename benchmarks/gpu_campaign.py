"""The GPU campaign: everything a lent GPU can tell us, in one command and a fixed time.

A GPU machine is lent rarely and briefly (about 15 minutes, start-up included, at
most 10 minutes a command).  This command runs, in order of value, the parts of
`benchmarks._campaign_parts` -- correctness on the device, the benchmark suite against
torchdiffeq on CUDA, model FLOP utilisation, SegNode's memory against its residual
baseline, and a resumable DCN-ODE CIFAR-10 training chunk -- and stops itself before
the wall-clock budget (``--budget-min``, default 8): each part may spend a share of the
budget, asks before every unit of work whether time is left, and the units and parts
it cannot start are recorded as skipped with the reason.

Every part writes ``DIR/<part>.json`` as soon as it finishes (the suite also
``suite.json`` / ``suite.md`` after every model); ``DIR/campaign.json`` and
``DIR/campaign.md`` (the summary) are rewritten after every part.  With ``--archive
FOLDER`` the whole of DIR is also packed into ``FOLDER/campaign.tar.gz`` (newest
training checkpoint only) beside a copy of ``campaign.md`` after every part: the
device tool brings back at most 8 files, so point ``--archive`` at its ``$OUT``.

On the device machine (README, "GPU campaign")::

    python -m benchmarks.stage_data          # here, once: data into data_local/
    # device tool: carry=["data_local"], timeout_s=600
    python -m benchmarks.gpu_campaign --out /tmp/campaign --archive $OUT

    python -m benchmarks.gpu_campaign --out DIR --dry-run      # CPU, tiny sizes, < 2 min
    python -m benchmarks.gpu_campaign --out DIR --parts train \\
        --resume-train data_local/prev/campaign.tar.gz          # the next training chunk
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _campaign_parts as parts

_ROOT = Path(__file__).resolve().parent.parent
PARTS: dict[str, Callable[..., dict]] = {
    "correctness": parts.correctness, "suite": parts.suite, "mfu": parts.mfu,
    "memory": parts.memory, "train": parts.train,
}
# share of the budget each part may use before it starts no new unit; the training
# chunk may use whatever is left
SHARES = {"correctness": 0.15, "suite": 0.40, "mfu": 0.15, "memory": 0.25, "train": 1.0}
SUITE_MODELS = ("chen-block", "carrara-odeonly", "carrara-resode", "dcn-ode", "node-ew", "cnf",
                "segnode", "chen-odenet")
DRY_SUITE_MODELS = ("cnf",)
DRY_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


class Budget:
    """Wall-clock budget from construction: `left` and `elapsed` in seconds."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = float(seconds), clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


@dataclasses.dataclass
class Context:
    """What the parts see: sizes, data, budget, output folder, earlier parts' results."""

    out: Path
    data: str
    budget: Budget
    dry_run: bool
    size: str
    models: tuple[str, ...]
    repeats: int
    train_epochs: int | None
    say: Callable[[str], None] = print
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    part_start: dict[str, float] = dataclasses.field(default_factory=dict)
    min_unit_s: float = 15.0

    def stop_reason(self, part: str) -> str | None:
        """Why `part` must start no new unit now (None: go on)."""
        left = self.budget.left()
        if left < self.min_unit_s:
            return f"budget spent: {left:.0f} s of {self.budget.seconds:.0f} s left"
        used = self.budget.elapsed() - self.part_start.get(part, self.budget.elapsed())
        cap = SHARES[part] * self.budget.seconds
        if used >= cap:
            return f"the part's share spent: {used:.0f} s of {cap:.0f} s"
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_campaign",
        description="Measure on a lent GPU, within a wall-clock budget, in order of value: "
        "correctness on the device, the benchmark suite against torchdiffeq on CUDA, MFU of "
        "the DCN-ODE and Carrara ODE-only training steps, SegNode's memory against its "
        "residual baseline, and a resumable DCN-ODE CIFAR-10 training chunk.")
    p.add_argument("--out", required=True, help="folder for the results (created; must be "
                   "empty or missing, so that earlier results are never overwritten)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same code paths on the CPU with tiny sizes (under 2 minutes)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="wall-clock budget in minutes (default 8; 2 with --dry-run)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts in order of value (default all: {','.join(PARTS)})")
    p.add_argument("--data", default=None, help="folder holding cifar10-jpeg.zip and "
                   "camvid-segnet.zip (default data_local/ of the repository if it holds them, "
                   "else $JAXODE_DATA)")
    p.add_argument("--models", default=None, help="suite models, comma-separated (default: "
                   f"all; with --dry-run {','.join(DRY_SUITE_MODELS)})")
    p.add_argument("--size", choices=("tiny", "small", "paper"), default=None,
                   help="model sizes of the suite and the MFU part (default paper; tiny with "
                   "--dry-run)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; 1 dry)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="epochs of the training chunk (default: as many as the budget allows)")
    p.add_argument("--resume-train", default=None,
                   help="continue the DCN-ODE run of an earlier campaign: its campaign.tar.gz "
                   "or its dcn-train run folder")
    p.add_argument("--archive", default=None,
                   help="folder for campaign.tar.gz + campaign.md, rewritten after every part "
                   "(the device tool's $OUT)")
    args = p.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in args.parts if s not in PARTS]
    if bad or not args.parts:
        p.error(f"argument --parts: unknown part(s) {bad}; choose from {', '.join(PARTS)}.")
    args.budget_min = args.budget_min or (2.0 if args.dry_run else 8.0)
    if args.budget_min <= 0:
        p.error(f"argument --budget-min: must be > 0, got {args.budget_min:g}.")
    args.size = args.size or ("tiny" if args.dry_run else "paper")
    args.repeats = args.repeats or (1 if args.dry_run else 3)
    if args.repeats < 1 or (args.train_epochs is not None and args.train_epochs < 1):
        p.error("arguments --repeats and --train-epochs must be >= 1.")
    from benchmarks._suite_models import MODEL_NAMES

    default_models = DRY_SUITE_MODELS if args.dry_run else SUITE_MODELS
    args.models = tuple(m.strip() for m in args.models.split(",")) if args.models else default_models
    bad = [m for m in args.models if m not in MODEL_NAMES]
    if bad:
        p.error(f"argument --models: unknown model(s) {bad}; choose from {', '.join(MODEL_NAMES)}.")
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        p.error(f"argument --out: {args.out!r} already holds files (an earlier campaign's "
                "results would be overwritten); pass a new folder.")
    args.data = args.data or _default_data()
    for name in ("cifar10-jpeg.zip", "camvid-segnet.zip"):
        if not args.data or not os.path.isfile(os.path.join(args.data, name)):
            p.error(f"no {name} in {args.data!r}; run `python -m benchmarks.stage_data` (it "
                    "copies the data into data_local/), or pass --data / set JAXODE_DATA.")
    if args.resume_train and not os.path.exists(args.resume_train):
        p.error(f"argument --resume-train: {args.resume_train!r} does not exist; pass the "
                "campaign.tar.gz or the dcn-train folder of an earlier campaign.")
    return args


def _default_data() -> str | None:
    local = _ROOT / "data_local"
    if (local / "cifar10-jpeg.zip").is_file():
        return str(local)
    return os.environ.get("JAXODE_DATA")


# ------------------------------------------------------------------- the run folder


def restore_training(source: str, out: Path) -> None:
    """Put an earlier campaign's training run into ``out/dcn-train``: from its
    ``campaign.tar.gz`` (members under ``dcn-train/``) or from a run folder."""
    dest = out / "dcn-train"
    if os.path.isdir(source):
        shutil.copytree(source, dest)
        return
    with tarfile.open(source) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("dcn-train/") and
                   (m.isfile() or m.isdir())]
        if not members:
            raise ValueError(f"{source} holds no dcn-train/ run; pass the campaign.tar.gz of "
                             "a campaign whose train part ran.")
        tar.extractall(out, members=members, filter="data")


def _old_checkpoints(root: Path) -> set[str]:
    """Files of all but the newest checkpoint of every run folder under `root`."""
    from jaxode.train.checkpoint import latest_checkpoint, saved_epochs
    from jaxode.train.runs import CHECKPOINTS

    skip = set()
    for folder in root.rglob(CHECKPOINTS):
        newest = latest_checkpoint(str(folder))
        for epoch in saved_epochs(str(folder)):
            if epoch != newest:
                skip |= {str(f) for f in folder.glob(f"ckpt-{epoch:04d}.*")}
    return skip


def write_archive(out: Path, archive: Path) -> None:
    """``archive/campaign.tar.gz`` (all of `out`, newest checkpoint only) and
    ``archive/campaign.md``, each written to a temporary name and renamed."""
    archive.mkdir(parents=True, exist_ok=True)
    skip = _old_checkpoints(out)
    tmp = archive / "campaign.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for child in sorted(out.iterdir()):
            tar.add(child, arcname=child.name,
                    filter=lambda ti: None if str(out / ti.name) in skip else ti)
    os.replace(tmp, archive / "campaign.tar.gz")
    shutil.copyfile(out / "campaign.md", archive / "campaign.md.tmp")
    os.replace(archive / "campaign.md.tmp", archive / "campaign.md")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------ reporting


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def to_markdown(campaign: dict) -> str:
    """The campaign summary: device, command, each part's status and key figures."""
    from benchmarks.common import markdown_table

    dev = (campaign["results"].get("correctness") or {}).get("device", {})
    lines = [f"# GPU campaign {campaign['date']}", "",
             f"Command: `{campaign['command']}`  ",
             f"Device: {dev.get('device', '?')} ({dev.get('backend', '?')}), jax "
             f"{dev.get('jax', '?')}, jaxlib {dev.get('jaxlib', '?')}, "
             f"{dev.get('platform_version', '')}, torch {dev.get('torch', '-')} (CUDA "
             f"{dev.get('torch_cuda', '-')}), torchdiffeq {dev.get('torchdiffeq', '-')}  ",
             f"Budget {campaign['budget_s']:.0f} s, used {campaign['elapsed_s']:.0f} s"
             f"{' (dry run: CPU, tiny sizes)' if campaign['dry_run'] else ''}.", "",
             markdown_table(["part", "status", "seconds", "note"],
                            [[n, p["status"], f"{p.get('seconds', 0):.0f}", p.get("reason", "")]
                             for n, p in campaign["parts"].items()])]
    r = campaign["results"]
    if r.get("correctness"):
        lines += ["", "## Correctness", "", markdown_table(
            ["check", "value", "tolerance", "passed"],
            [[k, f"{c['value']:.2e}", f"{c['tolerance']:g}", c["passed"]]
             for k, c in r["correctness"]["checks"].items()])]
    if r.get("suite"):
        rows = [[s["model"], s["setting"], f"{s['jax_train_s']:.4f}",
                 f"{s.get('torch_train_s', float('nan')):.4f}", f"{s.get('ratio_train', float('nan')):.2f}",
                 f"{s.get('ratio_infer', float('nan')):.2f}", "/".join(map(str, s["nfe_jax"])),
                 "/".join(map(str, s.get("nfe_torch", ["-"])))] for s in r["suite"]["rows"]]
        lines += ["", f"## Suite vs torchdiffeq (torch on {r['suite']['torch_device']}; details "
                  "in suite.md)", "", markdown_table(
                      ["model", "setting", "train s jax", "train s torch", "train ratio",
                       "infer ratio", "NFE f/b jax", "NFE f/b torch"], rows)]
    if r.get("mfu"):
        m = r["mfu"]
        lines += ["", f"## MFU ({m['device']}; peaks {m['peak_tflops']} TFLOP/s)", "",
                  markdown_table(["model", "GFLOP/step", "step s", "TFLOP/s", "MFU fp32",
                                  "MFU tf32"],
                                 [[x["model"], f"{x['flops_per_step'] / 1e9:.2f}",
                                   f"{x['step_s']:.4f}", f"{x['achieved_tflops']:.3f}",
                                   _pct(x.get("mfu_vs_fp32")), _pct(x.get("mfu_vs_tf32"))]
                                  for x in m["rows"]])]
    if r.get("memory"):
        m = r["memory"]
        rows = [[k, f"{v['memory']['total'] / 2**20:.1f}" if v["memory"] else "-",
                 f"{v['memory']['temp'] / 2**20:.1f}" if v["memory"] else "-"]
                for k, v in m["rows"].items()]
        lines += ["", f"## SegNode memory, batch {m['batch']}, {m['image']} (XLA buffer "
                  "assignment)", "", markdown_table(["program", "MiB", "temporaries MiB"], rows), "",
                  f"Reduction SegNode vs baseline: train {_pct(m.get('train_reduction'))} "
                  f"(paper, Table 2: {_pct(m['paper_train_reduction'])}), test "
                  f"{_pct(m.get('test_reduction'))} (paper {_pct(m['paper_test_reduction'])})."]
    if r.get("train") and "epochs_after" in r["train"]:
        t = r["train"]
        s = t.get("summary", {})
        lines += ["", "## DCN-ODE training chunk", "",
                  f"Epochs {t['epochs_before']} -> {t['epochs_after']} in {t['seconds']:.0f} s; "
                  f"last eval acc {s.get('final_eval_acc')}; `{t['command']}`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def run(args) -> dict:
    # before anything imports torch (the suite's reason: spinning OpenMP threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.dry_run:  # the numbers do not matter: unoptimised XLA:CPU code compiles faster
        # (read when JAX creates its CPU client, i.e. only if nothing has run yet)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + DRY_XLA_FLAGS).strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(60.0 * args.budget_min)
    if args.resume_train:
        restore_training(args.resume_train, out)
    ctx = Context(out=out, data=args.data, budget=budget, dry_run=args.dry_run, size=args.size,
                  models=args.models, repeats=args.repeats, train_epochs=args.train_epochs,
                  say=lambda m: print(m, flush=True), min_unit_s=5.0 if args.dry_run else 15.0)
    campaign = {"command": "python -m benchmarks.gpu_campaign " + " ".join(sys.argv[1:] if
                                                                            args.argv is None else args.argv),
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "budget_s": budget.seconds, "dry_run": args.dry_run, "parts": {},
                "results": ctx.results, "elapsed_s": 0.0}
    for name in args.parts:
        why = ctx.stop_reason(name)
        if why:
            campaign["parts"][name] = {"status": "skipped", "reason": why}
        else:
            print(f"[{budget.elapsed():5.0f} s] part {name}", flush=True)
            ctx.part_start[name] = budget.elapsed()
            t, cpu = time.perf_counter(), time.process_time()
            try:
                res = PARTS[name](ctx)
                status = "skipped" if set(res) == {"skipped"} else "done"
                entry = {"status": status, "seconds": time.perf_counter() - t,
                         "cpu_s": time.process_time() - cpu}
                if res.get("skipped"):
                    entry["reason"] = "; ".join(f"{k}: {v}" for k, v in res["skipped"].items())
                ctx.results[name] = res
                _write_json(out / f"{name}.json", res)
            except Exception as e:  # noqa: BLE001 - a failed part must not stop the others
                traceback.print_exc()
                entry = {"status": "failed", "seconds": time.perf_counter() - t,
                         "reason": f"{type(e).__name__}: {e}"[:500],
                         "traceback": traceback.format_exc()[-4000:]}
            campaign["parts"][name] = entry
        campaign["elapsed_s"] = budget.elapsed()
        _write_json(out / "campaign.json", campaign)
        (out / "campaign.md").write_text(to_markdown(campaign))
        if args.archive:
            write_archive(out, Path(args.archive))
    print(to_markdown(campaign), flush=True)
    return campaign


def main(argv=None):
    args = parse_args(argv)
    args.argv = argv
    return run(args)


if __name__ == "__main__":
    main()
