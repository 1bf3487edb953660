"""In-memory data sets, seeded splits and batching shared by every data set of the registry.

All supported data sets fit in memory, so a split is two tensors and batching is indexing: no
DataLoader workers, no hidden RNG. The shuffling permutation of epoch ``e`` is drawn from a generator
seeded with ``(seeds["data"], e)``, so a run resumed at an epoch boundary sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from analogtrain.config.errors import ConfigError

# name -> loader(cfg_data, seed) -> DataBundle
DATASETS: dict[str, Callable] = {}


def register_dataset(name: str):
    """Decorator: make ``loader(cfg, seed) -> DataBundle`` available as ``data=<name>``."""

    def deco(fn):
        DATASETS[name] = fn
        return fn

    return deco


class DataNotFoundError(ConfigError):
    """A data set's files are missing; the message lists the expected files and how to get them."""


class DataFileError(ConfigError):
    """A data set's file is there but cannot be read (truncated download, wrong format); the message names
    the file, what is wrong with it and how to replace it."""


@dataclass
class Split:
    """One split. ``x``: raw samples (N, C, H, W) or (N, F), any dtype (uint8 images are kept as bytes);
    ``y``: (N,) int64 class labels or (N, n_out) float32 regression targets.

    ``batch(idx)`` returns float32 model inputs: ``(x / scale - mean) / std`` per channel, zero-padded
    to ``pad_to`` if set, then resized (bilinear, antialiased) to ``resize`` x ``resize`` if set.
    """

    x: torch.Tensor
    y: torch.Tensor
    scale: float = 1.0
    mean: torch.Tensor | None = None  # (C,) per-channel (images) or scalar
    std: torch.Tensor | None = None
    pad_to: int = 0
    resize: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx], self.scale, self.mean, self.std, self.pad_to, self.resize)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.scale != 1.0:
            x = x / self.scale
        if self.mean is not None:
            shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
            x = (x - self.mean.view(shape)) / self.std.view(shape)
        if self.pad_to and x.dim() == 4 and x.shape[-1] < self.pad_to:
            ph, pw = self.pad_to - x.shape[-2], self.pad_to - x.shape[-1]
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        if self.resize and x.dim() == 4 and tuple(x.shape[-2:]) != (self.resize, self.resize):
            # e.g. 32x32 CIFAR images up to 224x224 for a Swin with the standard ImageNet geometry
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                              antialias=True)
        return x


@dataclass
class DataBundle:
    """What the trainer and model builder need to know about a data set.

    input_shape: per-sample model input shape, (C, H, W) for images or (F,) for vectors.
    num_outputs: classes (classification) or target dimension (regression).
    task: "classification" (cross-entropy, accuracy) or "regression" (MSE).
    extra: data-set specific facts, e.g. the synthetic teacher ``teacher_weight`` (n_out, n_in).
    source: where the samples came from, for the run's record: the folder the files were read from (the
        one that won of data.root's layout and the system copies), or what made them (``scikit-learn``,
        ``generated``).
    """

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_outputs: int
    task: str = "classification"
    class_names: list[str] | None = None
    extra: dict = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 512
    augment: bool = False
    source: str = ""

    def steps_per_epoch(self) -> int:
        return (len(self.train) + self.batch_size - 1) // self.batch_size

    def train_batches(self, epoch: int, device: torch.device | str = "cpu") -> Iterator[tuple]:
        """Shuffled mini-batches ``(x (B, *input_shape), y)`` of epoch ``epoch`` (0-based); the last
        batch may be smaller. Deterministic in (seed, epoch)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(len(self.train), generator=g)
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start:start + self.batch_size]
            x = self.train.prepare(self.train.x[idx])
            if self.augment and x.dim() == 4:
                x = augment_batch(x, g)
            yield x.to(device), self.train.y[idx].to(device)

    def eval_batches(self, split: str, device: torch.device | str = "cpu") -> Iterator[tuple]:
        """Batches of ``split`` ("val" or "test") in storage order."""
        s = getattr(self, split)
        for start in range(0, len(s), self.eval_batch_size):
            sl = slice(start, start + self.eval_batch_size)
            yield s.prepare(s.x[sl]).to(device), s.y[sl].to(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffling/augmentation generator (a 63-bit mix of the data seed)."""
    return (seed * 1_000_003 + 7919 * (epoch + 1)) & 0x7FFFFFFFFFFFFFFF


