"""Where data is looked for, downloads from a local HTTP server, splits and batches."""

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from ddp_edf.data import DataError, load_dataset
from ddp_edf.data import datasets as ds
from ddp_edf.data import ArraySplit
from idx_files import write_dataset


def test_search_order(isolated_data, monkeypatch):
    tmp = isolated_data
    for place in ("explicit", "env/mnist", "cache/ddp_edf/mnist", "system/mnist"):
        write_dataset(tmp / place, gz=place.startswith("system"))
    monkeypatch.setenv("DDP_EDF_DATA", str(tmp / "env"))
    assert ds.locate("mnist", str(tmp / "explicit"))["train_images"].parent == tmp / "explicit"
    assert ds.locate("mnist")["train_images"].parent == tmp / "env/mnist"
    monkeypatch.delenv("DDP_EDF_DATA")
    assert ds.locate("mnist")["train_images"].parent == tmp / "cache/ddp_edf/mnist"
    for f in (tmp / "cache/ddp_edf/mnist").iterdir():
        f.unlink()
    assert ds.locate("mnist")["train_images"].parent == tmp / "system/mnist"


def test_not_found_offline_lists_every_place(isolated_data, monkeypatch):
    monkeypatch.setenv("DDP_EDF_DATA", str(isolated_data / "env"))
    with pytest.raises(DataError) as error:
        ds.locate("mnist", allow_download=False)
    message = str(error.value)
    for place in ("env/mnist", "cache/ddp_edf/mnist", "system/mnist", "data.download",
                  "python -m ddp_edf.data download mnist"):
        assert place in message
    assert "\n" not in message


def test_a_data_dir_the_user_names_is_the_only_place_looked_in(isolated_data, monkeypatch):
    """Like torchvision's root=: no silent fall-back to another copy elsewhere on the machine."""
    write_dataset(isolated_data / "cache/ddp_edf/mnist")
    write_dataset(isolated_data / "system/fashion-mnist")
    for name in ("mnist", "fashion-mnist", "digits"):
        with pytest.raises(DataError, match=f"{isolated_data / 'mine'} does not hold the four IDX files of {name}"):
            ds.locate(name, str(isolated_data / "mine"))
    assert ds.locate("mnist")["train_images"].parent == isolated_data / "cache/ddp_edf/mnist"


def test_digits_are_built_in(isolated_data, monkeypatch):
    """The default dataset needs no network and no cache: 1,497 + 300 real 8x8 digits in the package."""
    monkeypatch.setattr("ddp_edf.data.download.download", lambda *a, **k: pytest.fail("digits must not download"))
    data = load_dataset("digits")
    assert (len(data.train), len(data.dev), len(data.test), data.num_features) == (1197, 300, 300, 64)
    assert data.train.images.dtype == np.uint8 and data.train.images.max() == 255
    assert sorted(set(data.test.labels.tolist())) == list(range(10))
    assert not (isolated_data / "cache").exists()


def test_unknown_dataset_name(isolated_data):
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        ds.locate("cifar")


def test_gz_is_decompressed_once_into_the_cache(isolated_data):
    write_dataset(isolated_data / "system/mnist", gz=True)
    files = ds.prepare_dataset("mnist", allow_download=False)
    raw = files["train_images"]
    assert raw.suffix == "" and str(raw).startswith(str(isolated_data / "cache"))
    mtime = raw.stat().st_mtime_ns
    assert ds.prepare_dataset("mnist", allow_download=False)["train_images"].stat().st_mtime_ns == mtime


def test_splits_dev_is_the_last_training_images(isolated_data):
    arrays = write_dataset(isolated_data / "d", n_train=100, n_test=30)
    data = load_dataset(f"idx:{isolated_data / 'd'}", dev_size=20)
    assert (len(data.train), len(data.dev), len(data.test)) == (80, 20, 30)
    np.testing.assert_array_equal(data.dev.images, arrays["train_images"][80:].reshape(20, -1))
    np.testing.assert_array_equal(data.train.labels, arrays["train_labels"][:80])
    assert data.train.images.dtype == np.uint8
    limited = load_dataset(f"idx:{isolated_data / 'd'}", dev_size=0, train_limit=50)
    assert (len(limited.train), len(limited.dev)) == (50, 0)
    with pytest.raises(DataError, match="data.dev_size = 100 must be in"):
        load_dataset(f"idx:{isolated_data / 'd'}", dev_size=100)


