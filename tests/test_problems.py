"""SI toy problems: scale invariance (T1) and closed-form gradients (Taylor remainder)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from reference import toy_grad_fd, toy_loss
from toymodel.problems import RayleighToy, SphereToy

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


def taylor_remainders(problem, theta, v, eps=(1e-3, 1e-4)):
    # small eps: at 1e-2 the second- and third-order terms can cancel (a hypothesis find)
    F0 = problem.loss(theta)
    slope = np.sum(problem.grad(theta) * v)
    return [abs(problem.loss(theta + e * v) - F0 - e * slope) for e in eps]


@given(toy_case(), st.floats(1e-3, 1e3))
def test_toy_scale_invariance_T1(case, c):
    p, theta = make_toy(*case)
    assert np.isclose(p.loss(c * theta), p.loss(theta), rtol=1e-12, atol=1e-15)
    assert np.allclose(p.grad(c * theta), p.grad(theta) / c, rtol=1e-10, atol=1e-15)
    # the gradient is orthogonal to every group
    assert np.allclose(np.sum(p.grad(theta) * theta, axis=-1), 0, atol=1e-12)


@given(toy_case(), st.integers(0, 2**32 - 1))
def test_toy_gradient_taylor_remainder_is_second_order(case, vseed):
    p, theta = make_toy(*case)
    v = np.random.default_rng(vseed).standard_normal(theta.shape)
    r1, r2 = taylor_remainders(p, theta, v)
    # a correct gradient leaves an O(eps^2) remainder: shrinking eps 10x shrinks it ~100x
    assert r2 <= 0.02 * r1 + 1e-12


@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_rayleigh_gradient_and_invariance(m, seed, vseed):
    p, x = make_rayleigh(m, seed)
    v = np.random.default_rng(vseed).standard_normal(x.shape)
    r1, r2 = taylor_remainders(p, x, v)
    assert r2 <= 0.02 * r1 + 1e-12
    assert np.isclose(p.loss(3.7 * x), p.loss(x), rtol=1e-12, atol=1e-14)
    assert np.isclose(np.sum(p.grad(x) * x), 0, atol=1e-10)
    assert p.loss(x) >= -1e-12
    assert np.isclose(p.loss(p.minimizer()), 0, atol=1e-12)


def test_toy_matches_the_plain_loop_oracle():
    p, theta = make_toy(3, 4, 7)
    assert np.isclose(p.loss(theta), toy_loss(theta.tolist(), p.alphas), rtol=1e-12)
    assert np.allclose(p.grad(theta), toy_grad_fd(theta.tolist(), p.alphas), rtol=1e-6, atol=1e-8)


def test_toy_batched_evaluation_equals_one_by_one():
    p, _ = make_toy(3, 3, 1)
    batch = np.random.default_rng(2).standard_normal((4, 5, 3, 3))
    each = np.array([[p.loss(b) for b in row] for row in batch])
    assert np.allclose(p.loss(batch), each, rtol=1e-14)
    assert p.grad(batch).shape == batch.shape


def test_alphas_and_random_level():
    p = SphereToy([1, 2, 4])
    assert p.random_loss() == 3.5
    assert p.loss(p.minimizer()) == 0
    # the mean of F over a great circle through e1 is sum(alpha)/2
    phi = np.linspace(0, 2 * np.pi, 10001)[:-1]
    circle = np.stack([np.cos(phi), np.sin(phi)], -1)[:, None, :].repeat(3, axis=1)
    assert np.isclose(p.loss(circle).mean(), 3.5, rtol=1e-9)
    r = RayleighToy(np.diag([1.0, 2.0, 5.0]))
    assert np.allclose(r.alphas, [4.0]) and np.allclose(r.gaps, [0, 1, 4])
    assert np.isclose(r.random_loss(), 8 / 3 - 1)


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
