"""toymodel: training scale-invariant functions on the sphere with fixed effective learning rate.

Theory (``theory``), numerical solvers (``solvers``), the reference projected-GD simulator
(``dynamics``), regime classification (``regimes``); optional: fast batch scans, the torch bridge.
Notation and equation tags follow docs/theory.md.
"""
from . import dynamics, problems, regimes, sphere, theory
from .dynamics import Trajectory, initial_state, initial_states, simulate
from .problems import RayleighToy, SphereToy
from .regimes import classify, classify_summary
from .scan import agreement, open_scan, scan  # the function shadows the module: toymodel.scan(...)
from .theory import (divergence_threshold, equilibrium_grad_norm, equilibrium_loss,
                     equilibrium_shares, group_thresholds, individual_constraint_thresholds,
                     individual_elr, predict_regime, random_loss, total_threshold,
                     two_cycle_angle)

__version__ = "0.1.0"

__all__ = [
    "RayleighToy", "SphereToy", "Trajectory", "agreement", "classify", "classify_summary",
    "divergence_threshold", "dynamics", "equilibrium_grad_norm", "equilibrium_loss",
    "equilibrium_shares", "group_thresholds", "individual_constraint_thresholds",
    "individual_elr", "initial_state", "initial_states", "open_scan", "predict_regime", "problems",
    "random_loss", "regimes", "scan", "simulate", "sphere", "theory", "total_threshold",
    "two_cycle_angle", "__version__",
]
