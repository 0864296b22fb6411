"""Training: the jitted step, throughput accounting and the loop (state, optimizer and checkpoints
live below the modes, in diffjax.state.train_state, diffjax.state.optimizer and diffjax.storage.checkpoints).

Imports: experiment, sampling (sample grids), diffusion, latents, data, state, storage,
outputs, parallel, runtime; never evaluation or the modes.
"""
