"""toymodel: training scale-invariant functions on the sphere with fixed effective learning rate.

Theory (``theory``), numerical solvers (``solvers``), the reference projected-GD simulator
(``dynamics``), regime classification (``regimes``); optional: fast batch scans, the torch bridge.
Notation and equation tags follow docs/theory.md.
"""
import sys as _sys

try:
    from . import (census, conventional, dynamics, momentum, problems, regimes, sphere, theory,
                   theory_wd)
    from ._version import __version__
    from .conventional import classify_wd, detect_periodic, simulate_wd
    from .dynamics import Trajectory, initial_state, initial_states
    from .problems import RayleighToy, SphereToy
    from .regimes import classify, classify_summary
    from .scan import agreement, decode_regime, open_scan, regime_reason
    from .scan import scan  # toymodel.scan: the function (defined in _scan_run)
    from .theory import (divergence_threshold, equilibrium_grad_norm, equilibrium_loss,
                         equilibrium_shares, group_thresholds, individual_constraint_thresholds,
                         individual_elr, predict_regime, random_loss, total_threshold,
                         two_cycle_angle)
    from .simulation import simulate
    from .theory_wd import wd_equilibrium_angle, wd_equilibrium_elr, wd_equilibrium_loss
except KeyboardInterrupt:
    # Ctrl-C while the `toymodel` command is still importing (before cli.main can catch it): the
    # same one line and exit code 130 as cli.main, not a traceback; a library import re-raises
    _cmd = _sys.orig_argv[_sys.orig_argv.index("-m") + 1:][:1] if "-m" in _sys.orig_argv else []
    if _sys.argv[:1] and (_sys.argv[0].rsplit("/", 1)[-1] == "toymodel" or _cmd == ["toymodel"]):
        print("toymodel: interrupted", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__all__ = [
    "RayleighToy", "SphereToy", "Trajectory", "agreement", "census", "classify",
    "classify_summary", "classify_wd", "conventional", "decode_regime", "detect_periodic",
    "divergence_threshold", "dynamics", "equilibrium_grad_norm", "equilibrium_loss",
    "equilibrium_shares", "group_thresholds", "individual_constraint_thresholds",
    "individual_elr", "initial_state", "initial_states", "momentum", "open_scan",
    "predict_regime", "problems", "random_loss", "regime_reason", "regimes", "scan", "simulate",
    "simulate_wd", "sphere", "theory", "theory_wd", "total_threshold", "two_cycle_angle",
    "wd_equilibrium_angle", "wd_equilibrium_elr", "wd_equilibrium_loss", "__version__",
]
