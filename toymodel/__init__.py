"""toymodel: training scale-invariant functions on the sphere with fixed effective learning rate.

Theory (``theory``), numerical solvers (``solvers``), the reference projected-GD simulator
(``dynamics``), regime classification (``regimes``); optional: fast batch scans, the torch bridge.
Notation and equation tags follow docs/theory.md.
"""
from . import census, conventional, dynamics, momentum, problems, regimes, sphere, theory, theory_wd
from ._version import __version__
from .conventional import classify_wd, detect_periodic, simulate_wd
from .dynamics import Trajectory, initial_state, initial_states
from .problems import RayleighToy, SphereToy
from .regimes import classify, classify_summary
from .scan import agreement, open_scan, scan  # toymodel.scan: the function (defined in _scan_run)
from .theory import (divergence_threshold, equilibrium_grad_norm, equilibrium_loss,
                     equilibrium_shares, group_thresholds, individual_constraint_thresholds,
                     individual_elr, predict_regime, random_loss, total_threshold,
                     two_cycle_angle)
from .simulation import simulate
from .theory_wd import wd_equilibrium_angle, wd_equilibrium_elr, wd_equilibrium_loss

__all__ = [
    "RayleighToy", "SphereToy", "Trajectory", "agreement", "classify", "classify_summary",
    "census", "classify_wd", "conventional", "momentum", "detect_periodic", "divergence_threshold", "dynamics", "equilibrium_grad_norm", "equilibrium_loss",
    "equilibrium_shares", "group_thresholds", "individual_constraint_thresholds",
    "individual_elr", "initial_state", "initial_states", "open_scan", "predict_regime", "problems",
    "random_loss", "regimes", "scan", "simulate", "simulate_wd", "sphere", "theory", "theory_wd",
    "total_threshold", "two_cycle_angle", "wd_equilibrium_angle", "wd_equilibrium_elr",
    "wd_equilibrium_loss", "__version__",
]
