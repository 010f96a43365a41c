"""Training and evaluation: train state, pmap'd steps, checkpoints, logs and the loop."""
