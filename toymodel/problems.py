r"""Scale-invariant toy problems (docs/theory.md §4).

A problem maps a state ``theta`` of shape ``(..., n, d)`` (``n`` groups in $\mathbb{R}^d$,
any leading batch axes) to its loss, shape ``(...)``, and closed-form Euclidean gradient, shape
``(..., n, d)``. Both are scale-invariant group by group (T1): ``loss(c*theta) == loss(theta)`` and
``grad(c*theta) == grad(theta)/c``, and the gradient is orthogonal to each group.

Every problem exposes its curvatures ``alphas`` ($\alpha_i$, half the largest eigenvalue of
the Riemannian Hessian of group ``i`` at the minimum), so the thresholds of ``theory.py`` apply.
"""
from __future__ import annotations

import numpy as np

from ._validate import alphas_array, positive_int


def toy_group_losses(theta: np.ndarray, alphas) -> np.ndarray:
    r"""Per-group toy losses $\alpha_i p_i^2/r_i^2$, ``alphas`` broadcasting to ``(..., n)``."""
    perp = np.einsum("...ij,...ij->...i", theta[..., 1:], theta[..., 1:])
    sq = perp + theta[..., 0] * theta[..., 0]
    return np.asarray(alphas, dtype=theta.dtype) * (perp / sq)


def toy_grad(theta: np.ndarray, alphas) -> np.ndarray:
    r"""Toy gradient (see `SphereToy`), ``alphas`` broadcasting to ``(..., n)``."""
    x = theta[..., 0]
    perp = np.einsum("...ij,...ij->...i", theta[..., 1:], theta[..., 1:])
    sq = perp + x * x
    coef = 2.0 * np.asarray(alphas, dtype=theta.dtype) / (sq * sq)
    g = np.empty_like(theta)
    g[..., 0] = -coef * x * perp
    g[..., 1:] = (coef * x * x)[..., None] * theta[..., 1:]
    return g


class _Problem:
    """Shared behaviour: shape checks and provenance."""

    kind: str = "problem"
    alphas: np.ndarray
    n_groups: int
    dim: int

    def check_theta(self, theta, name: str = "theta") -> np.ndarray:
        """Validate a state: shape ``(..., n, d)``, finite, no zero-norm group."""
        arr = np.asarray(theta)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        if arr.ndim < 2 or arr.shape[-2:] != (self.n_groups, self.dim):
            raise ValueError(
                f"{name} must have shape (..., {self.n_groups}, {self.dim}) "
                f"(groups x dim), got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got NaN or inf entries")
        if np.any(np.einsum("...ij,...ij->...i", arr, arr) == 0):
            raise ValueError(f"{name} has a zero-norm group; every group needs norm > 0")
        return arr

    def random_loss(self) -> float:
        """The loss level of a direction scrambled at random (the divergence plateau)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Parameters for provenance (saved with every result)."""
        return {"problem": self.kind, "n_groups": self.n_groups, "dim": self.dim,
                "alphas": self.alphas.tolist()}


class SphereToy(_Problem):
    r"""The canonical toy: $F(\theta) = \sum_i \alpha_i \|P_\perp\theta_i\|^2/\|\theta_i\|^2 = \sum_i\alpha_i\sin^2\varphi_i$.

    Each group $\theta_i\in\mathbb{R}^d$ has the minimiser direction $e_1$ (the first
    coordinate; any other choice is a rotation of each group and changes nothing) and curvature
    $\alpha_i$. The Riemannian Hessian at the minimum is $2\alpha_i$, so a single group
    converges under fixed ELR iff $\tilde\eta\alpha_i<1$ (T11).

    Gradient of group ``i`` with $r^2=\|\theta_i\|^2$, $x=\theta_{i,1}$,
    $p^2 = r^2-x^2$:
    $\partial_1 = -2\alpha_i x p^2/r^4$, $\partial_k = 2\alpha_i x^2\theta_{i,k}/r^4$ (k ≥ 2).
    The loss is computed from $p^2$ directly (no ``1 - cos^2`` cancellation), so losses down to
    1e-300 keep their relative precision.
    """

    kind = "sphere_toy"

    def __init__(self, alphas, dim: int = 2):
        self.alphas = alphas_array(alphas)
        self.n_groups = int(self.alphas.size)
        self.dim = positive_int("dim", dim, minimum=2)

    def group_losses(self, theta: np.ndarray) -> np.ndarray:
        r"""Per-group losses $\alpha_i\sin^2\varphi_i$, shape ``(..., n)``."""
        return toy_group_losses(theta, self.alphas)

    def loss(self, theta: np.ndarray) -> np.ndarray:
        r"""$F(\theta)=\sum_i\alpha_i\sin^2\varphi_i$, shape ``(...)``."""
        return self.group_losses(theta).sum(axis=-1)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        r"""Closed-form Euclidean gradient $\nabla F(\theta)$, shape ``(..., n, d)``."""
        return toy_grad(theta, self.alphas)

    def minimizer(self) -> np.ndarray:
        """A unit-norm minimiser per group (``e_1``), shape ``(n, d)``."""
        m = np.zeros((self.n_groups, self.dim))
        m[:, 0] = 1.0
        return m

    def random_loss(self) -> float:
        r"""$\sum_i\alpha_i/2$: the mean of F on the great circle through $e_1$ that the
        dynamics of each group never leave (the gradient lies in span(θᵢ, e₁)). Equals the mean over
        the whole sphere for d = 2 (T12, divergence)."""
        return float(self.alphas.sum() / 2.0)

    def __repr__(self) -> str:
        return f"SphereToy(alphas={self.alphas.tolist()}, dim={self.dim})"


