"""Reducers: how the ranks' gradients become the gradient of the global batch.  Two, interchangeable:

    Allreduce(comm, micro_batches=1)   float32 sums by one MPI Allreduce: the default, the fastest
    ExactSum(comm, chunk=32)           exact sums of fixed chunks: the same bits on any number of ranks

A reducer owns the flat gradient buffer the graph packs into, the shard plan (which rows of a global
batch this rank computes, in which pieces) and the step's one reduction, with the slots that ride in
it: the pieces' loss and error sums and the stop flag.  The step uses one so:

    grads = reducer.gradient_buffer(n)                      once: the graph's parameter gradients live here
    for k, (lo, hi) in enumerate(reducer.pieces(B)):        my shard of the global batch of B examples
        ... forward; backward seeded with 1/B, adding to grads when k > 0 ...
        reducer.add(grads, loss_sum, error_sum)             this piece's gradient and figures
    loss_sum, error_sum, stop = reducer.reduce(stop)        grads <- their sum over ranks; stop: any rank's
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import check_integer
from .threads import blas_threads

BLOCK = 256   # elements per grid of the exact sum: smaller blocks keep small values finer, but cost more


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous part of n items; the first n % W ranks get one extra."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Allreduce:
    """Each rank's shard is one contiguous part of the batch (sizes differ by at most 1), cut into
    ``micro_batches`` pieces whose gradients add up in the buffer; then one Allreduce (sum) of the
    float32 buffer and its three slots.  Its sums round differently on another number of ranks."""

    def __init__(self, comm, micro_batches: int = 1):
        check_integer("Allreduce", "micro_batches", micro_batches, 1)
        self.comm, self.micro_batches = comm, micro_batches
        self.buffer, self.added = np.zeros(3, np.float32), 0

    def gradient_buffer(self, n: int) -> np.ndarray:
        self.buffer = np.zeros(n + 3, np.float32)      # [gradients | loss sum, error sum, stop]
        return self.buffer[:n]

    def pieces(self, batch_size: int) -> list:
        start, stop = shard_bounds(batch_size, self.comm.rank, self.comm.world_size)
        pieces = (shard_bounds(stop - start, k, self.micro_batches) for k in range(self.micro_batches))
        return [(start + lo, start + hi) for lo, hi in pieces if hi > lo]

    def add(self, grads: np.ndarray, loss_sum: float, error_sum: float):
        """The piece's backward added its gradient into the buffer already; its figures join it here."""
        self.buffer[-3] += loss_sum
        self.buffer[-2] += error_sum
        self.added += 1

    def reduce(self, stop: bool):
        if not self.added:
            self.buffer[:-3].fill(0)          # an empty shard (B < W) joins the sum with zeros
        self.buffer[-1] = stop
        self.comm.allreduce(self.buffer)      # the one collective of the step
        loss_sum, error_sum, stops = self.buffer[-3:].tolist()
        self.buffer[-3:], self.added = 0, 0
        return loss_sum, error_sum, stops > 0


