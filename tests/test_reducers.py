"""The two reducers in one process: their shard plans, and the exact sum against float64 references in any order."""

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ddp_edf import ExactSum
from ddp_edf.parallel.comm import SerialComm
from ddp_edf.parallel.reducers import BLOCK, Allreduce, shard_bounds

SEGMENTS = [("a", 0, 1000), ("b", 1000, 2000), ("c", 2000, 3001)]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """What ExactSum requires (communicator(blas_threads=1) sets it in a script)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class Rank(SerialComm):
    """A communicator that only says which rank of how many it is (for shard plans)."""

    def __init__(self, rank, world_size):
        super().__init__()
        self.rank, self.world_size = rank, world_size


@pytest.mark.parametrize("batch,world", [(25, 3), (10, 4), (2, 3), (7, 1)])
def test_allreduce_shards_cover_the_batch_once_each_within_one_example(batch, world):
    shards = [Allreduce(Rank(r, world), micro_batches=3).pieces(batch) for r in range(world)]
    rows = [i for pieces in shards for lo, hi in pieces for i in range(lo, hi)]
    assert rows == list(range(batch))
    sizes = [sum(hi - lo for lo, hi in pieces) for pieces in shards]
    assert max(sizes) - min(sizes) <= 1 and all(len(p) <= 3 for p in shards)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_exact_sum_chunks_are_fixed_whatever_the_world_size(world):
    """The chunks of a batch of 25 in fives (chunk 4: the last of one) are the same on any number of ranks."""
    chunks = [ExactSum(Rank(r, world), chunk=4).pieces(25) for r in range(world)]
    assert [c for rank in chunks for c in rank] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24), (24, 25)]


def test_shard_bounds_give_the_first_ranks_one_more():
    assert [shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shard_bounds(2, 3, 4) == (2, 2)   # more ranks than examples: an empty shard


def terms_of_mixed_scales(count=11, seed=4, size=3001):
    rng = np.random.default_rng(seed)
    terms = rng.standard_normal((count, size)).astype(np.float32) * np.float32(1e-3)
    terms[:, 1000:2000] *= np.float32(1e6)
    terms[:, 2000:2500] = 0
    return terms


def exact_sum(terms, order=None, figures=None):
    """The ExactSum of ``terms`` (rows) as one rank would reduce them: (sum, loss sum, error sum, stop)."""
    reducer = ExactSum(SerialComm(), chunk=1)
    grads = reducer.gradient_buffer(terms.shape[1])
    reducer.pieces(len(terms))
    for t in order if order is not None else range(len(terms)):
        grads[:] = terms[t]
        reducer.add(grads, *(figures[t] if figures is not None else (0.0, 0.0)))
        assert not grads.any()                   # cleared: the next chunk's backward adds to zeros
    loss, errors, stop = reducer.reduce(stop=False)
    return grads.copy(), loss, errors, stop


def test_any_order_of_the_terms_gives_the_same_bits():
    terms = terms_of_mixed_scales()
    figures = np.random.default_rng(1).uniform(0, 40, (len(terms), 2))
    first = exact_sum(terms, figures=figures)
    for seed in range(5):
        again = exact_sum(terms, np.random.default_rng(seed).permutation(len(terms)), figures)
        assert np.array_equal(again[0], first[0]) and again[1:] == first[1:]
    assert first[1] == pytest.approx(math.fsum(np.float32(figures[:, 0]).tolist()), rel=1e-12)


def test_at_least_as_accurate_as_a_float32_sum():
    terms = terms_of_mixed_scales()
    reference = np.array([math.fsum(column) for column in terms.astype(np.float64).T])   # exact, rounded once
    float32_sum = terms.sum(axis=0, dtype=np.float32)
    result = exact_sum(terms)[0]
    for _, a, b in SEGMENTS:
        scale = np.linalg.norm(reference[a:b]) or 1.0
        error = np.linalg.norm(result[a:b] - reference[a:b]) / scale
        assert error <= 2.0 ** -24 and error <= np.linalg.norm(float32_sum[a:b] - reference[a:b]) / scale + 1e-30
    close = np.abs(result - reference) <= np.spacing(np.abs(reference).astype(np.float32)) + 1e-15
    assert close.all()


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_term_that_is_not_finite_makes_the_sum_and_the_loss_nan(bad):
    terms = terms_of_mixed_scales(count=3)
    terms[1, 7] = bad
    out, loss, _, _ = exact_sum(terms)
    assert np.isnan(out).all() and math.isnan(loss)


def test_small_and_tiny_values_are_summed_as_precisely_as_in_float32():
    """Each block of BLOCK elements has its own grid: values 1e-12 or 1e-38 next to a block of 1s keep
    float32's precision; within a block, every element close to the block's largest does."""
    rng = np.random.default_rng(1)
    terms = rng.uniform(0.5, 1, (8, BLOCK * 4 - 5)).astype(np.float32)
    terms[:, BLOCK:2 * BLOCK] *= np.float32(1e-12)
    terms[:, 2 * BLOCK:3 * BLOCK] *= np.float32(1e-38)     # below 2^-126: the grid needs two float32 factors
    terms[:, 3 * BLOCK:] *= rng.choice(np.float32([1, -1]), (8, BLOCK - 5))
    reference = np.array([math.fsum(column) for column in terms.astype(np.float64).T])
    out = exact_sum(terms)[0]
    error = np.abs(out - reference) / np.abs(reference)
    float32_error = np.abs(terms.sum(axis=0, dtype=np.float32) - reference) / np.abs(reference)
    assert (error <= 2.0 ** -24).all() and error.max() <= float32_error.max()


def test_allreduce_adds_its_pieces_figures_and_an_empty_shard_joins_with_zeros():
    reducer = Allreduce(SerialComm())
    grads = reducer.gradient_buffer(4)
    grads[:] = 7
    assert reducer.reduce(stop=True) == (0.0, 0.0, True) and not grads.any()   # no piece: zeros
    grads[:] = 2
    reducer.add(grads, 1.5, 1.0)
    reducer.add(grads, 2.0, 0.0)
    assert reducer.reduce(stop=False) == (3.5, 1.0, False) and grads.tolist() == [2, 2, 2, 2]


def test_the_exact_sum_refuses_more_than_one_blas_thread():
    with threadpool_limits(limits=2, user_api="blas"):
        with pytest.raises(RuntimeError, match="needs one BLAS thread per rank .*communicator\\(blas_threads=1\\)"):
            ExactSum(SerialComm())
