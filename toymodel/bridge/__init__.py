"""The thin torch bridge: fixed-ELR training of real scale-invariant networks on the sphere.

Imported explicitly (``import toymodel.bridge``); ``import toymodel`` never imports torch.

* `si_groups`, `verify_scale_invariance`: SI parameter groups found structurally (T1);
* `SphereSGD`: projected SGD with fixed ELR, the official code's semantics (T5-T7), delegating
  the rescale to a constraint object (`TotalSphere`, `GroupSpheres`, `FilterSpheres`);
* `ConvNetSI`, `ResNet18SI`: the paper's reference networks;
* `load_data`: digits (default, offline), CIFAR-10/100 from local files, synthetic;
* `train`, `run`: training with online metrics -> xarray Dataset (fixed ELR on the sphere, or
  ``mode="full"``: SGD + weight decay in the full space; checkpoints, resume, ``init_from``);
  `RunSpec`: what one run does, validated once;
* `train_scan`: ELR x seed scans, resumable, on a Dask cluster with ``client=``
  (docs/network_scan.md); `PRESETS`: the paper's settings; `finetune_scan`: pre-train per ELR,
  fine-tune at one small ELR (docs/network_full.md);
* `SphereAdam`: Adam at a fixed ELR on the sphere (one second moment per unit, first moment
  transported to the projected point; docs/sphere_optimizers.md);
* `SGDMRT`, `AdamSRT`, `AdamS`: SGD-momentum and Adam with rescaled and transported moments
  (Roburin et al.; docs/sphere_optimizers.md);
* `hessian_trace`, `hessian_top_eigenvalues`, `ggn_trace`, `gradient_statistics`: curvature and
  gradient statistics (docs/sharpness.md).

User guide: docs/bridge.md.
"""
from .constraints import Constraint, FilterSpheres, GroupSpheres, TotalSphere
from .data import ImageData, load_data
from .gradstats import gradient_statistics
from .groups import SIGroup, si_groups, verify_scale_invariance
from .models import ConvNetSI, ConvNetSIAf, ResNet18SI, ResNet18SIAf, build_model
from .optim import SphereSGD
from .sharpness import ggn_trace, hessian_top_eigenvalues, hessian_trace
from .sphere_adam import SphereAdam
from .sphere_optim import SGDMRT, AdamS, AdamSRT
from .finetune import finetune_scan
from .netscan import train_scan
from .presets import PRESETS
from .training import RunSpec, evaluate, parse_elrs, prepare, run, train

__all__ = ["AdamS", "AdamSRT", "build_model", "Constraint", "ConvNetSI", "ConvNetSIAf",
           "evaluate", "FilterSpheres", "finetune_scan", "ggn_trace", "gradient_statistics",
           "GroupSpheres", "hessian_top_eigenvalues", "hessian_trace", "ImageData", "load_data",
           "parse_elrs", "prepare", "PRESETS", "ResNet18SI", "ResNet18SIAf", "run", "RunSpec",
           "SGDMRT", "si_groups", "SIGroup", "SphereAdam", "SphereSGD", "TotalSphere", "train",
           "train_scan", "verify_scale_invariance"]
