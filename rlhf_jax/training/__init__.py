"""Training: optimizers, train state, pure step functions, the generic loop, checkpoints and
metric writers. Imports `models`, `losses` and `sharding`; never reads a config file or a dataset.
"""
