"""The one training engine: optimisers, schedules, checkpoints, DDP and the training loop."""
