"""Read and validate IDX files (the MNIST format), raw or gzipped.

Layout: 2 zero bytes, a dtype code, the number of dimensions d, then d big-endian uint32 sizes,
then the payload in C order, big-endian.  MNIST uses dtype 0x08 (uint8): images (N, 28, 28),
labels (N,).

A raw file is memory-mapped, never read into memory: several ranks on one host share the pages.
A .gz file is decompressed once to a raw file (``decompress_idx``) and then mapped.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from .atomic import write_atomically
from .errors import DataError

DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_header(path, head: bytes, payload_bytes: int):
    """(dtype, shape, header_length) from the first bytes of a raw IDX file of ``payload_bytes`` + header."""
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, too short for an IDX header")
    zero0, zero1, code, ndim = head[0], head[1], head[2], head[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{path}: wrong magic number 0x{head[:4].hex()}: not an IDX file "
                        f"(expected 0x0000 then a dtype code and the number of dimensions)")
    if code not in DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x} (known: "
                        f"{', '.join(f'0x{c:02x}' for c in DTYPES)})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_length = 4 + 4 * ndim
    if len(head) < header_length:
        raise DataError(f"{path}: truncated: the header needs {header_length} bytes, the file has {len(head)}")
    shape = struct.unpack(f">{ndim}I", head[4:header_length])
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize   # Python integers: no overflow
    found = payload_bytes - header_length
    if found < expected:
        raise DataError(f"{path}: truncated: dimensions {shape} need {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(f"{path}: {found - expected} unexpected bytes after the data of dimensions {shape}")
    return dtype, shape, header_length


def read_idx(path) -> np.ndarray:
    """The array in an IDX file, validated.  Raw files are memory-mapped read-only; .gz files are read."""
    path = os.fspath(path)
    if path.endswith(".gz"):
        data = _gunzip(path)
        dtype, shape, offset = parse_header(path, data[:64], len(data))
        return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    dtype, shape, offset = parse_header(path, head, size)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _gunzip(path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt gzip file ({error}); delete it and fetch it again") from None


def decompress_idx(source, destination):
    """Validate the gzipped IDX ``source`` and write it raw to ``destination`` atomically."""
    data = _gunzip(source)
    parse_header(source, data[:64], len(data))
    write_atomically(destination, lambda handle: handle.write(data))
