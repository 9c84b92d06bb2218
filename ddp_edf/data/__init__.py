"""Data: IDX files of the MNIST family, where to find or fetch them, splits, and the epoch order.

The data layer knows nothing of graphs or MPI: the trainer passes it ``rank`` and ``world_size``.
"""

from .datasets import DATASETS, Dataset, DatasetSpec, load_dataset, prepare_dataset
from .errors import DataError
from .idx import read_idx
from .splits import ArraySplit, ImageSplit, as_split
from .sampler import epoch_permutation, shard_bounds, steps_per_epoch

__all__ = ["DATASETS", "ArraySplit", "DataError", "Dataset", "DatasetSpec", "ImageSplit", "as_split", "epoch_permutation",
           "load_dataset", "prepare_dataset", "read_idx", "shard_bounds", "steps_per_epoch"]
