"""Data sets: seeded disjoint splits, deterministic batching, file readers (IDX, CIFAR pickles) on real-format
files written here, class subsets, padding, missing-data errors, and the synthetic optimum."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from analogtrain.config.errors import ConfigError
from analogtrain.config.schema import DataConfig, SyntheticDataConfig
from analogtrain.data import DATASETS, DataFileError, DataNotFoundError, build_data
from analogtrain.data.images import IDX_FILES, read_idx


def dcfg(**kw):
    base = SyntheticDataConfig if kw.get("name") == "synthetic" else DataConfig
    return OmegaConf.merge(OmegaConf.structured(base), kw)


def _rows(split):
    return [tuple(r.tolist()) + (int(y),) for r, y in zip(split.x.reshape(len(split), -1), split.y)]


def test_registry_has_all_documented_datasets():
    assert {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic"} <= set(DATASETS)


def test_digits_splits_are_disjoint_complete_and_seeded():
    from sklearn.datasets import load_digits

    d = load_digits()
    b = build_data(dcfg(name="digits", val_fraction=0.1, test_fraction=0.2), seed=11)
    n = len(d.target)
    assert len(b.test) == round(0.2 * n) and len(b.val) == round(0.1 * (n - len(b.test)))
    assert len(b.train) + len(b.val) + len(b.test) == n
    # together the splits are exactly the data set (as a multiset of (pixels, label) rows)
    full = Counter(tuple(r.tolist()) + (int(y),) for r, y in zip(d.images.reshape(n, -1), d.target))
    assert Counter(_rows(b.train) + _rows(b.val) + _rows(b.test)) == full
    assert b.input_shape == (1, 8, 8) and b.num_outputs == 10 and b.task == "classification"
    same = build_data(dcfg(name="digits"), seed=11)
    other = build_data(dcfg(name="digits"), seed=12)
    assert torch.equal(same.test.x, b.test.x) and torch.equal(same.train.y, b.train.y)
    assert not torch.equal(other.test.y, b.test.y)


def test_batches_cover_each_sample_once_and_depend_only_on_seed_and_epoch():
    b = build_data(dcfg(name="digits", batch_size=64, limit_train=300), seed=3)
    ep0 = list(b.train_batches(0))
    assert sum(len(y) for _, y in ep0) == len(b.train) == 300
    assert [len(y) for _, y in ep0][-1] == 300 - 64 * 4  # last batch is partial
    xs = torch.cat([x for x, _ in ep0])
    assert xs.shape == (300, 1, 8, 8) and xs.dtype == torch.float32
    # same multiset of samples as the split, in a shuffled order
    ref = b.train.prepare(b.train.x)
    assert Counter(map(tuple, xs.reshape(300, -1).tolist())) == Counter(map(tuple, ref.reshape(300, -1).tolist()))
    again = list(b.train_batches(0))
    assert all(torch.equal(a[0], c[0]) for a, c in zip(ep0, again))
    ep1 = torch.cat([y for _, y in b.train_batches(1)])
    assert not torch.equal(ep1, torch.cat([y for _, y in ep0]))


def test_normalisation_uses_training_statistics():
    b = build_data(dcfg(name="digits"), seed=0)
    x = b.train.prepare(b.train.x)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    raw = build_data(dcfg(name="digits", normalize=False), seed=0)
    xr = raw.train.prepare(raw.train.x)
    assert float(xr.min()) == 0.0 and float(xr.max()) == 1.0  # 0..16 scaled to [0, 1]


def test_limits():
    b = build_data(dcfg(name="digits", limit_train=100, limit_test=50), seed=0)
    assert (len(b.train), len(b.test), len(b.val)) == (100, 50, 50)


# ------------------------------------------------------------------------- IDX (MNIST family)

def _write_idx(path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(folder, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": np.arange(n_test) % 10}
    for key, stem in IDX_FILES.items():
        _write_idx(folder / (stem + (".gz" if gz else "")), arrays[key], gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    p = tmp_path / ("a.gz" if gz else "a")
    _write_idx(p, arr, gz)
    assert np.array_equal(read_idx(p), arr)


def test_fashion_mnist_from_torchvision_layout_with_padding_and_classes(tmp_path):
    arrays = _fake_mnist(tmp_path / "FashionMNIST" / "raw")
    b = build_data(dcfg(name="fashion_mnist", root=str(tmp_path), val_fraction=0.0, normalize=False), seed=0)
    assert b.input_shape == (1, 28, 28) and len(b.train) == 60 and len(b.test) == 20
    assert b.source == str(tmp_path / "FashionMNIST" / "raw")  # the folder the run records it read
    # test split is the official one, in file order; pixels scaled by 1/255
    assert torch.equal(b.test.y, torch.from_numpy(arrays["test_y"]).long())
    assert torch.allclose(b.test.prepare(b.test.x[:1])[0, 0], torch.from_numpy(arrays["test_x"][0]).float() / 255)
    padded = build_data(dcfg(name="fashion_mnist", root=str(tmp_path), pad_to=32), seed=0)
    x, _ = next(padded.train_batches(0))
    assert padded.input_shape == (1, 32, 32) and x.shape[1:] == (1, 32, 32)
    sub = build_data(dcfg(name="fashion_mnist", root=str(tmp_path), classes=["Bag", 0]), seed=0)
    assert sub.num_outputs == 2 and sub.class_names == ["Bag", "T-shirt/top"]
    assert len(sub.test) == 4 and set(sub.test.y.tolist()) == {0, 1}  # labels 8 -> 0 and 0 -> 1
    assert (sub.test.y == 0).sum() == (torch.from_numpy(arrays["test_y"]) == 8).sum()


def test_fashion_mnist_falls_back_to_the_debian_copy(tmp_path, monkeypatch):
    """No files under data.root: the Debian package's folder is used (here a fake one in its layout)."""
    import gzip

    import analogtrain.data.images as images

    src = tmp_path / "src"
    arrays = _fake_mnist(src)
    debian = tmp_path / "debian"
    debian.mkdir()
    for f in src.iterdir():  # Debian ships the IDX files gzipped
        data = f.read_bytes() if f.suffix != ".gz" else gzip.decompress(f.read_bytes())
        (debian / (f.name if f.suffix == ".gz" else f.name + ".gz")).write_bytes(gzip.compress(data))
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", debian)
    b = build_data(dcfg(name="fashion_mnist", root=str(tmp_path / "empty"), val_fraction=0.0, normalize=False),
                   seed=0)
    assert len(b.train) == 60 and torch.equal(b.test.y, torch.from_numpy(arrays["test_y"]).long())
    assert b.source == str(debian)  # the run's record says which copy it read, not the empty data.root


