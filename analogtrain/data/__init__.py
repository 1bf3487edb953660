"""Data-set registry: ``build_data(cfg.data, seed) -> DataBundle`` (in-memory splits, seeded batching).

Registered: digits (bundled, default), fashion_mnist, mnist, cifar10, cifar100, synthetic. Add one with
``@register_dataset("name")`` on a ``loader(cfg_data, seed) -> DataBundle`` and a ``conf/data/<name>.yaml``.
"""

from __future__ import annotations

from analogtrain.config.errors import ConfigError
from analogtrain.data import images, synthetic  # noqa: F401  (register the loaders)
from analogtrain.data.base import (
    DATASETS,
    DataBundle,
    DataFileError,
    DataNotFoundError,
    Split,
    register_dataset,
)

__all__ = ["DATASETS", "DataBundle", "DataFileError", "DataNotFoundError", "Split", "build_data",
           "register_dataset"]


def build_data(cfg_data, seed: int) -> DataBundle:
    """Load ``cfg_data.name`` with splits drawn from ``seed`` (the run's ``seeds["data"]``)."""
    name = cfg_data.name
    if name not in DATASETS:
        raise ConfigError("data.name", f"'{name}' is unknown; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](cfg_data, seed)
