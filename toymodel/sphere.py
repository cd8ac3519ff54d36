r"""Geometry on the sphere.

Notation (docs/theory.md §1–3). A state is an array ``theta`` of shape ``(..., n, d)``: ``n`` scale-
invariant groups $\theta_i\in\mathbb{R}^d$, any leading batch axes. The *total* norm is
$\|\theta\| = (\sum_i\|\theta_i\|^2)^{1/2}$; the *shares* are
$s_i = \|\theta_i\|^2/\|\theta\|^2$ (T7). Every function here broadcasts over the leading
axes and is pure.
"""
from __future__ import annotations

import numpy as np


def group_sq_norms(theta: np.ndarray) -> np.ndarray:
    r"""Squared group norms $\|\theta_i\|^2$, shape ``(..., n)``."""
    return np.einsum("...ij,...ij->...i", theta, theta)


def total_norm(theta: np.ndarray) -> np.ndarray:
    r"""Total norm $\|\theta\| = (\sum_i \|\theta_i\|^2)^{1/2}$, shape ``(...)``."""
    return np.sqrt(group_sq_norms(theta).sum(axis=-1))


def shares(theta: np.ndarray) -> np.ndarray:
    r"""Shares $s_i = \|\theta_i\|^2/\sum_j\|\theta_j\|^2$ (T7); they sum to one."""
    sq = group_sq_norms(theta)
    return sq / sq.sum(axis=-1, keepdims=True)


def project_total(theta: np.ndarray, radius) -> np.ndarray:
    r"""Project onto the total sphere $\sum_i\|\theta_i\|^2=\rho^2$: $\rho\,\theta/\|\theta\|$ (T5).

    ``radius`` broadcasts against the batch axes.
    """
    r = np.asarray(radius, dtype=theta.dtype)
    return theta * (r / total_norm(theta))[..., None, None]


def project_individual(theta: np.ndarray, radii) -> np.ndarray:
    r"""Project every group onto its own sphere $\|\theta_i\| = r_i$ (individual constraint, §3).

    ``radii`` has shape ``(..., n)`` (or broadcasts to it).
    """
    r = np.asarray(radii, dtype=theta.dtype)
    return theta * (r / np.sqrt(group_sq_norms(theta)))[..., None]


def tangent_project(theta: np.ndarray, v: np.ndarray) -> np.ndarray:
    r"""Per-group projection onto the tangent space: $v_i - \langle v_i,\theta_i\rangle\theta_i/\|\theta_i\|^2$."""
    coef = np.einsum("...ij,...ij->...i", v, theta) / group_sq_norms(theta)
    return v - coef[..., None] * theta


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Angle between the whole vectors ``a`` and ``b`` (over the last two axes), in radians.

    Computed as $2\arcsin(\|\hat a-\hat b\|/2)$ with unit vectors $\hat a,\hat b$: unlike
    $\arccos\langle\hat a,\hat b\rangle$ it keeps full relative precision for tiny angles,
    which is what a converging run produces.
    """
    ua = a / total_norm(a)[..., None, None]
    ub = b / total_norm(b)[..., None, None]
    chord = total_norm(ua - ub)
    return 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))
