"""The process a diffjax entry point runs in: what every layer may use, and that uses no layer.

Files: xla.py (XLA:CPU flags, the persistent compilation cache), logs.py (what a log shows),
console.py (progress bars or log lines), preemption.py (SIGTERM from start-up to the last step),
local_processes.py (this host's processes: is a lock holder or a peer alive), cli.py (errors a
user caused as one line, `UserError`).
Imports: no other diffjax package; only the standard library, absl, jax and tqdm.
"""
