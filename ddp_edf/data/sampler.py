"""The order in which training examples are visited, and how a global batch is split over ranks.

    permutation of epoch e = numpy.random.default_rng([seed, e]).permutation(n_train)
    global batch t of epoch e = permutation[t * B : (t + 1) * B]     (the last one may be shorter)
    rank r of W takes a contiguous part of it: shard_bounds(len(batch), r, W)
    (deterministic mode: a contiguous run of the batch's fixed chunks; rank_pieces)

Everything is a pure function of (seed, epoch, step, rank, world_size): every rank computes the
same permutation without communication, and a resumed run visits the same examples.
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


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous part of n items; the first n % W ranks get one extra."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_pieces(batch_size: int, rank: int, world_size: int, micro_batches: int = 1, chunk: int = 0) -> list:
    """[lo, hi) of the pieces of a global batch that rank computes: its contiguous shard cut into
    micro-batches; or, with ``chunk`` > 0, a contiguous run of the batch's fixed chunks
    [c * chunk, (c + 1) * chunk), whose rows (hence GEMMs) do not depend on the number of ranks."""
    if chunk:
        first, last = shard_bounds(-(-batch_size // chunk), rank, world_size)
        return [(c * chunk, min((c + 1) * chunk, batch_size)) for c in range(first, last)]
    start, stop = shard_bounds(batch_size, rank, world_size)
    pieces = [shard_bounds(stop - start, k, micro_batches) for k in range(micro_batches)]
    return [(start + lo, start + hi) for lo, hi in pieces if hi > lo]
