"""kill -9 during training and during checkpoint writes, then --resume (issue 18).

Two trials of `benchmarks.kill_resume` in one chain, both killing inside a checkpoint
write (file and stage drawn at random: half written, or complete but not yet moved
into place); the kill at a random moment is left to the 20-trial benchmark (each trial
starts two more processes that compile the training step, the suite's largest cost).  Each resume must start from the newest
checkpoint finished before the kill (no fallback, no checkpoint lost), and the
finished run's metrics and test accuracy must equal an uninterrupted run's.  The
20-trial version is ``python -m benchmarks.kill_resume --trials 20`` (its outcome is in
docs/results/reliability.md).
"""

import random

from benchmarks.kill_resume import reference, run_chain


def test_kills_in_checkpoint_writes_lose_nothing_and_reproduce_the_run(tmp_path):
    runs = str(tmp_path)
    ref, span = reference(runs)
    rng = random.Random(1)
    trials = run_chain(runs, "chain", ref, span, 2, rng, pause=0.3,
                       modes=["write", "write"], log=lambda s: None)
    killed = [t for t in trials if t["killed"]]
    assert len(killed) == 2
    assert all(t["final_matches_reference"] and not t["lost"] for t in killed)
