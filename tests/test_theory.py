"""Closed forms of theory.py: exact identities (hypothesis) and values the paper states."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from toymodel import theory

pos = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)
alpha_lists = st.lists(st.floats(0.1, 10.0), min_size=1, max_size=8)


@given(st.lists(pos, min_size=1, max_size=10), pos)
def test_budget_identity_T8(sq_norms, elr):
    sq = np.array(sq_norms)
    radius = np.sqrt(sq.sum())
    ie = theory.individual_elr(elr, sq, radius=radius)
    assert np.isclose(theory.total_elr(ie), elr, rtol=1e-12)
    # and individual ELR = elr / share
    assert np.allclose(ie, elr / theory.shares(sq), rtol=1e-12)


@given(alpha_lists, st.floats(1.0001, 100.0), st.lists(st.floats(1e-3, 1.0), min_size=8, max_size=8))
@example([1.0, 2.0, 4.0], 1.0001, [1.0] * 8)
def test_remark2_T10_some_group_above_for_any_shares(alphas, c, raw):
    a = np.array(alphas)
    elr = c / a.sum()  # above the total threshold
    s = np.array(raw[: a.size]) / np.sum(raw[: a.size])
    assert theory.groups_above_threshold(elr, a, s).any()
    assert theory.remark2_holds(elr, a, s)


@given(alpha_lists, st.floats(0.01, 1.0))
def test_converse_of_T10_shares_exist_below_threshold(alphas, c):
    a = np.array(alphas)
    elr = c / a.sum()
    s = theory.below_threshold_shares(elr, a)
    assert np.isclose(s.sum(), 1.0)
    assert not theory.groups_above_threshold(elr, a, s).any()
    assert theory.below_threshold_shares(1.01 / a.sum(), a) is None


@given(alpha_lists, st.floats(1.0, 50.0), st.lists(st.floats(1e-3, 1.0), min_size=8, max_size=8))
def test_above_divergence_threshold_every_group_above(alphas, k, raw):
    a = np.array(alphas)
    elr = k * 1.0001 * theory.divergence_threshold(a)
    s = np.array(raw[: a.size]) / np.sum(raw[: a.size])
    assert theory.groups_above_threshold(elr, a, s).all()


@given(st.lists(pos, min_size=2, max_size=6), pos, st.lists(st.floats(0, 10), min_size=6, max_size=6))
def test_share_update_T9_matches_norm_growth_T4(sq_norms, elr, grads):
    # |theta_i'|^2 = |theta_i|^2 + lr^2 |grad_i F|^2 (T4 per group); with the group's effective
    # gradient g_i = |theta_i| |grad_i F| this is T9 after dividing by rho^2.
    sq = np.array(sq_norms)
    rho2 = sq.sum()
    lr = elr * rho2
    gF = np.array(grads[: sq.size])
    new_sq = theory.sq_norm_after_step(sq, lr, gF**2)
    eff = np.sqrt(sq) * gF
    assert np.allclose(theory.share_update(sq / rho2, elr, eff), new_sq / new_sq.sum(), rtol=1e-10)


def test_threshold_values_for_the_worked_example():
    a = [1, 2, 4]
    assert theory.total_threshold(a) == pytest.approx(1 / 7)
    assert theory.divergence_threshold(a) == 1.0
    assert theory.random_loss(a) == 3.5
    assert np.allclose(theory.group_thresholds(a), [1, 0.5, 0.25])
    assert np.allclose(theory.individual_constraint_thresholds(a), [1 / 3, 1 / 6, 1 / 12])
    # docs/theory.md §4: at c = 1.3 the tail loss is 0.8077
    assert theory.equilibrium_loss(1.3 / 7, a) == pytest.approx(0.8077, abs=5e-5)


@given(alpha_lists, st.floats(0.01, 100.0))
def test_equilibrium_formulas_are_consistent(alphas, c):
    a = np.array(alphas)
    elr = c / a.sum()
    L = theory.equilibrium_loss(elr, a)
    if c <= 1:
        assert L == 0 and theory.equilibrium_grad_norm(elr, a) == 0
        return
    phi = theory.equilibrium_angle(elr, a)
    # the loss of every group sitting at angle phi: sum alpha sin^2 phi = (sum alpha - 1/elr)/2
    assert np.isclose(L, a.sum() * np.sin(phi) ** 2, rtol=1e-9)
    # gradient on the unit circle: alpha_i sin(2 phi); total norm sum(alpha) * sin(2 phi)
    assert np.isclose(theory.equilibrium_grad_norm(elr, a), a.sum() * np.sin(2 * phi), rtol=1e-9)
    assert np.allclose(theory.equilibrium_individual_elr(elr, a) * a, c)
    assert np.isclose(theory.equilibrium_shares(a).sum(), 1.0)
    assert np.isclose(theory.equilibrium_step_angle(elr, a),
                      theory.step_angle(elr, theory.equilibrium_grad_norm(elr, a)), rtol=1e-9)
    assert 0 < L < theory.random_loss(a)


@given(st.floats(1.001, 100.0))
def test_two_cycle_T11_is_a_cycle_of_the_angle_map(k):
    phi = theory.two_cycle_angle(k, 1.0)
    assert np.isclose(theory.angle_map(phi, k, 1.0), -phi, atol=1e-12)
    assert np.isclose(theory.two_cycle_loss(k, 1.0), np.sin(phi) ** 2, rtol=1e-9)
    assert 0 <= theory.two_cycle_multiplier(k, 1.0) < 1


def test_predict_regime_total_and_individual():
    a = [1, 2, 4]
    assert theory.predict_regime(0.1, a) == "convergence"
    assert theory.predict_regime(0.5, a) == "chaotic_equilibrium"
    assert theory.predict_regime(1.5, a) == "divergence"
    # individual: n * elr * alpha_i vs 1 -> thresholds 1/12, 1/6, 1/3
    assert theory.predict_regime(0.05, a, "individual") == "convergence"
    assert theory.predict_regime(0.1, a, "individual") == "chaotic_equilibrium"
    assert theory.predict_regime(0.5, a, "individual") == "divergence"
    assert list(theory.predict_group_convergence(0.1, a)) == [True, True, False]


@pytest.mark.parametrize("call, match", [
    (lambda: theory.total_threshold([1, -2]), "alphas"),
    (lambda: theory.predict_regime(-0.1, [1]), "elr"),
    (lambda: theory.predict_regime(float("nan"), [1]), "elr"),
    (lambda: theory.predict_regime(float("inf"), [1]), "elr"),
    (lambda: theory.predict_regime(0.1, [1], "both"), "constraint"),
    (lambda: theory.individual_elr(0.1, [1.0, 0.0]), "sq_norms"),
    (lambda: theory.two_cycle_multiplier(0.5, 1.0), "exceed 1"),
    (lambda: theory.equilibrium_loss(0.1, [[1, 2]]), "dimension"),
])
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
