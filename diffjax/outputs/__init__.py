"""What a run writes for people to look at: image grids and PNGs, TensorBoard and W&B scalars.

Files: images.py (sample grids as PNG files and TensorBoard images), metric_writers.py (one clu
MetricWriter per run: TensorBoard always, Weights & Biases when asked).
Imports: storage (every file through the path layer) and runtime.
"""
