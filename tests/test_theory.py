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
    # all terms positive, so rounding is relative: R^2 = sum(sq) (n <= 10), two divisions each and
    # the sum of n reciprocals -> <= (2n + 4) u ~ 2.7e-15 (observed 4.8e-16); rtol 1e-12 leaves 400x
    assert np.isclose(theory.total_elr(ie), elr, rtol=1e-12, atol=0)
    # and individual ELR = elr / share: <= (n + 4) u ~ 1.6e-15 (observed 4.4e-16)
    assert np.allclose(ie, elr / theory.shares(sq), rtol=1e-12, atol=0)


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
    # elr alpha_i plus the slack (1 - sum)/n, summed: <= 3 n u ~ 2.7e-15 for n <= 8 (observed 2.2e-16)
    assert np.isclose(s.sum(), 1.0, rtol=0, atol=1e-13)
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
    # two routes through positive terms only (relative rounding): ~8 roundings each plus the n <= 6
    # term normalisation -> <= 30 u ~ 3.3e-15 (observed 7e-16); rtol 1e-12 leaves 300x
    assert np.allclose(theory.share_update(sq / rho2, elr, eff), new_sq / new_sq.sum(), rtol=1e-12,
                       atol=0)


def test_threshold_values_for_the_worked_example():
    a = [1, 2, 4]
    # exact: sums and products of small integers are exact and IEEE division is correctly rounded,
    # so 1/(1+2+4), 1/(3*4), ... are the doubles nearest 1/7, 1/12, ... on any CPU (= the literals)
    assert theory.total_threshold(a) == 1 / 7
    assert theory.divergence_threshold(a) == 1.0
    assert theory.random_loss(a) == 3.5
    assert theory.group_thresholds(a).tolist() == [1, 0.5, 0.25]
    assert theory.individual_constraint_thresholds(a).tolist() == [1 / 3, 1 / 6, 1 / 12]
    # docs/theory.md §4: at c = 1.3 the tail loss is 0.8077 (4 decimals: half a unit of the last)
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
    # Relative error <= ~20 u away from c = 1 (observed 1.5e-15: rtol 1e-9 is loose on purpose, for
    # the c -> 1+ end): there sum(alpha) - 1/elr cancels, an absolute <= 4 u sum(alpha) <= 3.6e-14
    # (observed <= 2 u sum(alpha) over 20000 draws near c = 1); atol 1e-12 leaves 28x
    # the loss of every group sitting at angle phi: sum alpha sin^2 phi = (sum alpha - 1/elr)/2
    assert np.isclose(L, a.sum() * np.sin(phi) ** 2, rtol=1e-9, atol=1e-12)
    # gradient on the unit circle: alpha_i sin(2 phi); total norm sum(alpha) * sin(2 phi). Near c = 1+
    # sqrt(1 - 1/c^2) turns a rounding u of its argument into up to sqrt(u)/3 ~ 5e-9 of sum(alpha)
    # (observed <= 4.5e-13 sum(alpha)): atol 1e-8 sum(alpha)
    assert np.isclose(theory.equilibrium_grad_norm(elr, a), a.sum() * np.sin(2 * phi), rtol=1e-9,
                      atol=1e-8 * a.sum())
    # elr * sum / alpha * alpha: 4 roundings -> 4.4e-16 relative (observed 3e-16); rtol 1e-13
    assert np.allclose(theory.equilibrium_individual_elr(elr, a) * a, c, rtol=1e-13, atol=0)
    # n <= 8 quotients summed: <= 2 n u ~ 1.8e-15 (observed 3.3e-16)
    assert np.isclose(theory.equilibrium_shares(a).sum(), 1.0, rtol=0, atol=1e-13)
    # arctan(sqrt(c^2 - 1)) vs arctan(elr g): the same sqrt conditioning near c = 1+, bounded by
    # c sqrt(u)/3 ~ 5e-9 c absolute (observed <= 4.5e-13): atol 1e-8 c; elsewhere ~10 u relative
    assert np.isclose(theory.equilibrium_step_angle(elr, a),
                      theory.step_angle(elr, theory.equilibrium_grad_norm(elr, a)), rtol=1e-9,
                      atol=1e-8 * c)
    assert 0 < L < theory.random_loss(a)


@given(st.floats(1.001, 100.0))
def test_two_cycle_T11_is_a_cycle_of_the_angle_map(k):
    phi = theory.two_cycle_angle(k, 1.0)
    # phi - arctan(k sin 2 phi) at phi <= pi/4: a few u plus 1-4 ulp of arctan/sin/arccos (libm or
    # SVML) -> <= ~1e-15 (observed 2.2e-16); atol 1e-12 leaves 1000x
    assert np.isclose(theory.angle_map(phi, k, 1.0), -phi, rtol=0, atol=1e-12)
    # (1 - 1/k)/2 with k >= 1.001 cancels at most 1000x: <= 4 u / 1e-3 ~ 4.4e-13 relative
    # (observed 3.5e-14); rtol 1e-9 leaves 2000x
    assert np.isclose(theory.two_cycle_loss(k, 1.0), np.sin(phi) ** 2, rtol=1e-9, atol=0)
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
