"""Where the installed package keeps its configs and kernel sources.

``conf/`` and ``csrc/`` sit at the repository top level and are installed as the packages
``analogtrain.conf`` and ``analogtrain.csrc`` (see setup.py), so both editable and wheel installs resolve
them through the import system; a plain source checkout on ``sys.path`` falls back to the repo layout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parents[1]


def _package_dir(name: str, fallback: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if Path(loc).is_dir():
                return Path(loc)
    return _PKG_DIR.parent / fallback


def conf_dir() -> Path:
    """Directory of ``train.yaml`` and the config groups."""
    return _package_dir("analogtrain.conf", "conf")


def csrc_dir() -> Path:
    """Directory of the C++/CUDA kernel sources (compiled at run time by ``analogtrain.ops``)."""
    return _package_dir("analogtrain.csrc", "csrc")
