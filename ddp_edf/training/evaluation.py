"""Exact figures over ranks: each rank sums over its examples, the sums are reduced, never averages.

    loss = (sum over every example of ell[b]) / N,   error = (sum of err[b]) / N

The split is cut into fixed pieces of ``batch`` examples, and each rank evaluates a contiguous run of
whole pieces.  Each piece's sums are correctly rounded (math.fsum) and added as Fractions, exact in
any order, so the figures do not depend on how the pieces fall on ranks: on any number of ranks
whose pieces give the same per-example values (the deterministic mode's one BLAS thread per rank),
they are the same floats.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..parallel.reducers import shard_bounds


def exact_sum(values) -> Fraction | float:
    """The exact sum of ``values`` (a float when it is not finite: a Fraction cannot hold it)."""
    total = math.fsum(np.asarray(values, np.float64).ravel().tolist())
    return Fraction(total) if math.isfinite(total) else total


def evaluate(run_piece, n: int, comm, batch: int = 1000, with_error: bool = True) -> dict:
    """Loss (and error rate) over the n examples of a split, sharded over ranks.  ``run_piece(lo, hi)``
    runs the graph on examples [lo, hi) and returns their per-example losses and errors (or None).
    Collective: every rank calls it."""
    first, last = shard_bounds(-(-n // batch), comm.rank, comm.world_size)
    loss, errors, count = Fraction(0), Fraction(0), 0
    for lo in range(first * batch, min(last * batch, n), batch):
        hi = min(lo + batch, n)
        losses, wrong = run_piece(lo, hi)
        loss += exact_sum(losses)
        errors += exact_sum(wrong) if wrong is not None else 0
        count += hi - lo
    parts = comm.allgather_obj((loss, errors, count))    # DDP: sums and counts, never averages of averages
    loss, errors, count = (sum(column) for column in zip(*parts))
    n_examples = count or math.nan
    figures = {"loss": float(loss / n_examples), "examples": count}
    if with_error:
        figures["error"] = float(errors / n_examples)
    return figures