def augment_batch(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip per sample; x: (B, C, H, W)."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(b):  # B small, crops differ per sample
        crop = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def split_train_val(train: Split, val_fraction: float, gen: torch.Generator) -> tuple[Split, Split]:
    """Seeded hold-out: a random ``val_fraction`` of ``train`` becomes the validation split."""
    perm = torch.randperm(len(train), generator=gen)
    n_val = int(round(val_fraction * len(train)))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def select_classes(x: torch.Tensor, y: torch.Tensor, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples whose label is in ``keep`` and relabel them 0..len(keep)-1 in ``keep``'s order."""
    lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    new = lut[y]
    mask = new >= 0
    return x[mask], new[mask]


def resolve_classes(classes, names: list[str], key: str = "data.classes") -> list[int] | None:
    """``data.classes`` (indices or names) -> list of class indices, validated."""
    if classes is None:
        return None
    out = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ConfigError(key, f"unknown class name '{c}'; choose from {', '.join(names)}")
            out.append(names.index(c))
        else:
            i = int(c)
            if not 0 <= i < len(names):
                raise ConfigError(key, f"class index {i} is out of range: allowed 0 <= index < {len(names)}")
            out.append(i)
    if len(set(out)) != len(out) or len(out) < 2:
        raise ConfigError(key, "needs at least 2 distinct classes")
    return out


def finalize(name: str, cfg, seed: int, train: Split, test: Split, *, class_names=None,
             task="classification", num_outputs=None, extra=None, scale_stats=True, source="") -> DataBundle:
    """Shared tail of every loader: class subset, val hold-out, limits, normalisation statistics.

    ``train``/``test`` come in raw (official split); ``seed`` is ``seeds["data"]``.
    """
    gen = torch.Generator().manual_seed(seed)
    if task == "classification" and class_names is not None:
        keep = resolve_classes(cfg.classes, class_names)
        if keep is not None:
            train = Split(*select_classes(train.x, train.y, keep), train.scale)
            test = Split(*select_classes(test.x, test.y, keep), test.scale)
            class_names = [class_names[i] for i in keep]
    elif cfg.get("classes") is not None:
        raise ConfigError("data.classes", f"not supported for data={name} (regression); set it to null")

    # the val hold-out must not depend on limit_train, so it is split off first
    train, val = split_train_val(train, cfg.val_fraction, gen)
    if cfg.limit_train:
        train = train.subset(torch.randperm(len(train), generator=gen)[: cfg.limit_train])
    if cfg.limit_test:
        test = test.subset(torch.randperm(len(test), generator=gen)[: cfg.limit_test])
        val = val.subset(torch.arange(min(cfg.limit_test, len(val))))

    mean = std = None
    if cfg.normalize and scale_stats:
        x = train.x.float() / train.scale
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims).clamp_min(1e-6)
        if x.dim() == 2:  # feature vectors: one global statistic keeps the features' relative scales
            mean, std = x.mean().reshape(1), x.std().clamp_min(1e-6).reshape(1)
    pad_to = int(cfg.pad_to)
    resize = int(cfg.get("resize", 0) or 0)
    for s in (train, val, test):
        s.mean, s.std, s.pad_to, s.resize = mean, std, pad_to, resize

    shape = tuple(train.x.shape[1:])
    if pad_to and len(shape) != 3:
        raise ConfigError("data.pad_to", f"only applies to image data sets; data={name} has vector samples: "
                          "allowed 0")
    if pad_to and len(shape) == 3:
        if pad_to < shape[-1]:
            raise ConfigError("data.pad_to", f"{pad_to} is smaller than the images ({shape[-1]} px): allowed 0 "
                              f"or >= {shape[-1]}")
        shape = (shape[0], pad_to, pad_to)
    if resize and len(shape) == 3:
        shape = (shape[0], resize, resize)
    elif resize:
        raise ConfigError("data.resize", f"only applies to image data sets; data={name} has vector samples: "
                          "allowed 0")
    if num_outputs is None:
        num_outputs = len(class_names) if class_names is not None else int(train.y.max()) + 1
    return DataBundle(name=name, train=train, val=val, test=test, input_shape=shape, num_outputs=num_outputs,
                      task=task, class_names=class_names, extra=extra or {}, seed=seed,
                      batch_size=int(cfg.batch_size), eval_batch_size=int(cfg.eval_batch_size),
                      augment=bool(cfg.augment), source=str(source))
