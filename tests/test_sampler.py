"""The epoch permutation formula and how batches are sharded across ranks."""

import numpy as np
import pytest

from ddp_edf.data import epoch_permutation, shard_bounds, steps_per_epoch
from ddp_edf.data.sampler import batch_indices


def test_permutation_is_the_documented_formula():
    expected = np.random.default_rng([42, 3]).permutation(1000)
    np.testing.assert_array_equal(epoch_permutation(42, 3, 1000), expected)
    assert not np.array_equal(epoch_permutation(42, 3, 1000), epoch_permutation(42, 4, 1000))
    assert sorted(epoch_permutation(1, 0, 50)) == list(range(50))


@pytest.mark.parametrize("n,batch,world", [(100, 10, 1), (100, 10, 3), (103, 10, 4), (57, 8, 3),
                                           (10, 7, 4), (13, 2, 5)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_example_once_per_epoch_across_ranks(n, batch, world, drop_last):
    permutation = epoch_permutation(0, 0, n)
    seen = []
    for t in range(steps_per_epoch(n, batch, drop_last)):
        indices = batch_indices(permutation, t, batch)
        sizes = []
        for rank in range(world):
            start, stop = shard_bounds(len(indices), rank, world)
            seen.extend(indices[start:stop])
            sizes.append(stop - start)
        assert sum(sizes) == len(indices) and max(sizes) - min(sizes) <= 1
    if drop_last:
        assert len(seen) == (n // batch) * batch and len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(n))


def test_shards_are_contiguous_and_ordered():
    bounds = [shard_bounds(10, r, 4) for r in range(4)]
    assert bounds == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shard_bounds(2, 3, 4) == (2, 2)   # more ranks than examples: an empty shard


def test_steps_per_epoch():
    assert steps_per_epoch(100, 30, False) == 4
    assert steps_per_epoch(100, 30, True) == 3
    assert steps_per_epoch(90, 30, False) == 3
