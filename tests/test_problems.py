"""SI toy problems: scale invariance (T1) and closed-form gradients (Taylor remainder)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from reference import toy_grad_fd, toy_loss
from toymodel.problems import RayleighToy, SphereToy

U = 2.0**-53  # float64 unit roundoff; tolerances below are derived from it (docs/numerics.md)
finite = st.floats(-10, 10, allow_nan=False).filter(lambda x: abs(x) > 1e-3)


def toy_case(n_max=5, d_max=5):
    return st.tuples(st.integers(1, n_max), st.integers(2, d_max), st.integers(0, 2**32 - 1))


def make_toy(n, d, seed):
    rng = np.random.default_rng(seed)
    alphas = np.exp(rng.uniform(np.log(0.1), np.log(10), n))
    return SphereToy(alphas, dim=d), rng.standard_normal((n, d))


def make_rayleigh(m, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((m, m))
    return RayleighToy(B + B.T), rng.standard_normal((1, m))


def taylor_remainders(problem, theta, v, eps=(1e-3, 1e-4, 1e-5)):
    # small eps: at 1e-2 the second- and third-order terms can cancel (a hypothesis find)
    F0 = problem.loss(theta)
    slope = np.sum(problem.grad(theta) * v)
    return [abs(problem.loss(theta + e * v) - F0 - e * slope) for e in eps]


def second_order(r, floor):
    """Some eps step shrinks the remainder ~100x (second order; a wrong gradient leaves O(eps): 10x).

    Any one step, not every one: the second- and third-order terms also cancel near some smaller
    eps when the curvature along v is small (0.07% of draws at 1e-3 -> 1e-4, a ratio up to 0.35;
    never at two steps at once in 40000 draws). ``floor`` is the rounding of the remainder.
    """
    return any(b <= 0.02 * a + floor for a, b in zip(r, r[1:]))


@given(toy_case(), st.floats(1e-3, 1e3))
def test_toy_scale_invariance_T1(case, c):
    p, theta = make_toy(*case)
    # ~6 roundings per group loss, c*theta one more per entry; p^2 is summed directly (no 1 - cos^2
    # cancellation), so <= 8 u F relative (observed 4.5e-16 = 4 u); rtol 1e-12 leaves 1000x
    assert np.isclose(p.loss(c * theta), p.loss(theta), rtol=1e-12, atol=1e-15)
    # ~10 roundings per entry, relative (observed <= 12.7 u = 1.4e-15); rtol 1e-10 leaves 7e4x
    assert np.allclose(p.grad(c * theta), p.grad(theta) / c, rtol=1e-10, atol=1e-15)
    # the gradient is orthogonal to every group: the dot product cancels terms of size
    # 2 alpha_i x^2 p^2 / r^3 <= alpha_i: |.| <= 2 d u alpha_i <= 2.2e-14 (observed <= 2 u alpha_i)
    assert np.allclose(np.sum(p.grad(theta) * theta, axis=-1), 0, rtol=0, atol=1e-12)


@given(toy_case(), st.integers(0, 2**32 - 1))
def test_toy_gradient_taylor_remainder_is_second_order(case, vseed):
    p, theta = make_toy(*case)
    v = np.random.default_rng(vseed).standard_normal(theta.shape)
    # a correct gradient leaves an O(eps^2) remainder: shrinking eps 10x shrinks it ~100x.
    # floor: F and F(theta + eps v) to ~10 u sum(alpha) each, and rounding theta + eps v moves F
    # by <= sqrt(d) u sum(alpha) -> 32 u sum(alpha) (<= 1.8e-13 for alpha <= 10, n <= 5)
    assert second_order(taylor_remainders(p, theta, v), 32 * U * p.alphas.sum())


@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_rayleigh_gradient_and_invariance(m, seed, vseed):
    p, x = make_rayleigh(m, seed)
    v = np.random.default_rng(vseed).standard_normal(x.shape)
    # x^T B x / x^T x rounds like gamma_{m+2} |x|^T |B| |x| / |x|^2 <= (m + 2) u sqrt(m) |lambda|max
    # per evaluation (Higham), i.e. <= 13 of this scale for two evaluations (observed <= 3.3)
    scale = m * U * np.abs(p.eigenvalues).max()
    # the remainder's rounding floor: 32 scale (2.5x the bound; 0 false failures in 40000 draws)
    assert second_order(taylor_remainders(p, x, v), 32 * scale)
    # 256 scale: 20x the bound, ~80x the worst observed; a wrong result is off by O(|lambda|)
    assert np.isclose(p.loss(3.7 * x), p.loss(x), rtol=0, atol=256 * scale)
    assert np.isclose(np.sum(p.grad(x) * x), 0, rtol=0, atol=256 * scale)
    assert p.loss(x) >= -256 * scale  # B = A - lambda_min I is PSD up to rounding
    # eigh's vector and lambda_min each carry ~m u |lambda|max (observed <= 3.1 scale)
    assert np.isclose(p.loss(p.minimizer()), 0, rtol=0, atol=256 * scale)


def test_toy_matches_the_plain_loop_oracle():
    p, theta = make_toy(3, 4, 7)
    # two operation orders over 3 groups x ~10 flops: <= 30 u ~ 3e-15 relative (observed: equal)
    assert np.isclose(p.loss(theta), toy_loss(theta.tolist(), p.alphas), rtol=1e-12, atol=0)
    # central differences, h = 1e-6: truncation h^2 |F^(3)|/6 plus rounding ~4 u |F| / (2h) with
    # |F| <= sum(alpha) = 11.6 -> ~3e-9 absolute (observed 4.9e-10); atol 1e-8 + rtol 1e-6 |g|
    assert np.allclose(p.grad(theta), toy_grad_fd(theta.tolist(), p.alphas), rtol=1e-6, atol=1e-8)


def test_toy_batched_evaluation_equals_one_by_one():
    p, _ = make_toy(3, 3, 1)
    batch = np.random.default_rng(2).standard_normal((4, 5, 3, 3))
    each = np.array([[p.loss(b) for b in row] for row in batch])
    # the same elementwise operations per cell, but einsum over a batch may take another SIMD loop:
    # not pinned, ~6 roundings per group -> <= 10 u ~ 1.1e-15 relative (observed: equal)
    assert np.allclose(p.loss(batch), each, rtol=1e-14, atol=0)
    assert p.grad(batch).shape == batch.shape


def test_alphas_and_random_level():
    p = SphereToy([1, 2, 4])
    assert p.random_loss() == 3.5
    assert p.loss(p.minimizer()) == 0
    # the mean of F over a great circle through e1 is sum(alpha)/2
    phi = np.linspace(0, 2 * np.pi, 10001)[:-1]
    circle = np.stack([np.cos(phi), np.sin(phi)], -1)[:, None, :].repeat(3, axis=1)
    # the equispaced mean of sin^2 has no discretisation error: 10000 pairwise-summed terms and
    # cos/sin to 1-4 ulp (libm or SVML) -> ~10 u relative (observed: exactly 3.5); rtol 1e-13
    assert np.isclose(p.loss(circle).mean(), 3.5, rtol=1e-13, atol=0)
    r = RayleighToy(np.diag([1.0, 2.0, 5.0]))
    # eigvalsh of a diagonal matrix: eigenvalues to ~m u |A| ~ 2e-15 (observed exact)
    assert np.allclose(r.alphas, [4.0], rtol=0, atol=1e-13)
    assert np.allclose(r.gaps, [0, 1, 4], rtol=0, atol=1e-13)
    assert np.isclose(r.random_loss(), 8 / 3 - 1, rtol=0, atol=1e-13)


@pytest.mark.parametrize("call, match", [
    (lambda: SphereToy([1, 0]), "alphas"),
    (lambda: SphereToy([1, np.nan]), "alphas"),
    (lambda: SphereToy([1], dim=1), "dim"),
    (lambda: SphereToy([[1, 2]]), "dimension"),
    (lambda: RayleighToy(np.ones((2, 3))), "square"),
    (lambda: RayleighToy([[1, 2], [0, 1]]), "symmetric"),
    (lambda: RayleighToy(np.eye(3)), "multiple of the identity"),
    (lambda: SphereToy([1, 2]).check_theta(np.zeros((2, 2))), "zero-norm"),
    (lambda: SphereToy([1, 2]).check_theta(np.ones((3, 2))), "shape"),
    (lambda: SphereToy([1, 2]).check_theta(np.full((2, 2), np.nan)), "finite"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
