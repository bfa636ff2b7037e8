"""Training loop, optimizer and LR schedule, checkpoints, metrics logging."""
