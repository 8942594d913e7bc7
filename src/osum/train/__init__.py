"""Training: config, the loop, checkpoints."""
