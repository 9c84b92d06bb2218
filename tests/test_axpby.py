"""y <- a x + b y through OpenBLAS (one pass) and through NumPy (two): both against float64 math."""

import numpy as np
import pytest

from ddp_edf import SGD, Adam
from ddp_edf.axpby import Axpby, find_blas_axpby

LENGTHS = [0, 1, 7, 33, 1000, 100_003]


def numpy_uses_openblas() -> bool:
    from threadpoolctl import threadpool_info
    return any(library.get("internal_api") == "openblas" for library in threadpool_info())


def reference(a, x, b, y):
    return a * x.astype(np.float64) + b * y.astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernel_is_found_where_numpy_runs_on_openblas(dtype):
    kernel = find_blas_axpby(dtype)
    assert (kernel is not None) == numpy_uses_openblas()
    assert find_blas_axpby(np.float16) is None and find_blas_axpby(np.int64) is None


@pytest.mark.parametrize("way", ["blas", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("a, b", [(1.0, 0.9), (-0.05, 1.0), (0.3, -2.5)])
def test_axpby_is_a_x_plus_b_y(way, dtype, n, a, b):
    rng = np.random.default_rng(n)
    x, y = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    expected = reference(a, x, b, y)
    update = Axpby(x, y, find_blas_axpby(dtype) if way == "blas" else None, np.empty_like(x))
    assert update.uses_blas == (way == "blas" and numpy_uses_openblas())
    update(a, b)
    # one rounding of each product and sum at most: |error| <= 2 ulp of the magnitudes involved
    scale = np.abs(a * x.astype(np.float64)) + np.abs(b * y.astype(np.float64)) + np.abs(expected)
    np.testing.assert_array_less(np.abs(y - expected), 2 * np.finfo(dtype).eps * scale + np.finfo(dtype).tiny)


def test_vectors_blas_cannot_take_fall_back_to_numpy():
    kernel = find_blas_axpby(np.float64)
    base = np.arange(20.0)
    strided = Axpby(base[::2].copy(), base[1::2], kernel, np.empty(10))   # y not contiguous
    overlapping = Axpby(base[:10], base[5:15], kernel, np.empty(10))       # x and y share memory
    matrix = Axpby(np.ones((2, 3)), np.ones((2, 3)), kernel, np.empty((2, 3)))
    assert not (strided.uses_blas or overlapping.uses_blas or matrix.uses_blas)
    expected = 2.0 * base[::2] + base[1::2]
    strided(2.0)
    np.testing.assert_array_equal(base[1::2], expected)
    without_scratch = Axpby(np.ones(4), np.ones(4))            # no kernel, no scratch given
    without_scratch(-0.5, 2.0)
    np.testing.assert_array_equal(without_scratch.y, np.full(4, 1.5))
    with pytest.raises(ValueError, match="one shape and dtype"):
        Axpby(np.ones(3, np.float32), np.ones(3), kernel)


@pytest.mark.parametrize("make, state", [
    (lambda p, g: SGD(p, g, momentum=0.9), ("velocity",)),
    (lambda p, g: Adam(p, g, weight_decay=1e-3), ("m", "v")),
], ids=["sgd-momentum", "adam"])
def test_updates_run_on_blas_and_a_ring_of_copies_gives_the_same_bits(make, state):
    """The ring's update (copy Phi to the next buffer, update it there) against the in-place one."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal(10_001).astype(np.float32)
    gradients = [rng.standard_normal(10_001).astype(np.float32) for _ in range(6)]
    in_place_params, grads = start.copy(), np.zeros_like(start)
    in_place = make(in_place_params, grads)
    copies = [start.copy(), np.zeros_like(start), np.zeros_like(start)]
    ring_grads = np.zeros_like(start)
    ring = make(copies[0], ring_grads)
    for t, g in enumerate(gradients):
        grads[:], ring_grads[:] = g, g
        in_place.step(0.05)
        ring.retarget(copies[t % 3], copies[(t + 1) % 3])
        ring.step(0.05)
    assert in_place._parameter_update.uses_blas == numpy_uses_openblas()
    np.testing.assert_array_equal(copies[len(gradients) % 3], in_place_params)
    for name in state:
        np.testing.assert_array_equal(getattr(ring, name), getattr(in_place, name))
    np.testing.assert_array_equal(ring_grads, gradients[-1])   # the caller's gradient is left as it was


def test_the_result_does_not_depend_on_where_the_vectors_sit_in_memory():
    """The ring's copies sit at other offsets (alignments) than the in-place vector: a kernel that
    peeled elements for alignment could round them differently, and ring and in place would part."""
    rng = np.random.default_rng(1)
    x0, y0 = (rng.standard_normal(10_007).astype(np.float32) for _ in range(2))
    kernel = find_blas_axpby(np.float32)
    results = []
    for offset_x in (0, 3, 8):
        for offset_y in range(16):
            x = np.empty(10_040, np.float32)[offset_x:offset_x + 10_007]
            y = np.empty(10_040, np.float32)[offset_y:offset_y + 10_007]
            x[:], y[:] = x0, y0
            Axpby(x, y, kernel)(-0.05, 1.0)
            results.append(y.copy())
    assert all(np.array_equal(results[0], r) for r in results)
