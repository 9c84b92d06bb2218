"""What a config describes, built the same way for training and for evaluation: the dataset (found or
fetched by rank 0, then split on every rank) and the model."""

from __future__ import annotations

from .config import ConfigError, config_error
from .data import load_dataset, prepare_dataset
from .data.download import DEADLINE_S
from .engine.models import IMAGE_MODELS, build_model
from .errors import OptionError


def dataset_of(config, comm):
    """The train / dev / test splits of ``config.data``: rank 0 finds, fetches and decompresses the files
    while the others wait (for as long as a download may take), then every rank maps them."""
    data = config.data
    if comm.is_root:
        prepare_dataset(data.dataset, data.dir, data.download)
    comm.barrier(patience_s=4 * DEADLINE_S)        # DDP: four files, each within the download deadline
    return load_dataset(data.dataset, data.dir, False, data.dev_size, data.train_limit,
                        flat=config.model.kind not in IMAGE_MODELS)


def model_of(config, dataset):
    """The model of ``config.model`` for the dataset's images and classes."""
    m = config.model
    try:
        return build_model(m.kind, dataset.train.images.shape[1:], dataset.num_classes, hidden=m.hidden,
                           activation=m.activation, seed=m.init_seed, channels=m.channels, patch=m.patch, dim=m.dim,
                           depth=m.depth, heads=m.heads, dropout=m.dropout)
    except OptionError as error:
        raise config_error("model", error) from None
    except MemoryError:
        raise ConfigError(f"not enough memory for the model (model.hidden = {m.hidden} on {dataset.num_features} "
                          f"inputs): give smaller widths") from None
