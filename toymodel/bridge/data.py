r"""Image classification data as tensors on one device (no DataLoader, no torchvision).

* ``"digits"`` (default): scikit-learn's 8x8 grayscale digits (1797 images, shipped inside
  scikit-learn, so it works offline); a fixed stratified 80/20 split (1437 train / 360 test,
  independent of the run's seed), pixels scaled by the train mean and std.
* ``"cifar10"`` / ``"cifar100"``: read from the python pickles of the official archives (the same
  files torchvision uses: ``<root>/cifar-10-batches-py/`` or ``<root>/cifar-100-python/``), never
  downloaded. ``root`` defaults to ``$TOYMODEL_DATA`` or ``~/.cache/toymodel/data``; a missing
  file raises ``FileNotFoundError`` naming the expected path. Normalised like the official code.
* ``"synthetic"``: Gaussian class clusters in 8x8 images, for tests (seeded, instant).
* ``"synthetic-cifar"``: the CIFAR-shaped stand-in (320 train / 160 test images, 3x32x32,
  10 classes, Gaussian class clusters, seeded): what CI runs the CIFAR presets on
  (`toymodel.bridge.presets`), since the CIFAR files are never downloaded.

``input_size`` resizes the images (bilinear) for nets that want a larger input.

Options on the training set (`DataOptions`, applied by `with_options` or `load_data`), both seeded
so that a run is reproducible:

* **augmentation** (`Augment`): per mini-batch, a random crop of the image zero-padded by 4
  pixels (padding with a black pixel, as torchvision's ``RandomCrop(32, padding=4)`` before
  normalisation) and a horizontal flip with probability 1/2, drawn from a CPU generator of its own
  (`Augment.generator`), so turning it on does not change the mini-batch order;
* **label corruption** (`corrupt_labels`): exactly $\mathrm{round}(pN)$ of the $N$ training
  labels, chosen by a generator seeded with ``corrupt_seed`` (the official constant 228 by
  default, independent of the run's seed: every run of a scan sees the same corrupted set), each
  replaced by a label drawn uniformly from the $K-1$ *wrong* classes; ``ImageData.corrupted``
  marks them. (The official code draws a Bernoulli($p$) mask and labels from all $K$ classes,
  so about $p/K$ of its "corrupted" labels are correct.)
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .._validate import bounded_int, choice, positive_int

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "synthetic-cifar")
#: ``(images, channels, side, classes)`` of each dataset (train + test), for size estimates made
#: before anything is loaded
SHAPES = {"digits": (1797, 1, 8, 10), "synthetic": (384, 1, 8, 4),
          "cifar10": (60000, 3, 32, 10), "cifar100": (60000, 3, 32, 100),
          "synthetic-cifar": (480, 3, 32, 10)}
#: the official code's seed for label corruption (``np.random.RandomState(seed=228)``)
CORRUPT_SEED = 228
#: offset of the augmentation generator's seed from the run's seed (`Augment.generator`); the
#: random level uses ``10_000 + seed``, the sharpness subset ``20_000 + seed``
AUGMENT_SEED_OFFSET = 30_000
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass
class ImageData:
    """Train/test tensors ``x`` (N, C, H, W) and integer labels ``y`` (N,).

    ``pixel_zero``: the normalised value of a black pixel, per channel (the fill of `Augment`'s
    padding); ``augment``: an `Augment` the training loop applies to each training mini-batch, or
    ``None``; ``corrupted``: a boolean mask over the training set marking the labels
    `corrupt_labels` replaced, or ``None``. Evaluation and the random level use the images as
    stored (no augmentation).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pixel_zero: tuple = (0.0,)
    augment: Augment | None = None
    corrupted: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def to(self, device=None, dtype=None) -> "ImageData":
        mask = None if self.corrupted is None else self.corrupted.to(device=device)
        return replace(self, x_train=self.x_train.to(device=device, dtype=dtype),
                       y_train=self.y_train.to(device=device),
                       x_test=self.x_test.to(device=device, dtype=dtype),
                       y_test=self.y_test.to(device=device), corrupted=mask)


