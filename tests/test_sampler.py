"""The epoch permutation formula, the batches of an epoch, and how they are sharded across ranks."""

import numpy as np
import pytest

from ddp_edf import batches
from ddp_edf.data import epoch_permutation, steps_per_epoch
from ddp_edf.data.sampler import batch_indices
from ddp_edf.parallel.reducers import shard_bounds


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


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_are_the_epochs_permutation_in_slices(drop_last):
    got = list(batches(23, 5, seed=7, epoch=2, drop_last=drop_last))
    permutation = epoch_permutation(7, 2, 23)
    assert [len(b) for b in got] == [5, 5, 5, 5] + ([] if drop_last else [3])
    np.testing.assert_array_equal(np.concatenate(got), permutation[:20 if drop_last else 23])


def test_steps_per_epoch():
    assert steps_per_epoch(100, 30, False) == 4
    assert steps_per_epoch(100, 30, True) == 3
    assert steps_per_epoch(90, 30, False) == 3
