"""Training engine: one trainer, evaluation, checkpoints, schedules, distribution."""