# -- training-set options: augmentation and label corruption ------------------------------------
@dataclass(frozen=True)
class Augment:
    """Random crop of the ``pad``-padded image (padding filled with ``fill``, one value per
    channel or one for all) and, when ``flip``, a horizontal flip with probability 1/2.

    ``augment(x, gen)`` transforms a mini-batch ``x`` (B, C, H, W) on its own device; the offsets
    and flips are drawn from ``gen``, a CPU ``torch.Generator`` (`generator`), so a run's
    augmentation is the same on every device.
    """

    pad: int = 4
    flip: bool = True
    fill: tuple = (0.0,)

    @staticmethod
    def generator(seed: int) -> torch.Generator:
        """The augmentation generator of a run with ``seed`` (its own stream: enabling the
        augmentation leaves the mini-batch order unchanged)."""
        return torch.Generator().manual_seed(AUGMENT_SEED_OFFSET + int(seed))

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[..., p:p + h, p:p + w] = x
        di = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
        dj = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
        rows = (di[:, None] + torch.arange(h, device=x.device))[:, :, None]   # (B, H, 1)
        cols = (dj[:, None] + torch.arange(w, device=x.device))[:, None, :]   # (B, 1, W)
        out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # (B,H,W,C)
        out = out.permute(0, 3, 1, 2)
        if self.flip:
            mirror = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
            out = torch.where(mirror, out.flip(-1), out)
        return out.contiguous()


def corrupt_labels(data: ImageData, fraction: float, seed: int = CORRUPT_SEED) -> ImageData:
    r"""``data`` with $\mathrm{round}(pN)$ training labels ($p$ = ``fraction``) replaced by labels
    drawn uniformly from the other $K-1$ classes, chosen by a generator seeded with ``seed``;
    ``corrupted`` marks them. ``fraction=0`` returns ``data`` unchanged."""
    p = corrupt_fraction(fraction)
    if p == 0:
        return data
    seed = bounded_int("corrupt_seed", seed, 0, 2**63 - 1)
    k = data.num_classes
    if k < 2:
        raise ValueError(f"label corruption needs at least 2 classes, got {data.name} with {k}")
    y = data.y_train.cpu().numpy().copy()
    n = y.size
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)[:round(p * n)]
    y[idx] = (y[idx] + rng.integers(1, k, idx.size)) % k  # a shift in 1..K-1: never the true label
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    dev = data.y_train.device
    return replace(data, y_train=torch.as_tensor(y, device=dev),
                   corrupted=torch.as_tensor(mask, device=dev))


