"""Image classification data sets: digits (bundled), Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100.

Files are read directly (IDX for the MNIST family, the pickled batches for CIFAR) from the torchvision
folder layout under ``data.root``, so torchvision is only needed to *download* (``data.download=true``).
Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist`` installs it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from analogtrain.data.base import (DataBundle, DataFileError, DataNotFoundError, Split, finalize,
                                   register_dataset)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


# how to replace an unreadable data file (appended to DataFileError messages)
_REPLACE = "delete it and download it again (data.download=true) or copy an intact one"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian magic ``0x0000 <dtype> <ndim>``, ndim uint32
    sizes, then the data. Returns a uint8 array of shape (N,) or (N, rows, cols). Raises
    ``DataFileError`` (key ``data.root``, naming the file) for an unreadable, truncated or foreign file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a gzip cut short: EOFError; a damaged one: BadGzipFile
        raise DataFileError("data.root", f"cannot read {path}: {type(e).__name__}: {e}; {_REPLACE}") from e
    if len(data) < 4:
        raise DataFileError("data.root", f"{path} is truncated ({len(data)} bytes, no IDX header); "
                            f"{_REPLACE}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataFileError("data.root", f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()}); "
                            f"{_REPLACE}")
    if len(data) < 4 + 4 * ndim:
        raise DataFileError("data.root", f"{path} is truncated (its header needs {4 + 4 * ndim} bytes); "
                            f"{_REPLACE}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataFileError("data.root", f"{path} is truncated ({arr.size} bytes of data for shape {dims}); "
                            f"{_REPLACE}")
    return arr.reshape(dims)


def _find_idx(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        for cand in (folder / stem, folder / f"{stem}.gz"):
            if cand.is_file():
                found[key] = cand
                break
        else:
            return None
    return found


def _root(cfg) -> Path:
    return Path(cfg.root).expanduser().resolve()


def _missing(name: str, places: list[Path], files: list[str], how: str) -> DataNotFoundError:
    where = " or ".join(str(p) for p in places)
    return DataNotFoundError(
        "data.root", f"data set '{name}' not found: expected {', '.join(files)} in {where}; {how}")


def _load_idx_dataset(name: str, cfg, seed: int, tv_folder: str, tv_class: str, class_names,
                      extra_places=()) -> DataBundle:
    root = _root(cfg)
    # files the user put under data.root win; system-wide copies (Debian's package) are the fallback
    places = [root / tv_folder / "raw", *extra_places]
    files = None
    for p in places:
        files = _find_idx(p)
        if files:
            break
    if files is None and cfg.download:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(str(root), train=True, download=True)
        getattr(tvd, tv_class)(str(root), train=False, download=True)
        files = _find_idx(root / tv_folder / "raw")
    if files is None:
        how = (f"set data.root to the folder holding {tv_folder}/raw/, or data.download=true to fetch it "
               f"with torchvision (needs internet)")
        if extra_places:
            how += ", or on Debian/Ubuntu: apt-get install dataset-fashion-mnist"
        raise _missing(name, places, [f"{s}[.gz]" for s in IDX_FILES.values()], how)
    arr = {k: torch.from_numpy(read_idx(v).copy()) for k, v in files.items()}
    train = Split(arr["train_x"].unsqueeze(1), arr["train_y"].long(), scale=255.0)
    test = Split(arr["test_x"].unsqueeze(1), arr["test_y"].long(), scale=255.0)
    return finalize(name, cfg, seed, train, test, class_names=class_names, source=files["train_x"].parent)


@register_dataset("fashion_mnist")
def load_fashion_mnist(cfg, seed: int):
    """Fashion-MNIST: 60k train / 10k test 28x28 grey images, 10 classes (Xiao et al. 2017)."""
    return _load_idx_dataset("fashion_mnist", cfg, seed, "FashionMNIST", "FashionMNIST", FASHION_CLASSES,
                             extra_places=(DEBIAN_FASHION_MNIST,))


@register_dataset("mnist")
def load_mnist(cfg, seed: int):
    """MNIST: 60k train / 10k test 28x28 grey images of digits."""
    return _load_idx_dataset("mnist", cfg, seed, "MNIST", "MNIST", [str(i) for i in range(10)])


@register_dataset("digits")
def load_digits(cfg, seed: int):
    """scikit-learn's bundled 8x8 digits (1797 samples, pixel values 0..16); the test split is a seeded
    ``test_fraction`` hold-out (the set has no official split)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(cfg.test_fraction * len(y)))
    train = Split(x[perm[n_test:]], y[perm[n_test:]], scale=16.0)
    test = Split(x[perm[:n_test]], y[perm[:n_test]], scale=16.0)
    return finalize("digits", cfg, seed, train, test, class_names=[str(i) for i in range(10)],
                    source="scikit-learn (sklearn.datasets.load_digits)")


def _unpickle(path: Path, keys=()) -> dict:
    """A CIFAR batch file (a latin-1 pickle of a dict holding ``keys``). Raises ``DataFileError`` naming
    the file for an unreadable, truncated or foreign one."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError) as e:
        raise DataFileError("data.root", f"cannot read {path}: {type(e).__name__}: {e}; {_REPLACE}") from e
    missing = [k for k in keys if not (isinstance(d, dict) and k in d)]
    if missing:
        raise DataFileError("data.root", f"{path} is not a CIFAR batch file (no {', '.join(missing)}); "
                            f"{_REPLACE}")
    return d


def _load_cifar(name: str, cfg, seed: int, folder: str, train_files, test_file, label_key, meta_file,
                names_key, tv_class: str):
    root = _root(cfg)
    base = root / folder
    needed = [*train_files, test_file, meta_file]
    if not all((base / f).is_file() for f in needed) and cfg.download:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(str(root), train=True, download=True)
    if not all((base / f).is_file() for f in needed):
        raise _missing(name, [base], needed,
                       f"extract the python version of {name} (e.g. {folder}.tar.gz) into {root}, set "
                       f"data.root, or data.download=true to fetch it with torchvision (needs internet)")

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f, ("data", label_key))
            try:
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[label_key], dtype=np.int64))
            except (ValueError, TypeError) as e:
                raise DataFileError("data.root", f"{base / f}: its arrays are not 3×32×32 images and labels "
                                    f"({e}); {_REPLACE}") from e
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    names = list(_unpickle(base / meta_file, (names_key,))[names_key])
    train = Split(*read(train_files), scale=255.0)
    test = Split(*read([test_file]), scale=255.0)
    return finalize(name, cfg, seed, train, test, class_names=names, source=base)


@register_dataset("cifar10")
def load_cifar10(cfg, seed: int):
    """CIFAR-10: 50k/10k 3x32x32 images, 10 classes (torchvision ``cifar-10-batches-py`` layout)."""
    return _load_cifar("cifar10", cfg, seed, CIFAR10_DIR, [f"data_batch_{i}" for i in range(1, 6)],
                       "test_batch", "labels", "batches.meta", "label_names", "CIFAR10")


@register_dataset("cifar100")
def load_cifar100(cfg, seed: int):
    """CIFAR-100: 50k/10k 3x32x32 images, 100 fine classes (``cifar-100-python`` layout); class subsets
    with ``data.classes``."""
    return _load_cifar("cifar100", cfg, seed, CIFAR100_DIR, ["train"], "test", "fine_labels", "meta",
                       "fine_label_names", "CIFAR100")
