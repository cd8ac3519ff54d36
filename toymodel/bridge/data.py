"""Image classification data as tensors on one device (no DataLoader, no torchvision).

* ``"digits"`` (default): scikit-learn's 8x8 grayscale digits (1797 images, shipped inside
  scikit-learn, so it works offline); a fixed stratified 80/20 split (1437 train / 360 test,
  independent of the run's seed), pixels scaled by the train mean and std.
* ``"cifar10"`` / ``"cifar100"``: read from the python pickles of the official archives (the same
  files torchvision uses: ``<root>/cifar-10-batches-py/`` or ``<root>/cifar-100-python/``), never
  downloaded. ``root`` defaults to ``$TOYMODEL_DATA`` or ``~/.cache/toymodel/data``; a missing
  file raises ``FileNotFoundError`` naming the expected path. Normalised like the official code.
* ``"synthetic"``: Gaussian class clusters in 8x8 images, for tests (seeded, instant).

``input_size`` resizes the images (bilinear) for nets that want a larger input.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .._validate import choice, positive_int

DATASETS = ("digits", "synthetic", "cifar10", "cifar100")
#: ``(images, channels, side, classes)`` of each dataset (train + test), for size estimates made
#: before anything is loaded
SHAPES = {"digits": (1797, 1, 8, 10), "synthetic": (384, 1, 8, 4),
          "cifar10": (60000, 3, 32, 10), "cifar100": (60000, 3, 32, 100)}
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass
class ImageData:
    """Train/test tensors ``x`` (N, C, H, W) and integer labels ``y`` (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def to(self, device=None, dtype=None) -> "ImageData":
        return ImageData(self.name, self.x_train.to(device=device, dtype=dtype),
                         self.y_train.to(device=device), self.x_test.to(device=device, dtype=dtype),
                         self.y_test.to(device=device), self.num_classes)


def default_root() -> Path:
    return Path(os.environ.get("TOYMODEL_DATA", Path.home() / ".cache" / "toymodel" / "data"))


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None]
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte, 10


def _synthetic(n_train=256, n_test=128, num_classes=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, 1, size, size))
    def draw(n):
        y = rng.integers(0, num_classes, n)
        return centers[y] + 1.0 * rng.standard_normal((n, 1, size, size)), y
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte, num_classes


def _unpickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(name: str, root: Path):
    if name == "cifar10":
        folder, train_files, test_files, key, k = "cifar-10-batches-py", \
            [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10
    else:
        folder, train_files, test_files, key, k = "cifar-100-python", ["train"], ["test"], \
            b"fine_labels", 100
    base = Path(root) / folder
    for f in train_files + test_files:
        if not (base / f).is_file():
            raise FileNotFoundError(
                f"{name} not found: expected {base / f} (the python version of the official "
                f"archive, extracted under {Path(root)}; set --data-root or $TOYMODEL_DATA). "
                "toymodel never downloads data.")

    def load(files):
        parts = [_unpickle(base / f) for f in files]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32) / 255.0
        y = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
        mean = np.asarray(_CIFAR_MEAN).reshape(1, 3, 1, 1)
        std = np.asarray(_CIFAR_STD).reshape(1, 3, 1, 1)
        return (x - mean) / std, y
    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    return xtr, ytr, xte, yte, k


def load_data(name: str = "digits", *, root=None, input_size: int | None = None,
              dtype=torch.float32, device="cpu", seed: int = 0) -> ImageData:
    """Load ``name`` (module docstring) as tensors of ``dtype`` on ``device``.

    ``seed`` only affects ``"synthetic"``; the digits split is fixed.
    """
    choice("data", name, DATASETS)
    if input_size is not None:
        input_size = positive_int("input_size", input_size, 4)
    if name == "digits":
        arrays = _digits()
    elif name == "synthetic":
        arrays = _synthetic(seed=seed)
    else:
        arrays = _cifar(name, default_root() if root is None else Path(root))
    xtr, ytr, xte, yte, k = arrays
    to_x = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    xtr, xte = to_x(xtr), to_x(xte)
    if input_size is not None and input_size != xtr.shape[-1]:
        resize = lambda a: F.interpolate(a, size=(input_size, input_size), mode="bilinear",  # noqa: E731
                                         align_corners=False)
        xtr, xte = resize(xtr), resize(xte)
    data = ImageData(name, xtr, torch.as_tensor(ytr), xte, torch.as_tensor(yte), k)
    return data.to(device=device, dtype=dtype)


def nbytes(name: str, *, input_size: int | None = None, itemsize: int = 4) -> int:
    """Peak host bytes `load_data` needs for ``name``: the float64 arrays (and their resized copy
    when ``input_size`` differs) plus the tensors of ``itemsize`` bytes per value."""
    n, c, side, _ = SHAPES[choice("data", name, DATASETS)]
    size = side if input_size is None else positive_int("input_size", input_size, 4)
    values = n * c * size * size
    return n * c * side * side * 8 + values * (8 if size != side else 0) + values * itemsize
