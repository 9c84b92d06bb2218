"""The exact sum of the deterministic mode, in one process: against float64 references, in any order."""

import math

import numpy as np

from ddp_edf.parallel.comm import SerialComm
from ddp_edf.parallel.exact_sum import ExactSum

SEGMENTS = [("a", 0, 1000), ("b", 1000, 2000), ("c", 2000, 3001)]


def terms_of_mixed_scales(count=11, seed=4):
    rng = np.random.default_rng(seed)
    terms = rng.standard_normal((count, 3001)).astype(np.float32) * np.float32(1e-3)
    terms[:, 1000:2000] *= np.float32(1e6)
    terms[:, 2000:2500] = 0
    return terms


def exact_sum(terms, order=None):
    exact, out, flags = ExactSum(SerialComm(), SEGMENTS, terms.shape[1]), np.empty(terms.shape[1], np.float32), np.zeros(2)
    for t in order if order is not None else range(len(terms)):
        exact.add(terms[t])
    exact.allreduce(out, flags, total_terms=len(terms))
    return out


def test_any_order_of_the_terms_gives_the_same_bits():
    terms = terms_of_mixed_scales()
    first = exact_sum(terms)
    for seed in range(5):
        assert np.array_equal(exact_sum(terms, np.random.default_rng(seed).permutation(len(terms))), first)


def test_at_least_as_accurate_as_a_float32_sum():
    terms = terms_of_mixed_scales()
    reference = np.array([math.fsum(column) for column in terms.astype(np.float64).T])   # exact, rounded once
    float32_sum = terms.sum(axis=0, dtype=np.float32)
    result = exact_sum(terms)
    for _, a, b in SEGMENTS:
        scale = np.linalg.norm(reference[a:b]) or 1.0
        error = np.linalg.norm(result[a:b] - reference[a:b]) / scale
        assert error <= 2.0 ** -24 and error <= np.linalg.norm(float32_sum[a:b] - reference[a:b]) / scale + 1e-30
    # element by element: within one float32 spacing of the exact sum
    close = np.abs(result - reference) <= np.spacing(np.abs(reference).astype(np.float32)) + 1e-15
    assert close.all()


def test_a_term_that_is_not_finite_makes_the_sum_nan():
    terms = terms_of_mixed_scales(count=3)
    terms[1, 7] = np.inf
    assert np.isnan(exact_sum(terms)).all()


def test_the_deterministic_trainer_fixes_one_blas_thread():
    from threadpoolctl import threadpool_info, threadpool_limits
    from ddp_edf import SGD, Affine, Input, Parameter, SoftmaxCrossEntropy, Trainer
    x, y = Input("x"), Input("y")
    loss = SoftmaxCrossEntropy(Affine(x, Parameter("W", np.zeros((4, 2))), Parameter("b", np.zeros(2))), y)
    with threadpool_limits(limits=2, user_api="blas"):
        Trainer(loss, (x, y), (np.zeros((8, 4)), np.zeros(8, np.int64)), optimizer=SGD(), global_batch=4,
                comm="serial", deterministic=True)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
