"""The mathematics of diffusion, independent of any network: pure, jittable functions and frozen
dataclasses.

Files: processes/ (every objective as a linear Gaussian process x_t = alpha x0 + sigma eps:
VP, sub-VP, VE, cosine, DDPM, flow, EDM, TrigFlow), parameterization.py (what a network's output
means: eps, score, x0, v, velocity, EDM, TrigFlow's F; the model function every loss and sampler
takes), losses.py (the denoising loss of every objective, per example), guidance.py
(classifier-free guidance as a network wrapper), masks.py (inpainting masks by name or file),
consistency.py (sCM's continuous-time consistency training and distillation), meanflow.py
(MeanFlow's average-velocity loss), classifier_guidance.py (noise-conditional classifiers: their
loss and the score term of classifier guidance).
Imports: storage (masks read from files) and runtime only; never models, data or the modes.
"""
