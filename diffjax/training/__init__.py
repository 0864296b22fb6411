"""Training: the jitted step, throughput accounting and the loop (state, optimizer and checkpoints
live below the modes, in diffjax.train_state, diffjax.optimizer and diffjax.checkpointing)."""
