"""A sum over ranks that gives the same bits however its terms are spread over the ranks.

Floating-point addition is not associative: a float32 Allreduce of per-rank partial sums rounds
differently when the terms (the gradients of fixed chunks of the batch) fall on other ranks.  Here
every term becomes an integer on a fixed-point grid shared by all ranks, and integers add exactly in
any order.  The grid is set per block of BLOCK (256) consecutive elements k:

    e_k   = exponent of max over every term t and element i of block k of |g_t[i]|   (MAX Allreduce)
    q_t   = rint(g_t * 2^(s_k)),  s_k = 52 - ceil(log2 T) - e_k     |q_t| <= 2^52 / T   (T terms)
    sum   = (sum over ranks and terms of q_t) * 2^(-s_k)            (SUM Allreduce, float64)

Every partial sum is an integer below 2^52 in magnitude, so float64 holds it exactly whatever the
order.  Each term is rounded once, on a grid about 2^-49 (T = 8) of its block's largest value, then
the sum is rounded once to float32: an element within 2^-25 of its block's largest is summed more
accurately than a float32 sum would; a far smaller one can lose precision (norm-wise, measured on
real gradients, the exact sum is twice as accurate as a float32 sum: docs/performance.md).
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 256   # elements per grid: smaller blocks keep small values next to large ones finer, but cost more


class ExactSum:
    """Terms added with ``add`` on each rank; ``allreduce`` gives every rank their sum over all ranks."""

    def __init__(self, comm, size: int):
        self.comm, self.size = comm, size
        self.blocks = -(-size // BLOCK)
        self.terms, self.count = np.zeros((0, self.blocks * BLOCK), np.float32), 0
        self.high, self.low, self.scaled = (np.zeros(self.blocks * BLOCK, np.float32) for _ in range(3))
        self.total = np.zeros(self.blocks * BLOCK, np.float64)

    def add(self, values: np.ndarray):
        """Keep a copy of one term (the grid is known only once every rank has all of its terms)."""
        if self.count == len(self.terms):   # grow to the most terms a rank has held (chunks per rank)
            self.terms = np.concatenate([self.terms, np.zeros((self.count + 1, self.terms.shape[1]), np.float32)])
        self.terms[self.count, :self.size] = values
        np.maximum(self.high, self.terms[self.count], out=self.high)    # the largest magnitudes so far
        np.minimum(self.low, self.terms[self.count], out=self.low)
        self.count += 1

    def allreduce(self, out: np.ndarray, flags: np.ndarray, total_terms: int):
        """out <- the exact sum (rounded once to float32) of every rank's terms, ``total_terms`` of them
        in all; flags <- their maximum over ranks, and flags[0] = 1 if the sum is not finite."""
        terms, self.count = self.terms[:self.count], 0
        largest = np.zeros(self.blocks + len(flags), np.float32)
        np.maximum(self.high, -self.low).reshape(self.blocks, BLOCK).max(axis=1, out=largest[:self.blocks])
        largest[:self.blocks][np.isnan(largest[:self.blocks])] = np.inf   # MPI's MAX may drop a NaN
        largest[self.blocks:] = flags
        self.high.fill(0)
        self.low.fill(0)
        self.comm.allreduce(largest, op="max")                        # the same grid on every rank
        flags[:] = largest[self.blocks:]
        if not np.isfinite(largest[:self.blocks]).all():             # every rank sees it: no sum
            flags[0] = 1
            out.fill(np.nan)
            return
        headroom = math.ceil(math.log2(max(total_terms, 1)))
        _, exponents = np.frexp(largest[:self.blocks])                  # largest < 2^e
        shifts = np.where(largest[:self.blocks] > 0, 52 - headroom - exponents, 0)
        # 2^s as float32 factors (one, or two where 2^s exceeds float32): scaling stays exact
        factors = [np.repeat(np.ldexp(np.float32(1), np.minimum(shifts, 126)).astype(np.float32), BLOCK)]
        if shifts.max() > 126:     # a block whose largest value is below 2^-74
            factors.append(np.repeat(np.ldexp(np.float32(1), np.maximum(shifts - 126, 0)).astype(np.float32), BLOCK))
        total, scaled = self.total, self.scaled
        total.fill(0)
        for term in terms:
            np.multiply(term, factors[0], out=scaled)
            for factor in factors[1:]:
                scaled *= factor
            np.rint(scaled, out=scaled)          # |q| <= 2^52 / T: an integer float32 holds exactly
            total += scaled                      # integers below 2^53: exact in any order
        self.comm.allreduce(total)               # the same integers on any number of ranks
        out[:] = (total * np.repeat(np.ldexp(1.0, -shifts), BLOCK))[:self.size]
