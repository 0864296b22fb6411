"""The training state: what a step updates and a checkpoint holds, created already sharded.

Files: train_state.py (`TrainState`: step, parameters, EMA, optimizer moments; its abstract
sharded spec and creation), optimizer.py (optax from `config.optim`: clipping, Adam(W), the
learning-rate schedules).
Imports: parallel (logical-axis shardings); nothing that builds a network or reads data.
"""
