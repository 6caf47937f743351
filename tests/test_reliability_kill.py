"""kill -9 during training and during checkpoint writes, then --resume (issue 18).

Three trials of `benchmarks.kill_resume` in one chain: a kill at a random moment, a
kill with a checkpoint's array file half written, and a kill with ``latest.json``
written but not yet moved into place.  Each resume must start from the newest
checkpoint finished before the kill (no fallback, no checkpoint lost), and the
finished run's metrics and test accuracy must equal an uninterrupted run's.  The
20-trial version is ``python -m benchmarks.kill_resume --trials 20`` (its outcome is in
docs/results/reliability.md).
"""

import random

from benchmarks.kill_resume import reference, run_chain


def test_three_kills_lose_nothing_and_reproduce_the_run(tmp_path):
    runs = str(tmp_path)
    ref, span = reference(runs)
    rng = random.Random(1)
    trials = run_chain(runs, "chain", ref, span, 3, rng, pause=0.3,
                       modes=["random", "write", "write"], log=lambda s: None)
    killed = [t for t in trials if t["killed"]]
    assert killed and all(t["final_matches_reference"] and not t["lost"] for t in killed)
