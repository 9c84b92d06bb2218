"""Datasets by name, where their files are looked for, and the train / dev / test splits.

``digits`` is built in (ddp_edf/data/digits: 1,797 8x8 images, no network).  For ``mnist`` and
``fashion-mnist``, a ``data.dir`` the user names is the only folder looked in (never a silent
fall-back elsewhere); without one, the first folder holding all four files (raw or .gz) wins:
  1. ``$DDP_EDF_DATA/NAME``
  2. the cache ``$XDG_CACHE_HOME/ddp_edf/NAME`` (default ``~/.cache/ddp_edf/NAME``)
  3. ``/usr/share/datasets/NAME`` (Debian's dataset-fashion-mnist installs there)
Then, if downloading is allowed, the files are fetched into the cache.  ``idx:DIR`` names a folder
directly and is never downloaded.

Gzipped files are decompressed once into the cache, so ranks memory-map one raw copy per host.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .download import download
from .errors import DataError
from .idx import decompress_idx, read_idx
from .splits import ImageSplit

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
FILE_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
SYSTEM_DIRS = ("/usr/share/datasets",)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sha256: dict          # role -> SHA-256 of the official .gz file
    mirrors: tuple        # base URLs; file URL = base + file name + ".gz"
    num_classes: int = 10
    dev_size: int = 10000               # the default dev split: the last dev_size training images
    folder: Path | None = None          # a built-in dataset's files (never downloaded)


DATASETS = {
    "digits": DatasetSpec("digits", {}, (), dev_size=300, folder=Path(__file__).parent / "digits"),
    "mnist": DatasetSpec(
        "mnist",
        {"train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
         "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
         "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
         "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/")),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        {"train_images": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
         "train_labels": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
         "test_images": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
         "test_labels": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"},
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")),
}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddp_edf"


def mirrors_for(spec: DatasetSpec) -> list[str]:
    """``$DDP_EDF_MIRROR/NAME/`` when set (an internal mirror laid out like the cache), else the public ones."""
    mirror = os.environ.get("DDP_EDF_MIRROR")
    if mirror:
        return [mirror.rstrip("/") + f"/{spec.name}/"]
    return list(spec.mirrors)


def _files_in(folder: Path):
    """role -> existing path (raw preferred over .gz) if the folder holds all four files, else None."""
    found = {}
    for role in ROLES:
        raw, gz = folder / FILE_NAMES[role], folder / (FILE_NAMES[role] + ".gz")
        found[role] = raw if raw.is_file() else gz if gz.is_file() else None
    return found if all(found.values()) else None


def candidate_dirs(name: str, data_dir: str = "") -> list[Path]:
    if name.startswith("idx:"):
        return [Path(name[4:]).expanduser()]
    if data_dir:                              # the user named the folder: only there
        return [Path(data_dir).expanduser()]
    if DATASETS[name].folder:
        return [DATASETS[name].folder]
    dirs = []
    if os.environ.get("DDP_EDF_DATA"):
        dirs.append(Path(os.environ["DDP_EDF_DATA"]).expanduser() / name)
    dirs.append(cache_root() / name)
    dirs.extend(Path(d) / name for d in SYSTEM_DIRS)
    return dirs


def locate(name: str, data_dir: str = "", allow_download: bool = True, progress=None) -> dict:
    """role -> path of each of the four files, found in the search order or downloaded into the cache."""
    if not name.startswith("idx:") and name not in DATASETS:
        raise DataError(f"unknown dataset '{name}': use one of {sorted(DATASETS)} or 'idx:<folder>' "
                        f"for a folder holding the four IDX files")
    dirs = candidate_dirs(name, data_dir)
    for folder in dirs:
        files = _files_in(folder)
        if files:
            return files
    wanted = ", ".join(FILE_NAMES[r] + "[.gz]" for r in ROLES)
    looked = "; ".join(str(d) for d in dirs)
    if name.startswith("idx:") or data_dir:
        raise DataError(f"{dirs[0]} does not hold the four IDX files of {name} ({wanted}): put them there, "
                        f"or name the folder that holds them" + ("" if name.startswith("idx:") else
                                                               " (data.dir), or unset data.dir to search"))
    if DATASETS[name].folder:
        raise DataError(f"the built-in {name} files are missing from {dirs[0]}: reinstall ddp_edf")
    if not allow_download:
        raise DataError(f"{name} not found (looked in: {looked}); put {wanted} in one of these folders, "
                        f"set data.dir, or allow data.download (or run 'python -m ddp_edf.data download {name}' "
                        f"where there is network)")
    spec = DATASETS[name]
    target = cache_root() / name
    with cache_errors(target):
        target.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            file_name = FILE_NAMES[role] + ".gz"
            destination = target / file_name
            if not destination.is_file():
                download([base + file_name for base in mirrors_for(spec)], destination, spec.sha256[role],
                         progress=progress)
    return _files_in(target)


@contextlib.contextmanager
def cache_errors(folder: Path):
    """A write into the cache that fails (full, read-only, a file in the way) as one DataError naming it."""
    try:
        yield
    except OSError as error:
        problem = "disk full" if error.errno == errno.ENOSPC else error.strerror
        raise DataError(f"cannot write the dataset cache {folder} ({problem}): free space there, or set "
                        f"XDG_CACHE_HOME to a writable folder") from None


def raw_copy(path: Path, name: str) -> Path:
    """A raw (uncompressed) IDX file for ``path``: itself, or its decompressed copy in the cache."""
    if path.suffix != ".gz":
        return path
    folder_key = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12]
    target_dir = cache_root() / "raw" / f"{name.replace(':', '_').replace('/', '_')[-40:]}-{folder_key}"
    target = target_dir / path.stem
    if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
        with cache_errors(target_dir):
            target_dir.mkdir(parents=True, exist_ok=True)
            decompress_idx(path, target)
    return target


def prepare_dataset(name: str, data_dir: str = "", allow_download: bool = True, progress=None) -> dict:
    """Find or fetch the files and decompress them: role -> raw path.  Run on one rank per host first."""
    return {role: raw_copy(path, name) for role, path in locate(name, data_dir, allow_download, progress).items()}


@dataclass
class Dataset:
    name: str
    train: ImageSplit
    dev: ImageSplit
    test: ImageSplit
    num_classes: int
    source: str          # the folder the files came from, for the log

    @property
    def num_features(self) -> int:
        return int(np.prod(self.train.images.shape[1:]))


def _images_and_labels(files: dict, origins: dict, split: str, num_classes: int):
    """(images (N, rows, cols), labels (N,)) of ``split``, read from the raw ``files``; the messages
    name the user's ``origins`` (a .gz file rather than its decompressed copy in the cache)."""
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    images_path, labels_path = origins[f"{split}_images"], origins[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, rows, cols), got {images.dtype} "
                        f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"count mismatch: {images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    if len(images) == 0 or images.shape[1] * images.shape[2] == 0:
        raise DataError(f"{images_path}: no images to {split} on (shape {images.shape}): the file is empty")
    return images, np.asarray(labels, dtype=np.int64)


