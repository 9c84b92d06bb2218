"""Helpers that write small IDX datasets for tests."""

import gzip
import struct

import numpy as np

from ddp_edf.data.datasets import FILE_NAMES


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if code == 0x08 else array.dtype).tobytes()


def write_dataset(folder, n_train=120, n_test=40, rows=4, cols=4, classes=10, gz=False, seed=0):
    """Four IDX files of random images; labels cycle 0..classes-1.  Returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % classes).astype(np.uint8),
    }
    for role, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / (FILE_NAMES[role] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / FILE_NAMES[role]).write_bytes(data)
    return arrays
