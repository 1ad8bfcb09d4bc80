"""Training: optimizers, train state, pure step functions, checkpoints, metric writers."""
