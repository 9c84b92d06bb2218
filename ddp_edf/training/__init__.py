"""Training: the Trainer (any EDF model, NumPy data, one or many ranks), evaluation, checkpoints, reports."""