def corrupt_fraction(value) -> float:
    """``value`` as a fraction in [0, 1] (``ValueError`` naming it otherwise)."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if isinstance(value, bool) or not 0.0 <= p <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"corrupt must be a fraction in [0, 1], got {value!r}")
    return p


@dataclass(frozen=True)
class DataOptions:
    """What is done to the training set: ``augment`` (`Augment` with its defaults: crop with
    4-pixel padding + flip), ``corrupt`` (the fraction of labels `corrupt_labels` replaces) and
    ``corrupt_seed``; validated once, at construction."""

    augment: bool = False
    corrupt: float = 0.0
    corrupt_seed: int = CORRUPT_SEED

    def __post_init__(self):
        if not isinstance(self.augment, (bool, np.bool_)):
            raise ValueError(f"augment must be True or False, got {self.augment!r}")
        object.__setattr__(self, "augment", bool(self.augment))
        object.__setattr__(self, "corrupt", corrupt_fraction(self.corrupt))
        object.__setattr__(self, "corrupt_seed",
                           bounded_int("corrupt_seed", self.corrupt_seed, 0, 2**63 - 1))

    @property
    def is_default(self) -> bool:
        return not self.augment and self.corrupt == 0

    def record(self) -> dict:
        """The options as Dataset attributes / scan parameters (empty when all are off, so a
        run without them keeps its old layout)."""
        if self.is_default:
            return {}
        out = {"augment": int(self.augment), "corrupt": self.corrupt}
        if self.corrupt:
            out["corrupt_seed"] = self.corrupt_seed
        return out


def with_options(data: ImageData, options: DataOptions | None = None, **fields) -> ImageData:
    """``data`` with the training-set ``options`` (a `DataOptions`, or its fields as keywords)."""
    opts = DataOptions(**fields) if options is None else options
    if opts.corrupt:
        data = corrupt_labels(data, opts.corrupt, opts.corrupt_seed)
    if opts.augment:
        data = replace(data, augment=Augment(fill=tuple(data.pixel_zero)))
    return data


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
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte, 10, (float(-mean / std),)


def _synthetic(n_train=256, n_test=128, num_classes=4, size=8, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, channels, size, size))
    def draw(n):
        y = rng.integers(0, num_classes, n)
        return centers[y] + 1.0 * rng.standard_normal((n, channels, size, size)), y
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte, num_classes, (0.0,)


def _unpickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_layout(name: str):
    if name == "cifar10":
        return "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], \
            b"labels", 10
    return "cifar-100-python", ["train"], ["test"], b"fine_labels", 100


def check_files(name: str, root=None) -> None:
    """Raise ``FileNotFoundError`` naming the first missing file of ``name`` (CIFAR) under
    ``root`` (default `default_root`); nothing to check for the other data sets."""
    if choice("data", name, DATASETS) not in ("cifar10", "cifar100"):
        return
    root = default_root() if root is None else Path(root)
    folder, train_files, test_files, _, _ = _cifar_layout(name)
    base = Path(root) / folder
    for f in train_files + test_files:
        if not (base / f).is_file():
            raise FileNotFoundError(
                f"{name} not found: expected {base / f} (the python version of the official "
                f"archive, extracted under {Path(root)}; set --data-root or $TOYMODEL_DATA). "
                "toymodel never downloads data.")


def _cifar(name: str, root: Path):
    check_files(name, root)
    folder, train_files, test_files, key, k = _cifar_layout(name)
    base = Path(root) / folder

    def load(files):
        parts = [_unpickle(base / f) for f in files]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32) / 255.0
        y = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
        mean = np.asarray(_CIFAR_MEAN).reshape(1, 3, 1, 1)
        std = np.asarray(_CIFAR_STD).reshape(1, 3, 1, 1)
        return (x - mean) / std, y
    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    zero = tuple(-m / s for m, s in zip(_CIFAR_MEAN, _CIFAR_STD))
    return xtr, ytr, xte, yte, k, zero


def load_data(name: str = "digits", *, root=None, input_size: int | None = None,
              dtype=torch.float32, device="cpu", seed: int = 0, augment: bool = False,
              corrupt: float = 0.0, corrupt_seed: int = CORRUPT_SEED) -> ImageData:
    """Load ``name`` (module docstring) as tensors of ``dtype`` on ``device``.

    ``seed`` only affects ``"synthetic"`` and ``"synthetic-cifar"``; the digits split is fixed.
    ``augment``, ``corrupt``, ``corrupt_seed``: the training-set options (`DataOptions`).
    """
    choice("data", name, DATASETS)
    options = DataOptions(augment=augment, corrupt=corrupt, corrupt_seed=corrupt_seed)
    if input_size is not None:
        input_size = positive_int("input_size", input_size, 4)
    if name == "digits":
        arrays = _digits()
    elif name == "synthetic":
        arrays = _synthetic(seed=seed)
    elif name == "synthetic-cifar":
        arrays = _synthetic(n_train=320, n_test=160, num_classes=10, size=32, seed=seed,
                            channels=3)
    else:
        arrays = _cifar(name, default_root() if root is None else Path(root))
    xtr, ytr, xte, yte, k, zero = arrays
    to_x = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    xtr, xte = to_x(xtr), to_x(xte)
    if input_size is not None and input_size != xtr.shape[-1]:
        resize = lambda a: F.interpolate(a, size=(input_size, input_size), mode="bilinear",  # noqa: E731
                                         align_corners=False)
        xtr, xte = resize(xtr), resize(xte)
    data = ImageData(name, xtr, torch.as_tensor(ytr), xte, torch.as_tensor(yte), k, zero)
    return with_options(data.to(device=device, dtype=dtype), options)


def nbytes(name: str, *, input_size: int | None = None, itemsize: int = 4) -> int:
    """Peak host bytes `load_data` needs for ``name``: the float64 arrays (and their resized copy
    when ``input_size`` differs) plus the tensors of ``itemsize`` bytes per value."""
    n, c, side, _ = SHAPES[choice("data", name, DATASETS)]
    size = side if input_size is None else positive_int("input_size", input_size, 4)
    values = n * c * size * size
    return n * c * side * side * 8 + values * (8 if size != side else 0) + values * itemsize
