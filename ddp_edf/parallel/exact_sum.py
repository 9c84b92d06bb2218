"""A sum over ranks that gives the same bits however its terms are spread over the ranks.

Floating-point addition is not associative: a float32 Allreduce of per-rank partial sums rounds
differently when the terms (the gradients of fixed chunks of the batch) fall on other ranks.  Here
every term becomes an integer on a fixed-point grid shared by all ranks, and integers add exactly in
any order:

    e_j   = exponent of max over every term t and element i of segment j of |g_t[i]|   (MAX Allreduce)
    q_t   = rint(g_t * 2^(s_j)),  s_j = 52 - ceil(log2 T) - e_j     |q_t| <= 2^52 / T   (T terms)
    sum   = (sum over ranks and terms of q_t) * 2^(-s_j)            (SUM Allreduce, float64)

Every partial sum is an integer below 2^52 in magnitude, so float64 holds it exactly whatever the
order.  Each term is rounded once on a grid 2^(-s_j) about 2^-49 of its segment's largest value (for
T = 8), far finer than float32's 2^-24 relative rounding; the result is rounded once to float32.
"""

from __future__ import annotations

import math

import numpy as np


class ExactSum:
    """Terms added with ``add`` on each rank; ``allreduce`` gives every rank their sum over all ranks.
    ``segments``: [(name, start, stop), ...], each with its own grid (one per parameter tensor)."""

    def __init__(self, comm, segments, size: int):
        self.comm, self.segments = comm, [(start, stop) for _, start, stop in segments]
        self.terms, self.count = np.empty((0, size), np.float32), 0

    def add(self, values: np.ndarray):
        """Keep a copy of one term (the grid is known only once every rank has all of its terms)."""
        if self.count == len(self.terms):   # grow to the most terms a rank has held (chunks per rank)
            self.terms = np.concatenate([self.terms, np.empty((self.count + 1, self.terms.shape[1]), np.float32)])
        self.terms[self.count] = values
        self.count += 1

    def allreduce(self, out: np.ndarray, flags: np.ndarray, total_terms: int):
        """out <- the exact sum (rounded once to out's dtype) of every rank's terms, ``total_terms`` of
        them in all; flags <- their maximum over ranks (1 if any rank set a flag).  Two collectives."""
        terms, self.count = self.terms[:self.count], 0
        local = [max(float(terms[:, a:b].max(initial=0)), -float(terms[:, a:b].min(initial=0))) for a, b in self.segments]
        largest = self.comm.allreduce(np.array(local + list(flags), np.float64), op="max")
        flags[:] = largest[len(local):]
        if not np.isfinite(largest).all():       # a NaN or inf gradient: the step is skipped anyway
            out.fill(np.nan)
            return
        headroom = math.ceil(math.log2(max(total_terms, 1)))
        # 2^s within float32's range, so the scaling below is exact; s is capped only for tiny maxima
        shifts = [min(52 - headroom - math.frexp(m)[1], 126) if m > 0 else 0 for m in largest[:len(local)]]
        total = np.zeros(out.shape, np.float64)
        scaled = np.empty(out.shape, np.float32)
        for term in terms:
            for (a, b), s in zip(self.segments, shifts):
                np.multiply(term[a:b], np.float32(2.0 ** s), out=scaled[a:b])   # exact: a power of two
            np.rint(scaled, out=scaled)          # |q| <= 2^52 / T: integers float32 and float64 hold
            total += scaled                      # integers below 2^53: exact in any order
        self.comm.allreduce(total)               # the same integers on any number of ranks
        for (a, b), s in zip(self.segments, shifts):
            out[a:b] = total[a:b] * 2.0 ** -s
