"""Training: state, optimizer, the jitted step, checkpoints and the loop."""
