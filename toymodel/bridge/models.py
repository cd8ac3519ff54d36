r"""Reference scale-invariant networks of the paper (docs/bridge.md), for any small image size.

* `ConvNetSI`: four blocks ``conv3x3 (bias-free) -> BatchNorm (no affine) -> ReLU`` with widths
  ``c, 2c, 4c, 8c`` (max-pooling after blocks 2-4), a global max-pool and a linear head. Every conv
  filter feeds a normalisation, so the loss is SI in each filter, each layer and all convs (T1).
* `ResNet18SI`: pre-activation ResNet-18 without affine normalisations, with a
  normalisation in every downsampling shortcut and a final one before the head. The residual
  stream of a stage (stem/shortcut conv + the ``conv2`` of each block) is one SI group.
* `ConvNetSIAf`, `ResNet18SIAf` (``"convnet-si-af"``, ``"resnet18-si-af"``): the same nets with
  affine BatchNorm (a trainable scale and shift per channel), like the official ``*SIAf``
  models. The convs stay SI (each still feeds a normalisation); the affine parameters are
  trainable and not SI, so these nets are meant for conventional training (``mode="full"``);
  on the sphere they take plain SGD steps beside the projected ones (`toymodel.bridge.training`).

The head is the only non-SI layer. As in the official code, its weight is drawn under a fixed seed
(`HEAD_SEED`, independent of the run's seed), rescaled to Frobenius norm ``head_norm`` (10)
and frozen (``requires_grad=False``): the loss is then SI in the trainable parameters, and the
head's norm sets the loss at random initialisation (the divergence level).

Global pooling is adaptive, so both nets accept any input size (8x8 digits, 32x32 CIFAR); on
32x32 inputs it equals the official fixed ``MaxPool2d(4)`` / ``AvgPool2d(4)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._validate import choice, positive_finite, positive_int

#: the official code draws the head under ``torch.manual_seed(228)``; we use the same constant
#: with a private generator so the global RNG stream is untouched.
HEAD_SEED = 228
HEAD_NORM = 10.0


def _frozen_head(in_features: int, num_classes: int, norm: float, bias: bool) -> nn.Linear:
    """Linear head drawn like ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) under
    `HEAD_SEED`, weight rescaled to Frobenius norm ``norm``, all parameters frozen."""
    norm = positive_finite("head_norm", norm)
    head = nn.Linear(in_features, num_classes, bias=bias)
    gen = torch.Generator().manual_seed(HEAD_SEED)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        w = torch.empty(num_classes, in_features).uniform_(-bound, bound, generator=gen)
        head.weight.copy_(w * (norm / w.norm()))
        if bias:
            head.bias.copy_(torch.empty(num_classes).uniform_(-bound, bound, generator=gen))
    head.requires_grad_(False)
    return head


def _block(cin: int, cout: int, pool: bool, affine: bool = False) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, affine=affine),
              nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


class ConvNetSI(nn.Module):
    """ConvNetSI (depth 3 of the paper): widths ``c, 2c, 4c, 8c``, bias-free convs, BN without
    affine (``affine=True``: with, the official ``ConvNetSIAf``), frozen linear head of norm
    ``head_norm``. ``width=32`` is the paper's network."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 3,
                 head_norm: float = HEAD_NORM, head_bias: bool = True, affine: bool = False):
        super().__init__()
        c = positive_int("width", width, 1)
        layers = _block(in_channels, c, pool=False, affine=affine)
        for cin, cout in ((c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c)):
            layers += _block(cin, cout, pool=True, affine=affine)
        self.conv_layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = _frozen_head(8 * c, num_classes, head_norm, head_bias)

    def forward(self, x):
        return self.linear(torch.flatten(self.pool(self.conv_layers(x)), 1))