def test_batch_loader_converts_to_float32_in_unit_interval(isolated_data):
    arrays = write_dataset(isolated_data / "d", n_train=50, n_test=10)
    data = load_dataset(f"idx:{isolated_data / 'd'}", dev_size=10)
    x, y = data.train.batch(np.array([3, 1, 4]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, arrays["train_images"][[3, 1, 4]].reshape(3, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, arrays["train_labels"][[3, 1, 4]])
    x2, _ = data.dev.batch(slice(2, 5))
    np.testing.assert_allclose(x2, arrays["train_images"][42:45].reshape(3, -1) / 255, rtol=1e-6)


def test_array_split_hands_over_rows_floats_in_the_graph_dtype(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    memmap = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.int64, shape=(6,))
    memmap[:] = [5, 4, 3, 2, 1, 0]
    split = ArraySplit(x, memmap)
    assert len(split) == 6
    xb, yb = split.batch(np.array([4, 1]))
    assert xb.dtype == np.float32 and xb.tolist() == [[8, 9], [2, 3]] and yb.tolist() == [1, 4]
    assert split.batch(slice(0, 2))[1].tolist() == [5, 4]
    with pytest.raises(ValueError, match=r"one row per example, got lengths \[6, 5\]"):
        ArraySplit(x, memmap[:5])


class Mirror:
    """A local HTTP server on 127.0.0.1 serving files from a folder."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(isolated_data, monkeypatch):
    """A fake 'mnist' spec whose files are served locally; returns (server, spec)."""
    root = isolated_data / "www"
    write_dataset(root / "good" / "mnist", gz=True)
    sums = {role: hashlib.sha256((root / "good/mnist" / (ds.FILE_NAMES[role] + ".gz")).read_bytes()).hexdigest()
            for role in ds.ROLES}
    server = Mirror(root)
    spec = ds.DatasetSpec("mnist", sums, (server.url + "missing/", server.url + "good/mnist/"))
    monkeypatch.setitem(ds.DATASETS, "mnist", spec)
    yield server, spec
    server.close()


def test_download_falls_back_to_the_next_mirror(mirror, isolated_data):
    files = ds.prepare_dataset("mnist", allow_download=True, progress=False)
    cache = isolated_data / "cache/ddp_edf/mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(n + ".gz" for n in ds.FILE_NAMES.values())
    assert load_dataset("mnist", dev_size=20).train.images.shape == (100, 16)
    assert files["train_images"].is_file()


def test_checksum_mismatch_is_an_error_and_leaves_nothing(mirror, isolated_data, monkeypatch):
    server, spec = mirror
    bad = {**spec.sha256, "train_images": "0" * 64}
    monkeypatch.setitem(ds.DATASETS, "mnist", ds.DatasetSpec("mnist", bad, (server.url + "good/mnist/",)))
    with pytest.raises(DataError, match="checksum mismatch") as error:
        ds.prepare_dataset("mnist", allow_download=True, progress=False)
    assert "\n" not in str(error.value)
    cache = isolated_data / "cache/ddp_edf/mnist"
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if ".part" in p.name]


def test_mirror_variable_points_downloads_at_an_internal_mirror(mirror, isolated_data, monkeypatch):
    server, spec = mirror
    monkeypatch.setitem(ds.DATASETS, "mnist", ds.DatasetSpec("mnist", spec.sha256, ("http://127.0.0.1:9/none/",)))
    monkeypatch.setenv("DDP_EDF_MIRROR", server.url + "good")
    ds.prepare_dataset("mnist", allow_download=True, progress=False)
    assert (isolated_data / "cache/ddp_edf/mnist/train-images-idx3-ubyte.gz").is_file()


def test_download_command_line(mirror, isolated_data, capsys):
    from ddp_edf.data.__main__ import main
    assert main(["download", "mnist"]) == 0
    assert "mnist: ready" in capsys.readouterr().out


def test_a_server_that_trickles_is_given_up_at_the_deadline(isolated_data):
    """Every read arrives within the per-read timeout, but the file never would: the deadline ends it,
    the next mirror is tried, and nothing is left behind."""
    from ddp_edf.data.download import download

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 9))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"x" * 64)
                    self.wfile.flush()
                    threading.Event().wait(0.01)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    destination = isolated_data / "file.gz"
    try:
        with pytest.raises(DataError, match=r"slow\.gz: still downloading after .* when the deadline passed.*"
                                            r"unreachable\.gz") as error:
            download([f"http://127.0.0.1:{server.server_address[1]}/slow.gz", "http://127.0.0.1:9/unreachable.gz"],
                     destination, "0" * 64, timeout=5.0, progress=False, deadline_s=0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert "\n" not in str(error.value)
    assert not list(isolated_data.glob("file.gz*"))
