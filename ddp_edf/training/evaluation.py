"""Exact figures over ranks: each rank sums over its examples, the sums are reduced, never averages.

    loss = (sum over every example of ell[b]) / N,   error = (sum of err[b]) / N

Each rank evaluates a contiguous shard of the split; (loss sum, error sum, count) are summed in
float64 over ranks, so the figures do not depend on the number of ranks or the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import shard_bounds


@dataclass
class Totals:
    """Sums over examples (float64), reduced across ranks before they are reported."""

    loss: float = 0.0
    errors: float = 0.0
    count: float = 0.0

    def add(self, losses: np.ndarray, errors: np.ndarray | None, examples: int) -> float:
        """Add a (micro-)batch's per-example losses and errors; returns its loss sum."""
        if np.shape(losses) != (examples,) or (errors is not None and np.shape(errors) != (examples,)):
            raise ValueError(f"the loss (and errors) must hold one value per example, shape ({examples},); got "
                             f"{np.shape(losses)}{'' if errors is None else f' and {np.shape(errors)}'}")
        loss_sum = float(losses.sum(dtype=np.float64))
        self.loss += loss_sum
        self.errors += 0.0 if errors is None else float(errors.sum(dtype=np.float64))
        self.count += len(losses)
        return loss_sum

    def reduced(self, comm) -> "Totals":
        return Totals(*comm.allreduce(np.array([self.loss, self.errors, self.count])).tolist())

    def figures(self, with_error: bool = True) -> dict:
        """{"loss", "error"} means over the examples (NaN when there were none)."""
        n = self.count or float("nan")
        return {"loss": self.loss / n, **({"error": self.errors / n} if with_error else {})}


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
    start, stop = shard_bounds(len(split), comm.rank, comm.world_size)   # DDP: this rank's part
    for lo in range(start, stop, batch):
        hi = min(lo + batch, stop)
        feed(inputs, split.batch(slice(lo, hi)))
        graph.forward()
        totals.add(loss.value, None if errors is None else errors.value, hi - lo)
        on_batch()
    totals = totals.reduced(comm)    # DDP: sums and counts, never averages of averages
    return {**totals.figures(errors is not None), "examples": int(totals.count)}
