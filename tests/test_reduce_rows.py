"""The shared-memory reduction's row sum: the order of additions, hence the exact float32 result."""

import numpy as np
import pytest

from ddp_edf.dist.reduce import sum_rows


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_sum_rows_adds_in_row_order(rows):
    values = (np.random.default_rng(rows).standard_normal((rows, 1001)) * 1e3).astype(np.float32)
    out = np.full(1001, np.nan, np.float32)
    sum_rows(values, out=out)
    expected = values[0].copy()
    for row in values[1:]:
        expected += row                       # ((r0 + r1) + r2) + ...: the order fixes the rounding
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, np.sum(values, axis=0))   # what the reduction used before
    np.testing.assert_allclose(out, values.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-2)


def test_ring_depth_covers_the_ring_and_is_capped():
    from ddp_edf.dist.reduce import MAX_RING_DEPTH, ring_depth
    assert ring_depth(0, 1000) == 1                      # 0 = in place
    assert ring_depth(64 << 20, 3 * 814_128) == 28       # the MNIST MLP on 2 ranks: 28 sets >= 64 MiB
    assert ring_depth(64 << 20, 100 << 20) == 1          # a set larger than the ring: in place
    assert ring_depth(64 << 20, 1000) == MAX_RING_DEPTH  # tiny models: capped
    assert ring_depth(3000, 1000) == 3 and ring_depth(3001, 1000) == 4


def test_window_depth_fits_the_free_shared_memory():
    from ddp_edf.dist.reduce import window_depth
    ranks, row = 2, 814_128                                         # the MNIST MLP's vector, 2 ranks per host
    assert window_depth(64 << 20, ranks, row, None) == 28          # nothing to ask: the ring as asked
    assert window_depth(64 << 20, ranks, row, 20 << 30) == 28      # plenty free
    assert window_depth(64 << 20, ranks, row, 60 << 20) == 13      # Docker's 64 MB: half of what is free
    assert window_depth(0, ranks, row, 60 << 20) == 1
    assert window_depth(64 << 20, ranks, row, 4 * row) == 1        # just fits in place
    with pytest.raises(ValueError, match=r"needs 3\.1 MiB of shared memory but /dev/shm has 2\.0 MiB free.*"
                                         r"--shm-size.*dist.reduction = 'allreduce'"):
        window_depth(64 << 20, ranks, row, 2 << 20)
