"""Numerical solvers agree with the closed forms of theory.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toymodel import solvers, theory
from toymodel.problems import SphereToy

A = [1.0, 2.0, 4.0]


@given(st.floats(1.01, 200.0), st.floats(0.1, 10.0))
def test_two_cycle_by_root_finding_matches_T11(k, alpha):
    elr = k / alpha
    phi, mult, loss = solvers.two_cycle(elr, alpha)
    assert abs(phi - theory.two_cycle_angle(elr, alpha)) < 1e-8
    assert abs(mult - theory.two_cycle_multiplier(elr, alpha)) < 1e-8
    assert abs(loss - theory.two_cycle_loss(elr, alpha)) < 1e-8 * max(1.0, alpha)


@pytest.mark.parametrize("c", [1.1, 1.3, 1.5, 2.5])
def test_synchronized_equilibrium_matches_T12(c):
    elr = c / 7
    eq = solvers.synchronized_equilibrium(elr, A)
    assert eq.residual < 1e-12
    assert abs(eq.loss - theory.equilibrium_loss(elr, A)) < 1e-8
    assert np.allclose(eq.shares, theory.equilibrium_shares(A), atol=1e-8)
    assert np.allclose(eq.angles, theory.equilibrium_angle(elr, A), atol=1e-8)
    assert abs(eq.grad_norm - theory.equilibrium_grad_norm(elr, A)) < 1e-8


@pytest.mark.parametrize("c", [1.1, 1.5, 2.5])
def test_equilibrium_jacobian_is_neutral_but_one_mode(c):
    # 2n-2 eigenvalues on the unit circle (neutral: quasi-periodic motion), and one equal to the
    # single-group 2-cycle multiplier (1 - 2/c^2)^2 (the common mode contracts).
    mod = np.sort(np.abs(solvers.equilibrium_jacobian(c / 7, A)))
    assert np.allclose(mod[1:], 1.0, atol=1e-6)
    assert abs(mod[0] - (1 - 2 / c**2) ** 2) < 1e-6


def test_lyapunov_quasi_periodic_then_chaotic():
    p = SphereToy(A)
    near = solvers.largest_lyapunov(p, 1.2 / 7, steps=6000, tail=3000)
    far = solvers.largest_lyapunov(p, 3.0, steps=6000, tail=3000)
    assert abs(near) < 0.01
    assert 0.05 < far < 1.0


@settings(max_examples=3)
@given(st.integers(0, 10**6))
def test_locate_total_threshold_on_random_instances(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    alphas = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n))
    found = solvers.locate_total_threshold(SphereToy(alphas), steps=20000, rtol=5e-3)
    assert abs(found / theory.total_threshold(alphas) - 1) < 0.02


def test_locate_total_threshold_bad_bracket():
    with pytest.raises(ValueError, match="bracket"):
        solvers.locate_total_threshold(SphereToy(A), lo=0.5, hi=2.0, steps=2000, tail=200)
    with pytest.raises(ValueError, match="lo < hi"):
        solvers.locate_total_threshold(SphereToy(A), lo=2.0, hi=1.0)


def test_solver_bad_input():
    with pytest.raises(ValueError, match="exceed 1"):
        solvers.two_cycle(0.5, 1.0)
    with pytest.raises(ValueError, match="exceed 1"):
        solvers.synchronized_equilibrium(0.1, A)
    with pytest.raises(ValueError, match="tail"):
        solvers.largest_lyapunov(SphereToy(A), 0.2, steps=10, tail=20)
