"""Text-to-image pipelines as diffusers lays them out, built on diffjax's pieces.

- `schedulers.py`: a diffusers `scheduler/scheduler_config.json` (DDIM, PNDM, Euler, DPM-Solver++)
  as a diffjax sampler on the discrete DDPM process, step for step the same latents as diffusers.

Imports: this is a workflow-layer package: it may import experiment and everything below it
(sampling as a sibling workflow, diffusion, models, text, latents, storage, config, runtime), never
the modes; nothing below the workflows imports it.
"""
