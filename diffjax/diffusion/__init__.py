"""The mathematics of diffusion, independent of any network: pure, jittable functions and frozen
dataclasses.

Files: processes/ (every objective as a linear Gaussian process x_t = alpha x0 + sigma eps:
VP, sub-VP, VE, cosine, DDPM, flow, EDM), parameterization.py (what a network's output means:
eps, score, x0, v, velocity, EDM; the model function every loss and sampler takes), losses.py
(the denoising loss of every objective, per example), guidance.py (classifier-free guidance as a
network wrapper), masks.py (inpainting masks by name or file).
Imports: storage (masks read from files) and runtime only; never models, data or the modes.
"""