class RayleighToy(_Problem):
    r"""SI Rayleigh quotient, one group: $F(x) = x^\top A x/\|x\|^2 - \lambda_{\min}(A)$.

    The constant shift makes the minimum value 0 (as for `SphereToy`) and changes no
    gradient. With eigenvalues $\lambda_1\le\dots\le\lambda_m$ the minimiser is the lowest
    eigenvector, the Riemannian Hessian there has eigenvalues $2(\lambda_j-\lambda_1)$, so
    $\alpha = \lambda_m-\lambda_1$ (the largest gap, ``alphas``) and ``gaps`` holds every
    $\lambda_j-\lambda_1$. Gradient: $\nabla F(x) = 2(Ax - (x^\top Ax/\|x\|^2)x)/\|x\|^2$.
    ``theta`` has shape ``(..., 1, m)``.
    """

    kind = "rayleigh"

    def __init__(self, A):
        A = np.asarray(A, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 2:
            raise ValueError(f"A must be a square matrix of size >= 2, got shape {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError("A must be finite, got NaN or inf entries")
        if not np.allclose(A, A.T, rtol=1e-12, atol=1e-12 * np.abs(A).max()):
            raise ValueError("A must be symmetric")
        self.A = 0.5 * (A + A.T)
        eig = np.linalg.eigvalsh(self.A)
        if eig[-1] - eig[0] <= 0:
            raise ValueError("A must not be a multiple of the identity (its largest gap is 0)")
        self.eigenvalues = eig
        self.lambda_min = float(eig[0])
        self.gaps = eig - eig[0]
        self.alphas = np.array([eig[-1] - eig[0]])
        self.n_groups = 1
        self.dim = int(A.shape[0])

    def loss(self, theta: np.ndarray) -> np.ndarray:
        r"""$x^\top(A-\lambda_1 I)x/\|x\|^2$, shape ``(...)``; the shifted form keeps small
        losses accurate."""
        x = theta[..., 0, :]
        B = (self.A - self.lambda_min * np.eye(self.dim)).astype(theta.dtype)
        return np.einsum("...i,ij,...j->...", x, B, x) / np.einsum("...i,...i->...", x, x)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        r"""$2(Ax - F_A(x)x)/\|x\|^2$ with $F_A$ the unshifted quotient, shape ``(..., 1, m)``."""
        x = theta[..., 0, :]
        A = self.A.astype(theta.dtype)
        Ax = x @ A
        sq = np.einsum("...i,...i->...", x, x)
        q = np.einsum("...i,...i->...", x, Ax) / sq
        return (2.0 * (Ax - q[..., None] * x) / sq[..., None])[..., None, :]

    def group_losses(self, theta: np.ndarray) -> np.ndarray:
        """The loss as a single group, shape ``(..., 1)``."""
        return self.loss(theta)[..., None]

    def minimizer(self) -> np.ndarray:
        """The lowest eigenvector, shape ``(1, m)``."""
        return np.linalg.eigh(self.A)[1][:, 0][None, :]

    def random_loss(self) -> float:
        r"""$\operatorname{tr}(A)/m-\lambda_1$: the mean of F over the sphere."""
        return float(self.eigenvalues.mean() - self.lambda_min)

    def describe(self) -> dict:
        d = super().describe()
        d["eigenvalues"] = self.eigenvalues.tolist()
        return d

    def __repr__(self) -> str:
        return f"RayleighToy(dim={self.dim}, alpha={self.alphas[0]:.6g})"


def as_problem(problem_or_alphas, dim: int = 2):
    """A problem as given, or a `SphereToy` built from a sequence of curvatures."""
    if isinstance(problem_or_alphas, _Problem):
        return problem_or_alphas
    return SphereToy(problem_or_alphas, dim=dim)
