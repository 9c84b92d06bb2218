"""The IDX reader on generated files, with every kind of corruption."""

import gzip

import numpy as np
import pytest

from ddp_edf.data import DataError, load_dataset, read_idx
from idx_files import idx_bytes, write_dataset


def test_reads_raw_and_gz(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    raw = read_idx(tmp_path / "a")
    assert isinstance(raw, np.memmap) and raw.shape == (2, 3, 4)
    np.testing.assert_array_equal(raw, images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)


@pytest.mark.parametrize("corrupt,message", [
    (lambda b: b[:3], "truncated"),
    (lambda b: b[:10], "truncated: the header needs"),
    (lambda b: b"\x01\x02" + b[2:], "wrong magic number"),
    (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX dtype code 0x42"),
    (lambda b: b[:-5], "truncated: dimensions (2, 3, 4) need 24 bytes of data, found 19"),
    (lambda b: b + b"xx", "2 unexpected bytes"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_corruptions_give_one_line_errors(tmp_path, corrupt, message, gz):
    data = corrupt(idx_bytes(np.zeros((2, 3, 4), np.uint8)))
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as error:
        read_idx(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 2), np.uint8)))[:-12])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(path)


def test_count_mismatch_and_label_range(isolated_data):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=30, n_test=10)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(DataError, match="count mismatch: .* holds 10 images but .* holds 9 labels"):
        load_dataset(f"idx:{folder}", dev_size=5)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12 out of range 0..9"):
        load_dataset(f"idx:{folder}", dev_size=5)


def test_images_must_be_uint8_3d(isolated_data):
    folder = isolated_data / "d"
    write_dataset(folder, n_train=30, n_test=10)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 16), np.uint8)))
    with pytest.raises(DataError, match="expected uint8 images of shape"):
        load_dataset(f"idx:{folder}", dev_size=5)
