"""The order in which training examples are visited: the same on every rank, with no communication.

    permutation of epoch e = numpy.random.default_rng([seed, e]).permutation(n_train)
    global batch t of epoch e = permutation[t * B : (t + 1) * B]     (the last one may be shorter)

Everything is a pure function of (seed, epoch, step): every rank computes the same batches, and a
resumed run visits the same examples.  Which rows of a batch a rank computes is its reducer's shard
plan (parallel/reducers.py).
"""

from __future__ import annotations

import numpy as np


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a permutation of range(n) drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, global_batch: int, drop_last: bool) -> int:
    """Number of global batches in one epoch; a short last batch counts unless drop_last."""
    full, rest = divmod(n, global_batch)
    return full + (1 if rest and not drop_last else 0)


def batch_indices(permutation: np.ndarray, step_in_epoch: int, global_batch_size: int) -> np.ndarray:
    """Example indices of batch ``step_in_epoch``: a contiguous slice of the epoch's permutation."""
    start = step_in_epoch * global_batch_size
    return permutation[start:start + global_batch_size]


def batches(n: int, global_batch: int, seed: int, epoch: int, drop_last: bool = False):
    """The global batches of one epoch, in order: arrays of example indices, the same on every rank."""
    permutation = epoch_permutation(seed, epoch, n)
    for t in range(steps_per_epoch(n, global_batch, drop_last)):
        yield batch_indices(permutation, t, global_batch)
