"""Everything diffjax reads or writes on disk (or gs://), through one path layer.

Files: filesystem.py (the path layer: local, gs:// and any etils.epath path), checkpoints.py
(Orbax checkpoints of the training state, damage detection and fallback), workdir.py (a run's
layout, pre-flight for writing, its config record), workdir_lock.py (one writer per workdir),
torch_files.py (PyTorch checkpoint files read with numpy, never torch), safetensors_files.py
(safetensors read and written with numpy), model_folders.py (published transformers and
diffusers model folders: config, JSON files and weights), torch_layout.py (PyTorch names and
layouts to Flax).
Imports: state (the training state a checkpoint holds), parallel, runtime.
"""
