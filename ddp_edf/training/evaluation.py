"""Exact figures over ranks: each rank sums over its examples, the sums are reduced, never averages.

    loss = (sum over every example of ell[b]) / N,   error = (sum of err[b]) / N

Each rank evaluates a contiguous shard of the split, and (loss sum, error sum, count) are summed
over ranks.  In the deterministic mode the sums are exact (Fractions of correctly rounded float
sums) and the split is cut into fixed pieces of ``batch`` examples, each rank taking a contiguous run
of whole pieces: a piece's per-example values are then the same bits on any number of ranks (a
GEMM's rounding depends on how many rows it multiplies), and so are the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..data import shard_bounds


@dataclass
class Totals:
    """Sums over examples, reduced across ranks before they are reported; ``exact``: as Fractions
    (whatever the order of the examples and ranks), else float64 (faster)."""

    exact: bool = False
    loss: float | Fraction = 0.0
    errors: float | Fraction = 0.0
    count: int = 0

    def add(self, losses: np.ndarray, errors: np.ndarray | None, examples: int) -> float:
        """Add a (micro-)batch's per-example losses and errors; returns its loss sum."""
        if np.shape(losses) != (examples,) or (errors is not None and np.shape(errors) != (examples,)):
            raise ValueError(f"the loss (and errors) must hold one value per example, shape ({examples},); got "
                             f"{np.shape(losses)}{'' if errors is None else f' and {np.shape(errors)}'}")
        loss_sum = self._sum(losses)
        self.loss += loss_sum
        self.errors += 0.0 if errors is None else self._sum(errors)
        self.count += len(losses)
        return float(loss_sum)

    def _sum(self, values):
        total = float(np.sum(values, dtype=np.float64))
        if self.exact and math.isfinite(total):   # correctly rounded, then exact: no order matters
            return Fraction(math.fsum(np.asarray(values, np.float64).tolist()))
        return total                              # a non-finite float turns a Fraction sum into a float

    def reduced(self, comm) -> "Totals":
        """The sums over every rank."""
        parts = comm.allgather_obj((self.loss, self.errors, self.count))
        return Totals(self.exact, *(sum(column) for column in zip(*parts)))

    def figures(self, with_error: bool = True) -> dict:
        """{"loss", "error"} means over the examples (NaN when there were none)."""
        n = self.count or math.nan
        return {"loss": float(self.loss / n), **({"error": float(self.errors / n)} if with_error else {})}


def feed(inputs, arrays):
    """Set each Input's value to its array of the batch (a split must give one array per Input)."""
    arrays = tuple(arrays)
    if len(arrays) != len(inputs):
        raise ValueError(f"the split's batch() gave {len(arrays)} arrays for {len(inputs)} inputs")
    for node, value in zip(inputs, arrays):
        node.value = value


def evaluate(graph, loss, errors, inputs, split, comm, batch: int = 1000, on_batch=lambda: None,
             exact: bool = False) -> dict:
    """Loss (and error rate, if ``errors`` is a node) over the whole split, sharded over ranks;
    ``on_batch()`` after every forward pass (the watchdog's kick).  ``exact``: the deterministic mode's
    fixed pieces and exact sums."""
    totals = Totals(exact)
    if exact:   # DDP: this rank's whole pieces of ``batch`` examples
        first, last = shard_bounds(-(-len(split) // batch), comm.rank, comm.world_size)
        start, stop = first * batch, min(last * batch, len(split))
    else:       # DDP: this rank's contiguous part
        start, stop = shard_bounds(len(split), comm.rank, comm.world_size)
    for lo in range(start, stop, batch):
        hi = min(lo + batch, stop)
        feed(inputs, split.batch(slice(lo, hi)))
        graph.forward()
        totals.add(loss.value, None if errors is None else errors.value, hi - lo)
        on_batch()
    totals = totals.reduced(comm)    # DDP: sums and counts, never averages of averages
    return {**totals.figures(errors is not None), "examples": totals.count}