def test_mnist_uncompressed_files(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    assert len(build_data(dcfg(name="mnist", root=str(tmp_path), val_fraction=0.5), seed=0).val) == 30


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_dataset_error_names_files_and_remedy(tmp_path, name, monkeypatch):
    import analogtrain.data.images as images

    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DataNotFoundError) as ei:
        build_data(dcfg(name=name, root=str(tmp_path / "empty")), seed=0)
    msg = str(ei.value)
    assert ei.value.key == "data.root" and isinstance(ei.value, ConfigError)
    assert str(tmp_path / "empty") in msg and "data.download=true" in msg
    expected = {"mnist": "t10k-images-idx3-ubyte", "fashion_mnist": "apt-get install dataset-fashion-mnist",
                "cifar10": "data_batch_1", "cifar100": "cifar-100-python"}[name]
    assert expected in msg


@pytest.mark.parametrize("damage", ["empty", "cut_gzip", "short_data", "foreign"])
def test_unreadable_idx_file_is_a_one_line_error_naming_the_file(tmp_path, damage):
    """A data file that exists but cannot be read (an interrupted download, another format) stops the run
    with a ConfigError on data.root naming the file and how to replace it, not a traceback."""
    folder = tmp_path / "MNIST" / "raw"
    _fake_mnist(folder, gz=damage == "cut_gzip")
    bad = next(folder.glob("train-images*"))
    raw = bad.read_bytes()
    bad.write_bytes({"empty": b"", "cut_gzip": raw[: len(raw) // 2], "short_data": raw[:-100],
                     "foreign": b"PK\x03\x04" + raw[4:]}[damage])
    with pytest.raises(DataFileError) as ei:
        build_data(dcfg(name="mnist", root=str(tmp_path)), seed=0)
    assert isinstance(ei.value, ConfigError) and ei.value.key == "data.root"
    assert str(bad) in str(ei.value) and "download it again" in str(ei.value)


# ------------------------------------------------------------------------- CIFAR pickles

def _fake_cifar(base, files, label_key, n, n_classes, meta_file, names_key):
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for f in files:
        d = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), label_key: list(np.arange(n) % n_classes)}
        pickle.dump(d, open(base / f, "wb"))
    pickle.dump({names_key: [f"c{i}" for i in range(n_classes)]}, open(base / meta_file, "wb"))