class PreActBlockSI(nn.Module):
    """Pre-activation basic block; a normalisation in the shortcut when it downsamples."""

    def __init__(self, cin: int, cout: int, stride: int = 1, affine: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, affine=affine)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, affine=affine)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.BatchNorm2d(cin, affine=affine),
                                          nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class ResNet18SI(nn.Module):
    """Pre-activation ResNet-18 SI (widths ``c, 2c, 4c, 8c``; ``width=64`` is the standard net):
    BN without affine everywhere (``affine=True``: with, the official ``ResNet18SIAf``), BN in
    downsampling shortcuts, a final BN, frozen bias-free head."""

    def __init__(self, width: int = 64, num_classes: int = 10, in_channels: int = 3,
                 head_norm: float = HEAD_NORM, affine: bool = False):
        super().__init__()
        c = positive_int("width", width, 1)
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages, cin = [], c
        for i, (cout, stride) in enumerate(((c, 1), (2 * c, 2), (4 * c, 2), (8 * c, 2))):
            stages.append(nn.Sequential(PreActBlockSI(cin, cout, stride, affine),
                                        PreActBlockSI(cout, cout, affine=affine)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(8 * c, affine=affine)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = _frozen_head(8 * c, num_classes, head_norm, bias=False)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = self.pool(F.relu(self.bn(out)))
        return self.linear(torch.flatten(out, 1))


class ConvNetSIAf(ConvNetSI):
    """`ConvNetSI` with affine BatchNorm (trainable, not SI), the official ``ConvNetSIAf``."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 3,
                 head_norm: float = HEAD_NORM, head_bias: bool = True):
        super().__init__(width, num_classes, in_channels, head_norm, head_bias, affine=True)


class ResNet18SIAf(ResNet18SI):
    """`ResNet18SI` with affine BatchNorm (trainable, not SI), the official ``ResNet18SIAf``."""

    def __init__(self, width: int = 64, num_classes: int = 10, in_channels: int = 3,
                 head_norm: float = HEAD_NORM):
        super().__init__(width, num_classes, in_channels, head_norm, affine=True)


MODELS = {"convnet-si": ConvNetSI, "resnet18-si": ResNet18SI, "convnet-si-af": ConvNetSIAf,
          "resnet18-si-af": ResNet18SIAf}
#: BatchNorm channels per unit of width (``2x`` this many affine parameters per ``c``)
_BN_CHANNELS = {"convnet-si": 15, "resnet18-si": 68}


def build_model(name: str, *, width: int, num_classes: int, in_channels: int, seed: int = 0,
                dtype=torch.float32, device="cpu") -> nn.Module:
    """Build a reference model by name (``"convnet-si"``, ``"resnet18-si"``, their affine variants
    ``"convnet-si-af"``, ``"resnet18-si-af"``); the SI weights are drawn under
    ``torch.manual_seed(seed)`` (torch's default init; BN affine: scale 1, shift 0), the head under
    `HEAD_SEED`."""
    choice("model", name, MODELS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name](width=width, num_classes=num_classes, in_channels=in_channels)
    return model.to(device=device, dtype=dtype)


def param_count(name: str, *, width: int, num_classes: int, in_channels: int) -> int:
    r"""Number of parameters of model ``name`` (frozen head included), without building it.

    With $c$ = ``width``, $k$ = ``num_classes``, $i$ = ``in_channels`` (3x3 convs, 1x1 shortcuts):
    ConvNetSI: $9c(i + 2c + 8c + 32c) + (8c + 1)k$;
    ResNet18SI: $9ic + (36 + 128 + 512 + 2048)c^2 + 8ck$ (stages 1-4: two blocks each).
    The affine variants add a scale and a shift per BatchNorm channel: $2\cdot15c$ (ConvNetSI:
    $c+2c+4c+8c$ channels) and $2\cdot68c$ (ResNet18SI: $4c, 8c, 16c, 32c$ in stages 1-4 with
    the shortcut normalisations, $8c$ in the final one).
    """
    c, k, i = (positive_int(n, v, 1) for n, v in
               (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)))
    name = choice("model", name, MODELS)
    base = name.removesuffix("-af")
    affine = 2 * _BN_CHANNELS[base] * c if name != base else 0
    if base == "convnet-si":
        return 9 * c * (i + 42 * c) + (8 * c + 1) * k + affine
    return 9 * i * c + 2724 * c * c + 8 * c * k + affine


def activation_count(name: str, *, width: int, in_channels: int, size: int) -> int:
    """Values one sample's forward pass produces (every leaf module's output), at ``width``.

    Counted on a width-1 copy on torch's ``meta`` device (no memory, no arithmetic) and scaled by
    ``width``: every activation but the input and the logits has a multiple of ``width`` channels.
    """
    c = positive_int("width", width, 1)
    size = positive_int("size", size, 1)
    # eval mode: train-mode BatchNorm refuses one sample on a 1x1 map; the shapes are the same
    model = MODELS[choice("model", name, MODELS)](width=1, in_channels=in_channels).to("meta").eval()
    count = [0]

    def hook(module, inputs, output):
        count[0] += output.numel()

    for module in model.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(1, in_channels, size, size, device="meta"))
    return count[0] * c
