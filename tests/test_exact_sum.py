"""The exact sum of the deterministic mode, in one process: against float64 references, in any order."""

import math

import numpy as np
import pytest

from ddp_edf.parallel.comm import SerialComm
from ddp_edf.parallel.exact_sum import BLOCK, ExactSum

SEGMENTS = [("a", 0, 1000), ("b", 1000, 2000), ("c", 2000, 3001)]


def terms_of_mixed_scales(count=11, seed=4):
    rng = np.random.default_rng(seed)
    terms = rng.standard_normal((count, 3001)).astype(np.float32) * np.float32(1e-3)
    terms[:, 1000:2000] *= np.float32(1e6)
    terms[:, 2000:2500] = 0
    return terms


def exact_sum(terms, order=None):
    exact, out, flags = ExactSum(SerialComm(), terms.shape[1]), np.empty(terms.shape[1], np.float32), np.zeros(2)
    for t in order if order is not None else range(len(terms)):
        exact.add(terms[t])
    exact.allreduce(out, flags, total_terms=len(terms))
    return out, flags


def test_any_order_of_the_terms_gives_the_same_bits():
    terms = terms_of_mixed_scales()
    first, _ = exact_sum(terms)
    for seed in range(5):
        assert np.array_equal(exact_sum(terms, np.random.default_rng(seed).permutation(len(terms)))[0], first)


def test_at_least_as_accurate_as_a_float32_sum():
    terms = terms_of_mixed_scales()
    reference = np.array([math.fsum(column) for column in terms.astype(np.float64).T])   # exact, rounded once
    float32_sum = terms.sum(axis=0, dtype=np.float32)
    result, _ = exact_sum(terms)
    for _, a, b in SEGMENTS:
        scale = np.linalg.norm(reference[a:b]) or 1.0
        error = np.linalg.norm(result[a:b] - reference[a:b]) / scale
        assert error <= 2.0 ** -24 and error <= np.linalg.norm(float32_sum[a:b] - reference[a:b]) / scale + 1e-30
    # element by element: within one float32 spacing of the exact sum
    close = np.abs(result - reference) <= np.spacing(np.abs(reference).astype(np.float32)) + 1e-15
    assert close.all()


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_term_that_is_not_finite_makes_the_sum_nan_and_sets_the_flag(bad):
    terms = terms_of_mixed_scales(count=3)
    terms[1, 7] = bad
    out, flags = exact_sum(terms)
    assert np.isnan(out).all() and flags[0] == 1


def test_small_and_tiny_values_are_summed_as_precisely_as_in_float32():
    """Each block of BLOCK elements has its own grid: values 1e-12 or 1e-38 next to a block of 1s keep
    float32's precision; within a block, every element close to the block's largest does."""
    rng = np.random.default_rng(1)
    terms = rng.uniform(0.5, 1, (8, BLOCK * 4 - 5)).astype(np.float32)
    terms[:, BLOCK:2 * BLOCK] *= np.float32(1e-12)
    terms[:, 2 * BLOCK:3 * BLOCK] *= np.float32(1e-38)     # below 2^-126: the grid needs two float32 factors
    terms[:, 3 * BLOCK:] *= rng.choice(np.float32([1, -1]), (8, BLOCK - 5))
    reference = np.array([math.fsum(column) for column in terms.astype(np.float64).T])
    out, _ = exact_sum(terms)
    error = np.abs(out - reference) / np.abs(reference)
    float32_error = np.abs(terms.sum(axis=0, dtype=np.float32) - reference) / np.abs(reference)
    assert (error <= 2.0 ** -24).all() and error.max() <= float32_error.max()


def test_the_deterministic_trainer_fixes_one_blas_thread():
    from threadpoolctl import threadpool_info, threadpool_limits
    from ddp_edf import SGD, Affine, Input, Parameter, SoftmaxCrossEntropy, Trainer
    x, y = Input("x"), Input("y")
    loss = SoftmaxCrossEntropy(Affine(x, Parameter("W", np.zeros((4, 2))), Parameter("b", np.zeros(2))), y)
    with threadpool_limits(limits=2, user_api="blas"):
        Trainer(loss, (x, y), (np.zeros((8, 4)), np.zeros(8, np.int64)), optimizer=SGD(), global_batch=4,
                comm="serial", deterministic=True)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
