"""Training: optimisers and schedules, train/eval steps, checkpoints, run folders."""
