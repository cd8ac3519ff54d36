"""Numerical solvers agree with the closed forms of theory.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toymodel import solvers, theory, thresholds
from toymodel.problems import SphereToy

A = [1.0, 2.0, 4.0]


@given(st.floats(1.01, 200.0), st.floats(0.1, 10.0))
def test_two_cycle_by_root_finding_matches_T11(k, alpha):
    elr = k / alpha
    phi, mult, loss = solvers.two_cycle(elr, alpha)
    # brentq to xtol 1e-15 + 4u|phi|, and arccos(1/k)/2 conditioned by 1/(2 sqrt(1 - 1/k^2)) <= 3.6
    # at k >= 1.01 (elr = k/alpha rounds once more): <= ~1e-14 (observed <= 1.1e-15 in phi,
    # 3.4e-15 in the multiplier, 6.2e-16 alpha in the loss over 3000 draws down to k = 1.01 + 1e-6);
    # 1e-12 leaves 100x over the bound
    assert abs(phi - theory.two_cycle_angle(elr, alpha)) < 1e-12
    assert abs(mult - theory.two_cycle_multiplier(elr, alpha)) < 1e-12
    assert abs(loss - theory.two_cycle_loss(elr, alpha)) < 1e-12 * max(1.0, alpha)


@pytest.mark.parametrize("c", [1.1, 1.3, 1.5, 2.5])
def test_synchronized_equilibrium_matches_T12(c):
    elr = c / 7
    eq = solvers.synchronized_equilibrium(elr, A)
    # the root solver stops at xtol 1e-14 (relative) in coordinates of size <= 1.6, so the 2-step
    # map's residual is <= |J - I| 1e-14 x 1.6 ~ 5e-14 plus 2 steps x ~30 flops x u (observed
    # <= 1.7e-16); 1e-12 leaves 20x over that bound
    assert eq.residual < 1e-12
    # x to ~1e-14 moves the loss and gradient norm by <= 2 sum(alpha) = 14 times that -> 2e-13
    # (observed <= 6.7e-16 in the loss, 1.8e-15 in the grad norm); 1e-10 leaves 500x
    assert abs(eq.loss - theory.equilibrium_loss(elr, A)) < 1e-10
    assert np.allclose(eq.shares, theory.equilibrium_shares(A), rtol=0, atol=1e-10)
    assert np.allclose(eq.angles, theory.equilibrium_angle(elr, A), rtol=0, atol=1e-10)
    assert abs(eq.grad_norm - theory.equilibrium_grad_norm(elr, A)) < 1e-10


@pytest.mark.parametrize("c", [1.1, 1.5, 2.5])
def test_equilibrium_jacobian_is_neutral_but_one_mode(c):
    # 2n-2 eigenvalues on the unit circle (neutral: quasi-periodic motion), and one equal to the
    # single-group 2-cycle multiplier (1 - 2/c^2)^2 (the common mode contracts).
    mod = np.sort(np.abs(solvers.equilibrium_jacobian(c / 7, A)))
    # central differences at h = 1e-6: rounding u |x| / h ~ 2e-10 and truncation h^2 ~ 1e-12 per
    # entry, on a 5 x 5 matrix -> ~1e-9 in its eigenvalues (observed <= 2.5e-10); atol 1e-6 leaves
    # 1000x for the conditioning of the neutral (unit-modulus) eigenvalues
    assert np.allclose(mod[1:], 1.0, rtol=0, atol=1e-6)
    assert abs(mod[0] - (1 - 2 / c**2) ** 2) < 1e-6


def test_lyapunov_quasi_periodic_then_chaotic():
    p = SphereToy(A)
    near = solvers.largest_lyapunov(p, 1.2 / 7, steps=6000, tail=3000)
    far = solvers.largest_lyapunov(p, 3.0, steps=6000, tail=3000)
    # statistics of the orbit, not rounding tolerances: observed near = 5.6e-5, far = 0.27 (a 3000-
    # step mean of log-growths: a rounding change moves it by ~1/sqrt(3000) of its spread, ~1%)
    assert abs(near) < 0.01
    assert 0.05 < far < 1.0


@settings(max_examples=3)
@given(st.integers(0, 10**6))
def test_locate_total_threshold_on_random_instances(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    alphas = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n))
    found = thresholds.locate_total_threshold(SphereToy(alphas), steps=20000, rtol=5e-3)
    # not rounding: the final bracket (rtol 5e-3) and critical slowing down at c -> 1 bias the found
    # ELR (observed |rel| <= 1.7e-3 over 12 random instances); 0.02 leaves 10x
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