def load_dataset(name: str, data_dir: str = "", allow_download: bool = False, dev_size: int = -1,
                 train_limit: int = 0, flat: bool = True) -> Dataset:
    """Train / dev / test: dev is the LAST ``dev_size`` training images (-1: the dataset's default,
    a sixth of the training images for an ``idx:`` folder), test the t10k set.
    ``train_limit`` (> 0) keeps only the first that many training examples.  Images come as rows of
    rows x cols pixels, or with ``flat=False`` as one-channel images (1, rows, cols) (a CNN's, a ViT's).
    """
    files = prepare_dataset(name, data_dir, allow_download)
    origins = locate(name, data_dir, allow_download=False)
    num_classes = DATASETS[name].num_classes if name in DATASETS else 10
    train_images, train_labels = _images_and_labels(files, origins, "train", num_classes)
    test_images, test_labels = _images_and_labels(files, origins, "test", num_classes)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"{origins['train_images']} holds {'x'.join(map(str, train_images.shape[1:]))} images but "
                        f"{origins['test_images']} {'x'.join(map(str, test_images.shape[1:]))}: the two files are "
                        f"of different datasets")
    train_images, test_images = (images.reshape(len(images), -1) if flat else images[:, None]
                                 for images in (train_images, test_images))
    n = len(train_labels)
    if dev_size < 0:
        dev_size = DATASETS[name].dev_size if name in DATASETS else n // 6
    if not 0 <= dev_size < n:
        raise DataError(f"data.dev_size = {dev_size} must be in [0, {n}) for {name} ({n} training images)")
    n_train = n - dev_size
    if train_limit:
        n_train = min(n_train, train_limit)
    source = f"{name} from {origins['train_images'].parent}"
    return Dataset(
        name=name,
        train=ImageSplit(train_images[:n_train], train_labels[:n_train], "train", source),
        dev=ImageSplit(train_images[n - dev_size:], train_labels[n - dev_size:], "dev", source),
        test=ImageSplit(test_images, test_labels, "test", source),
        num_classes=num_classes,
        source=source,
    )
