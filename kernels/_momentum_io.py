"""Host side of the momentum / Adam kernels: the constants and the result dict (NumPy or CuPy).

`constants` turns the options of ``toy_momentum`` into the kernel's scalars, rounded to the dtype
exactly where the specification (``toymodel._momentum_batch.summarize_momentum_batch``) rounds
them; `result` names the kernel's outputs as the spec does. Shared by `numba_cpu`, `numba_cuda`
and `cupy_gpu`; compiled nowhere.
"""
from __future__ import annotations

import numpy as np

#: the spec's ``SUMMARY_NAMES`` then its ``EXTRA_SUMMARY_NAMES``: the rows of the kernels' ``out``
#: (kernels never import toymodel; tests/test_kernels_momentum.py checks they are the spec's).
OUT_NAMES = ("tail_loss", "tail_loss_std", "final_loss", "min_share", "frac_above_threshold",
             "tail_grad_norm", "tail_angle", "lyapunov", "tail_radial", "final_stability",
             "hit_step")
#: the spec's default ``hit_loss`` (``toymodel._momentum_checks.CONVERGED_LOSS``, tested equal).
HIT_LOSS = 1e-10
MODES = ("official", "transport")
OPTIMIZERS = ("heavy_ball", "adam")


def constants(dt, momentum_mode, optimizer, beta2, eps, hit_loss):
    """``(transport, adam, b2, 1 - b2, beta2, eps, hit_loss)`` for the kernels.

    The spec multiplies dtype arrays by the Python floats $\\beta_2$ and $1-\\beta_2$ (formed in
    float64, then rounded to the dtype: NumPy's weak scalars), forms the bias correction
    $1-\\beta_2^t$ in float64 (kept so here, the kernels round it per step) and compares the loss
    with ``hit_loss`` rounded to the dtype."""
    if momentum_mode not in MODES:
        raise ValueError(f"momentum_mode must be one of {MODES}, got {momentum_mode!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    dt = np.dtype(dt).type
    beta2 = float(beta2)
    return (momentum_mode == "transport", optimizer == "adam", dt(beta2), dt(1.0 - beta2), beta2,
            dt(eps), dt(hit_loss))


def result(out, status, bad_step, theta, buf, v, adam):
    """The spec's dict: ``OUT_NAMES`` rows of ``out``, ``status``, ``bad_step``, ``theta_final``
    and ``buffer_final`` (heavy ball) or ``m_final``, ``v_final`` (Adam)."""
    res = {nm: out[j] for j, nm in enumerate(OUT_NAMES)}
    res.update(status=status, bad_step=bad_step, theta_final=theta)
    if adam:
        res.update(m_final=buf, v_final=v)
    else:
        res["buffer_final"] = buf
    return res