def test_cifar10_reader(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _fake_cifar(tmp_path / "cifar-10-batches-py", files, "labels", 20, 10, "batches.meta", "label_names")
    b = build_data(dcfg(name="cifar10", root=str(tmp_path), val_fraction=0.1), seed=0)
    assert b.input_shape == (3, 32, 32) and len(b.train) + len(b.val) == 100 and len(b.test) == 20
    assert b.source == str(tmp_path / "cifar-10-batches-py")
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))
    assert torch.equal(b.test.x[3], torch.from_numpy(raw["data"][3].reshape(3, 32, 32)))  # CHW, no transpose
    aug = build_data(dcfg(name="cifar10", root=str(tmp_path), augment=True, batch_size=16), seed=0)
    plain = build_data(dcfg(name="cifar10", root=str(tmp_path), batch_size=16), seed=0)
    xa, ya = next(aug.train_batches(0))
    xp, yp = next(plain.train_batches(0))
    assert xa.shape == (16, 3, 32, 32) and torch.equal(ya, yp)  # same samples, transformed
    assert not torch.equal(xa, xp) and torch.equal(xa, next(aug.train_batches(0))[0])  # seeded


@pytest.mark.parametrize("damage", ["cut", "not_a_batch"])
def test_unreadable_cifar_batch_is_a_one_line_error_naming_the_file(tmp_path, damage):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    base = tmp_path / "cifar-10-batches-py"
    _fake_cifar(base, files, "labels", 20, 10, "batches.meta", "label_names")
    bad = base / "data_batch_3"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3] if damage == "cut" else pickle.dumps([1, 2, 3]))
    with pytest.raises(DataFileError) as ei:
        build_data(dcfg(name="cifar10", root=str(tmp_path)), seed=0)
    assert ei.value.key == "data.root" and str(bad) in str(ei.value)


def test_cifar100_class_subset_is_relabelled(tmp_path):
    _fake_cifar(tmp_path / "cifar-100-python", ["train", "test"], "fine_labels", 400, 100, "meta", "fine_label_names")
    b = build_data(dcfg(name="cifar100", root=str(tmp_path), classes=[5, 7, 9]), seed=0)
    assert b.num_outputs == 3 and b.class_names == ["c5", "c7", "c9"]
    assert len(b.test) == 12 and sorted(Counter(b.test.y.tolist()).values()) == [4, 4, 4]
    with pytest.raises(ConfigError, match=r"data.classes: class index 100 is out of range"):
        build_data(dcfg(name="cifar100", root=str(tmp_path), classes=[1, 100]), seed=0)


# ------------------------------------------------------------------------- synthetic

def test_synthetic_optimum_and_noise_free_test_targets():
    b = build_data(dcfg(name="synthetic", n_in=8, n_out=3, n_train=400, n_test=4000, noise_std=0.1), seed=5)
    w_star, w_ls = b.extra["teacher_weight"], b.extra["optimum_weight"]
    assert w_star.shape == (3, 8) and b.task == "regression" and b.num_outputs == 3 and b.input_shape == (8,)
    # test targets are exactly W* x
    assert torch.allclose(b.test.y.double(), b.test.x.double() @ w_star.T, atol=1e-5)
    # least squares on the training split: residual orthogonal to the inputs, near W* (noise 0.1, n=400)
    xt, yt = b.train.x.double(), b.train.y.double()
    assert torch.allclose(xt.T @ (xt @ w_ls.T - yt), torch.zeros(8, 3, dtype=torch.float64), atol=1e-8)
    assert float((w_ls - w_star).norm() / w_star.norm()) < 0.05
    assert b.extra["optimum_train_loss"] == pytest.approx(float(((xt @ w_ls.T - yt) ** 2).mean()))
    assert b.extra["noise_floor"] == pytest.approx(0.01)
    # white inputs: the test MSE of W = 0 estimates ||W*||_F^2 / n_out
    mse0 = float((b.test.y.double() ** 2).mean())
    assert mse0 == pytest.approx(float(w_star.pow(2).sum()) / 3, rel=0.08)


def test_synthetic_is_seeded():
    a = build_data(dcfg(name="synthetic"), seed=1)
    b = build_data(dcfg(name="synthetic"), seed=1)
    c = build_data(dcfg(name="synthetic"), seed=2)
    assert torch.equal(a.extra["teacher_weight"], b.extra["teacher_weight"])
    assert not torch.equal(a.extra["teacher_weight"], c.extra["teacher_weight"])