class ExactSum:
    """A sum over ranks that gives the same bits however its terms are spread over the ranks.

    Every global batch is cut into fixed chunks of ``chunk`` examples (the last may be shorter), whatever
    W; each rank computes a contiguous run of whole chunks, so a chunk's gradient is the same bits on any
    rank (a GEMM's rounding depends on how many rows it multiplies, and on its thread count: one BLAS
    thread per rank is required).  Floating-point addition is not associative, so the chunk gradients
    (the terms) are summed as integers on a fixed-point grid shared by all ranks, per block k of BLOCK
    consecutive elements:

        e_k   = exponent of max over every term t and element i of block k of |g_t[i]|   (MAX Allreduce)
        q_t   = rint(g_t * 2^(s_k)),  s_k = 52 - ceil(log2 T) - e_k     |q_t| <= 2^52 / T   (T terms)
        sum   = (sum over ranks and terms of q_t) * 2^(-s_k)            (SUM Allreduce, float64)

    Every partial sum is an integer below 2^52, exact in float64 whatever the order.  Each term is
    rounded once, on a grid about 2^-49 (T = 8) of its block's largest value, and the sum once to float32
    (norm-wise twice as accurate as a float32 sum on real gradients: docs/performance.md).  The chunks'
    loss and error sums are terms too, in a block of their own.  Each rank keeps its chunks' gradients
    until the sum: B / (chunk W) copies of the parameters.
    """

    def __init__(self, comm, chunk: int = 32):
        check_integer("ExactSum", "chunk", chunk, 1)
        if blas_threads() > 1:
            raise RuntimeError(f"ExactSum needs one BLAS thread per rank (a GEMM's bits depend on its thread count), "
                               f"not {blas_threads()}: make the communicator with communicator(blas_threads=1)")
        self.comm, self.chunk, self.terms_in_batch = comm, chunk, 1
        self.gradient_buffer(0)

    def gradient_buffer(self, n: int) -> np.ndarray:
        self.size, self.blocks = n, -(-n // BLOCK) + 1    # the last block: the loss and error sums
        self.figures = (self.blocks - 1) * BLOCK
        width = self.blocks * BLOCK
        self.grads = np.zeros(n, np.float32)
        self.terms, self.count = np.zeros((0, width), np.float32), 0
        self.high, self.low, self.scaled = (np.zeros(width, np.float32) for _ in range(3))
        self.total = np.zeros(width, np.float64)
        return self.grads

    def pieces(self, batch_size: int) -> list:
        self.terms_in_batch = -(-batch_size // self.chunk)
        first, last = shard_bounds(self.terms_in_batch, self.comm.rank, self.comm.world_size)
        return [(c * self.chunk, min((c + 1) * self.chunk, batch_size)) for c in range(first, last)]

    def add(self, grads: np.ndarray, loss_sum: float, error_sum: float):
        """Keep a copy of this chunk's gradient and figures (one term), and clear grads: the next chunk's
        backward, adding to zeros, gives that chunk's own gradient."""
        if self.count == len(self.terms):   # grow to the most terms a rank has held (chunks per rank)
            self.terms = np.concatenate([self.terms, np.zeros((self.count + 1, self.terms.shape[1]), np.float32)])
        term = self.terms[self.count]
        term[:self.size] = grads
        term[self.figures:self.figures + 2] = loss_sum, error_sum
        grads.fill(0)
        np.maximum(self.high, term, out=self.high)    # the largest magnitudes so far
        np.minimum(self.low, term, out=self.low)
        self.count += 1

    def reduce(self, stop: bool):
        terms, self.count = self.terms[:self.count], 0
        largest = np.zeros(self.blocks + 1, np.float32)
        np.maximum(self.high, -self.low).reshape(self.blocks, BLOCK).max(axis=1, out=largest[:-1])
        largest[:-1][np.isnan(largest[:-1])] = np.inf   # MPI's MAX may drop a NaN
        largest[-1] = stop
        self.high.fill(0)
        self.low.fill(0)
        self.comm.allreduce(largest, op="max")          # the same grid on every rank, and any rank's stop
        if not np.isfinite(largest[:-1]).all():         # every rank sees it: no sum, no step
            self.grads.fill(np.nan)
            return math.nan, math.nan, bool(largest[-1] > 0)
        _, exponents = np.frexp(largest[:-1])           # largest < 2^e
        headroom = math.ceil(math.log2(max(self.terms_in_batch, 1)))
        shifts = np.where(largest[:-1] > 0, 52 - headroom - exponents, 0)
        # 2^s as float32 factors (one, or two where 2^s exceeds float32's range): scaling stays exact
        factors = [np.repeat(np.ldexp(np.float32(1), np.minimum(shifts, 126)).astype(np.float32), BLOCK)]
        if shifts.max() > 126:     # a block whose largest value is below 2^-74
            factors.append(np.repeat(np.ldexp(np.float32(1), np.maximum(shifts - 126, 0)).astype(np.float32), BLOCK))
        self.total.fill(0)
        for term in terms:
            np.multiply(term, factors[0], out=self.scaled)
            for factor in factors[1:]:
                self.scaled *= factor
            np.rint(self.scaled, out=self.scaled)      # |q| <= 2^52 / T: an integer, held exactly
            self.total += self.scaled                  # integers below 2^53: exact in any order
        self.comm.allreduce(self.total)                 # the same integers on any number of ranks
        exact = self.total * np.repeat(np.ldexp(1.0, -shifts), BLOCK)
        self.grads[:] = exact[:self.size]
        return float(exact[self.figures]), float(exact[self.figures + 1]), bool(largest[-1] > 0)
