"""Fault injection: kill -9 a real training run at random moments, resume, compare.

A tiny `python -m experiments.classify` run (smoke-digits, 4 channels, 2 Euler steps,
3 batches per epoch) is trained once without interruption (the reference), then in
chains: start, ``SIGKILL``, ``--resume``, ``SIGKILL``, ... until the run finishes.
Each kill is one trial, at one of two kinds of moment:

- ``random``: a uniformly random time between the appearance of ``config.json`` and
  the end of an uninterrupted run (so start-up, compilation, training, evaluation and
  checkpoint writes are all hit in proportion to their duration);
- ``write``: in the middle of writing one checkpoint file (``ckpt-N.eqx``,
  ``ckpt-N.json`` or ``latest.json``), either with half its bytes in the temporary
  file or with the temporary file complete but not yet moved into place.  The child
  process pauses there (``--pause``), announces it on stdout, and is killed.

After every kill the next ``--resume`` must continue from the newest checkpoint that
was complete before the kill (epoch N or N + 1, where N is the last epoch the victim
logged: the log line follows the checkpoint) without falling back to an older one,
and every checkpoint file that existed before the kill must still read.  At the end
of each chain the run's ``metrics.csv`` (time columns excluded) and test accuracy
must equal the reference's.

    python -m benchmarks.kill_resume --trials 20 --out benchmarks/results/kill-resume-cpu-2core.json

The child mode (``--child``) is the classify CLI with the pausing checkpoint writer.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFY = ["--config", "smoke-digits", "--channels", "4", "--epochs", "5",
            "--batch-size", "16", "--max-train-batches", "3", "--train-limit", "120",
            "--test-limit", "40", "--eval-batch-size", "40", "--tol-sweep", "",
            "--no-per-sample", "--solver", "euler", "--euler-steps", "2", "--no-progress",
            "--no-data-parallel"]
FILES = ("eqx", "json", "latest")
STAGES = ("writing", "replacing")


# ----------------------------------------------------------------------- the child


def _pausing_writer(pause: float):
    """A drop-in for `jaxode.train.checkpoint._atomic_write` that stops twice per file
    (half written; complete but not moved into place) and says so on stdout."""

    def atomic_write(path, write):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        name = os.path.basename(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            print(f"@writing {name}", flush=True)
            time.sleep(pause)
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        print(f"@replacing {name}", flush=True)
        time.sleep(pause)
        os.replace(tmp, path)

    return atomic_write


def child(argv: list[str], pause: float) -> int:
    import jaxode.train.checkpoint as checkpoint
    from benchmarks.common import run_program

    if pause > 0:
        checkpoint._atomic_write = _pausing_writer(pause)
    return run_program("experiments.classify", argv)


# ---------------------------------------------------------------------- the parent


class Victim:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, runs: str, name: str, resume: bool, pause: float):
        args = [sys.executable, "-m", "benchmarks.kill_resume", "--child", "--pause",
                str(pause), "--", *CLASSIFY, "--runs-dir", runs, "--name", name]
        env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(args + (["--resume"] if resume else []), cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def last_epoch_logged(self) -> int:
        done = [int(ln.split()[1]) for ln in self.lines if ln.startswith("epoch ")]
        return max(done, default=0)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        time.sleep(0.05)  # let the reader thread drain what was printed


def _metrics(folder: str) -> list[dict]:
    with open(os.path.join(folder, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if not k.endswith("time_s")}
                for r in csv.DictReader(f)]


def _test_accuracy(folder: str) -> float:
    from jaxode.train.runs import read_summary

    return read_summary(folder)["test_accuracy"]


def _checkpoint_files(folder: str) -> dict[str, bytes]:
    from jaxode.train.runs import checkpoint_dir

    ck = checkpoint_dir(folder)
    if not os.path.isdir(ck):
        return {}
    out = {}
    for n in os.listdir(ck):
        if ".tmp-" not in n:
            with open(os.path.join(ck, n), "rb") as f:
                out[n] = f.read()
    return out


def reference(runs: str) -> tuple[dict, float]:
    """The uninterrupted run: its metrics, accuracy and duration after config.json."""
    v = Victim(runs, "reference", resume=False, pause=0.0)
    t_cfg = None
    while v.proc.poll() is None:
        if t_cfg is None and os.path.exists(os.path.join(runs, "reference", "config.json")):
            t_cfg = time.perf_counter()
        time.sleep(0.01)
    v.proc.wait()
    if v.proc.returncode != 0:
        raise RuntimeError("reference run failed:\n" + "\n".join(v.lines[-30:]))
    folder = os.path.join(runs, "reference")
    acc = _test_accuracy(folder)
    return {"metrics": _metrics(folder), "test_accuracy": acc}, time.perf_counter() - t_cfg


def _kill_at_random(v: Victim, folder: str, span: float, rng) -> str:
    while not os.path.exists(os.path.join(folder, "config.json")):
        if v.proc.poll() is not None:
            return "finished"
        time.sleep(0.005)
    deadline = time.perf_counter() + rng.uniform(0.0, span)
    while time.perf_counter() < deadline:
        if v.proc.poll() is not None:
            return "finished"
        time.sleep(0.005)
    v.kill()
    return f"random +{span:.1f}s window"


def _kill_in_write(v: Victim, target: str, timeout: float = 600) -> str:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        try:
            line = v.q.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            return "finished"
        if line.startswith("@") and target in line:
            v.kill()
            return line[1:]
    v.kill()
    return "timeout"


def run_chain(runs: str, name: str, ref: dict, span: float, kills: int, rng,
              pause: float = 0.5, modes: list[str] | None = None, log=print) -> list[dict]:
    """Start a run, kill it `kills` times (resuming after each), then let it finish.
    Returns one record per kill; raises AssertionError on any lost checkpoint or a
    final result that differs from `ref`."""
    folder = os.path.join(runs, name)
    trials = []
    resume = False
    for k in range(kills + 1):
        mode = (modes[k] if modes else rng.choice(["random", "write"])) if k < kills else "none"
        if mode == "write":  # a checkpoint the run has not written yet
            epoch = rng.randint(min(trials[-1]["logged"] + 1, 5) if trials else 1, 5)
            stem = rng.choice(FILES)
            file = "latest.json" if stem == "latest" else f"ckpt-{epoch:04d}.{stem}"
            target = f"{rng.choice(STAGES)} {file}"
        before = _checkpoint_files(folder)
        v = Victim(runs, name, resume=resume, pause=pause if mode == "write" else 0.0)
        if resume:  # the previous kill: did this resume start where it must?
            _check_resume(v, trials[-1])
        if mode == "none":
            v.proc.wait()
            time.sleep(0.05)
            if v.proc.returncode != 0:
                raise AssertionError(f"{name}: final resume failed:\n" + "\n".join(v.lines[-30:]))
            break
        where = (_kill_at_random(v, folder, span, rng) if mode == "random"
                 else _kill_in_write(v, target))
        if where == "finished":
            v.proc.wait()
            if v.proc.returncode != 0:
                raise AssertionError(f"{name}: run failed:\n" + "\n".join(v.lines[-30:]))
            trials.append({"chain": name, "mode": mode, "moment": "after the run finished",
                           "killed": False})
            break
        after = _checkpoint_files(folder)
        lost = [n for n, b in before.items() if n not in after and n != "latest.json"
                and not _rotated(n, after)]
        trial = {"chain": name, "mode": mode, "moment": where, "killed": True,
                 "logged": _logged_epoch(v), "checkpoints_before": sorted(before),
                 "lost": lost}
        trials.append(trial)
        log(f"  {name} kill {k + 1}: {mode:6s} at {where}; last epoch logged "
            f"{trial['logged']}")
        if lost:
            raise AssertionError(f"{name}: checkpoints lost by a kill: {lost}")
        resume = True
    got = _metrics(folder)
    acc = _test_accuracy(folder)
    if got != ref["metrics"] or acc != ref["test_accuracy"]:
        raise AssertionError(f"{name}: resumed run differs from the reference")
    for t in trials:
        t["final_matches_reference"] = True
    return trials


def _logged_epoch(v: Victim) -> int:
    """The newest epoch whose checkpoint the victim had finished: its "epoch N" log
    line (printed after the checkpoint) or a "resuming ... after epoch N" line."""
    best = v.last_epoch_logged()
    for ln in v.lines:
        if ln.startswith("resuming ") and " after epoch " in ln:
            best = max(best, int(ln.rsplit(" ", 1)[1]))
    return best


def _rotated(name: str, after: dict) -> bool:
    """A checkpoint removed by the normal rotation (keep the newest 2) after a newer
    one was written, not lost."""
    if not name.startswith("ckpt-"):
        return False
    epoch = int(name[5:9])
    newer = [n for n in after if n.startswith("ckpt-") and n.endswith(".json")
             and int(n[5:9]) > epoch]
    return len(newer) >= 2


def _check_resume(v: Victim, last: dict) -> None:
    """The resumed process must start after epoch N or N + 1 (N: last epoch logged by
    the killed one) and never fall back to an older checkpoint."""
    n = last["logged"]
    while True:
        try:
            line = v.q.get(timeout=600)
        except queue.Empty:
            raise AssertionError("the resumed run printed nothing for 10 minutes")
        if line is None:
            raise AssertionError("the resumed run ended before saying where it resumed:\n"
                                 + "\n".join(v.lines[-30:]))
        if "Falling back" in line:
            raise AssertionError(f"resume fell back to an older checkpoint: {line}")
        if line.startswith("resuming ") or "no checkpoint found" in line:
            got = int(line.rsplit(" ", 1)[1]) if line.startswith("resuming ") else 0
            if got not in (n, n + 1):
                raise AssertionError(f"resumed after epoch {got}, but epoch {n} was done")
            last["resumed_from"] = got
            return


def run_trials(trials: int, runs: str, seed: int = 0, pause: float = 0.5, per_chain: int = 4,
               modes: list[str] | None = None, log=print) -> dict:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    ref, span = reference(runs)
    log(f"reference: {len(ref['metrics'])} epochs, test accuracy {ref['test_accuracy']}, "
        f"{span:.1f} s after config.json")
    records = []
    c = 0
    while sum(r["killed"] for r in records) < trials:
        left = trials - sum(r["killed"] for r in records)
        records += run_chain(runs, f"chain{c}", ref, span, min(per_chain, left), rng,
                             pause=pause, modes=modes, log=log)
        c += 1
    return {"trials": len(records), "kills": sum(r["killed"] for r in records),
            "kills_survived": sum(r["killed"] and r["final_matches_reference"] for r in records),
            "kills_during_a_checkpoint_write": sum(r["killed"] and r["mode"] == "write"
                                                   for r in records),
            "chains": c, "wall_s": time.perf_counter() - t0, "records": records}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kill_resume",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="kills in all (default 20)")
    p.add_argument("--per-chain", type=int, default=4, help="kills before a run may finish")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pause", type=float, default=0.5,
                   help="seconds the child pauses inside a checkpoint write")
    p.add_argument("--runs", default=None, help="scratch folder (default: a temp folder)")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.child:
        return child([a for a in rest if a != "--"], args.pause)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run_trials(args.trials, args.runs or tmp, seed=args.seed, pause=args.pause,
                            per_chain=args.per_chain)
    print(json.dumps({k: v for k, v in result.items() if k != "records"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
