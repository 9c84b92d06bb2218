"""Exact figures over ranks: each rank sums over its examples, the sums are reduced, never averages.

    loss = (sum over every example of ell[b]) / N,   error = (sum of err[b]) / N

The sums are exact (a loss sum is a Fraction of float64s; counts are integers), so the figures do not
depend on how the examples were spread over ranks; each is rounded once, at the end.  A split is
evaluated in fixed pieces of ``batch`` examples, each rank taking a contiguous run of whole pieces:
a piece's per-example values are then the same bits on any number of ranks (a GEMM's rounding
depends on how many rows it multiplies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..data import shard_bounds


@dataclass
class Totals:
    """Exact sums over examples, reduced across ranks before they are reported."""

    loss: Fraction = Fraction(0)
    errors: Fraction = Fraction(0)
    count: int = 0
    non_finite: float = 0.0     # inf or NaN losses, kept apart: a Fraction holds only finite numbers

    def add(self, losses: np.ndarray, errors: np.ndarray | None, examples: int) -> float:
        """Add a (micro-)batch's per-example losses and errors; returns its loss sum."""
        if np.shape(losses) != (examples,) or (errors is not None and np.shape(errors) != (examples,)):
            raise ValueError(f"the loss (and errors) must hold one value per example, shape ({examples},); got "
                             f"{np.shape(losses)}{'' if errors is None else f' and {np.shape(errors)}'}")
        loss_sum = float(losses.sum(dtype=np.float64))
        if math.isfinite(loss_sum):
            loss_sum = math.fsum(losses.tolist())     # correctly rounded, whatever the order of the examples
            self.loss += Fraction(loss_sum)
        else:
            self.non_finite += loss_sum
        self.errors += 0 if errors is None else Fraction(math.fsum(np.asarray(errors, np.float64).tolist()))
        self.count += len(losses)
        return loss_sum

    def reduced(self, comm) -> "Totals":
        """The sums over every rank (exact: the same whatever the ranks held)."""
        parts = comm.allgather_obj((self.loss, self.errors, self.count, self.non_finite))
        return Totals(*(sum(column) for column in zip(*parts)))

    def figures(self, with_error: bool = True) -> dict:
        """{"loss", "error"} means over the examples (NaN when there were none)."""
        if not self.count:
            return {"loss": math.nan, **({"error": math.nan} if with_error else {})}
        loss = float(self.loss / self.count) + self.non_finite
        return {"loss": loss, **({"error": float(self.errors / self.count)} if with_error else {})}


def feed(inputs, arrays):
    """Set each Input's value to its array of the batch (a split must give one array per Input)."""
    arrays = tuple(arrays)
    if len(arrays) != len(inputs):
        raise ValueError(f"the split's batch() gave {len(arrays)} arrays for {len(inputs)} inputs")
    for node, value in zip(inputs, arrays):
        node.value = value


def evaluate(graph, loss, errors, inputs, split, comm, batch: int = 1000, on_batch=lambda: None) -> dict:
    """Loss (and error rate, if ``errors`` is a node) over the whole split, sharded over ranks;
    ``on_batch()`` after every forward pass (the watchdog's kick)."""
    totals = Totals()
    pieces = -(-len(split) // batch)
    first, last = shard_bounds(pieces, comm.rank, comm.world_size)   # DDP: this rank's whole pieces
    for lo in range(first * batch, min(last * batch, len(split)), batch):
        hi = min(lo + batch, len(split))
        feed(inputs, split.batch(slice(lo, hi)))
        graph.forward()
        totals.add(loss.value, None if errors is None else errors.value, hi - lo)
        on_batch()
    totals = totals.reduced(comm)    # DDP: sums and counts, never averages of averages
    return {**totals.figures(errors is not None), "examples": totals.count}
