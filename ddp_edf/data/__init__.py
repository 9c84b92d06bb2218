"""Data: IDX files of the MNIST family, where to find or fetch them, splits, and the epoch order.

The data layer knows nothing of graphs or MPI.
"""

from .datasets import DATASETS, Dataset, DatasetSpec, load_dataset, prepare_dataset
from .errors import DataError
from .idx import read_idx
from .sampler import batches, epoch_permutation, steps_per_epoch
from .splits import ArraySplit, ImageSplit, as_split

__all__ = ["DATASETS", "ArraySplit", "DataError", "Dataset", "DatasetSpec", "ImageSplit", "as_split", "batches",
           "epoch_permutation", "load_dataset", "prepare_dataset", "read_idx", "steps_per_epoch"]
