r"""The paper's network settings as presets: named defaults for `train_scan` and ``toymodel
train`` / ``train-scan --preset NAME``.

A preset fills only what the caller left unset (a keyword absent or ``None``, an option not
given on the command line): ``--preset paper-fig1 --width 8`` is the paper's setting with width
8. Every preset runs the project's fixed-ELR projected SGD (no momentum, no weight decay, frozen
head of norm 10, total constraint, T5).

| name | network | data | batch | augmentation | ELRs |
|---|---|---|---|---|---|
| ``paper-fig1`` | ConvNetSI, width 32 | CIFAR-10 | 128 | none | 1e-5, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 5e-2, 1e-1 |
| ``resnet18-si`` | ResNet-18 SI, width 64 | CIFAR-10 | 128 | none | the same grid |

``epochs`` is 1000 in both: long enough for the three regimes to settle on CIFAR-10; the
paper's exact training budget is not encoded here, so set ``--epochs`` to match a given figure.
The CIFAR files are read from local files only (`toymodel.bridge.data`); CI runs each preset
for one epoch on the CIFAR-shaped stand-in ``data="synthetic-cifar"``.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

#: the keywords a preset may set
KEYS = ("model", "width", "data", "batch_size", "epochs", "elrs", "augment", "corrupt")
#: the paper's Figure-1 ELR grid
PAPER_ELRS = (1e-5, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 5e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named set of defaults (``values``: keyword -> value, keywords from `KEYS`)."""

    name: str
    summary: str
    values: Mapping

    def __post_init__(self):
        unknown = sorted(set(self.values) - set(KEYS))
        if unknown:
            raise ValueError(f"preset {self.name!r} sets unknown keywords {unknown}; allowed: {KEYS}")
        object.__setattr__(self, "values", types.MappingProxyType(dict(self.values)))

    def fill(self, given: Mapping) -> dict:
        """``given`` with every preset keyword it leaves unset (absent or ``None``) taken from the
        preset; the caller's values win."""
        out = dict(given)
        for key, value in self.values.items():
            if out.get(key) is None:
                out[key] = value
        return out


PRESETS: dict[str, Preset] = {
    "paper-fig1": Preset(
        "paper-fig1", "the paper's Figure 1: ConvNetSI (width 32) on CIFAR-10, batch 128, "
        "no augmentation, 8 ELRs from 1e-5 to 0.1",
        {"model": "convnet-si", "width": 32, "data": "cifar10", "batch_size": 128,
         "epochs": 1000, "elrs": PAPER_ELRS, "augment": False, "corrupt": 0.0}),
    "resnet18-si": Preset(
        "resnet18-si", "ResNet-18 SI (width 64) on CIFAR-10, batch 128, no augmentation, the "
        "Figure-1 ELR grid",
        {"model": "resnet18-si", "width": 64, "data": "cifar10", "batch_size": 128,
         "epochs": 1000, "elrs": PAPER_ELRS, "augment": False, "corrupt": 0.0}),
}


def get_preset(name) -> Preset:
    """The preset called ``name`` (``ValueError`` naming it and the known names otherwise)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    return PRESETS[name]


def apply_preset(name, given: Mapping) -> dict:
    """``given`` filled from preset ``name`` (`Preset.fill`); ``name=None`` returns a copy."""
    return dict(given) if name is None else get_preset(name).fill(given)
