"""The closed-form limits of Adam on the sphere (toymodel.adam_theory, docs/momentum.md T49, T50)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toymodel import adam_theory as AT
from toymodel import momentum as M
from toymodel.problems import SphereToy

ALPHAS = (1.0, 2.0, 4.0)


def test_share_threshold_at_the_best_shares_is_the_eps_threshold_T49():
    a = np.array(ALPHAS)
    for betas, eps in (((0.9, 0.999), 1e-2), ((0.5, 0.99), 3e-3)):
        # same formula written two ways: min(s/alpha) = 1/sum(alpha) at s = alpha/sum(alpha);
        # a few ulp of rounding
        assert AT.adam_share_threshold(a, a / a.sum(), betas, eps) == pytest.approx(
            M.adam_eps_threshold(a, betas, eps), rel=1e-14)
    # any other shares are worse: the best shares maximise min(s/alpha) under sum(s) = 1
    assert AT.adam_share_threshold(a, [0.5, 0.3, 0.2], (0.9, 0.999), 1e-2) < \
        M.adam_eps_threshold(a, (0.9, 0.999), 1e-2)


def test_second_moment_bound_formula_T50():
    w = AT.adam_second_moment_bound(ALPHAS, 0.99, steps=100, tail=10, tol=1e-6)
    a = np.array(ALPHAS)
    want = np.sqrt((0.99 ** 10 * a ** 2 + 0.01 * 4 * a * 10 * 1e-6) / (1 - 0.99 ** 100))
    np.testing.assert_allclose(w, want, rtol=1e-13)  # expm1/log1p vs the power: a few ulp


@settings(max_examples=40, deadline=None)
@given(b2=st.floats(0.0, 0.9999), tail=st.integers(1, 5000), b1=st.floats(0.0, 0.99),
       eps=st.floats(1e-4, 1.0))
def test_horizon_threshold_solves_the_share_budget_T50(b2, tail, b1, eps):
    steps = 4 * tail
    elr = AT.adam_horizon_threshold(ALPHAS, (b1, b2), eps, steps=steps, tail=tail)
    a = np.array(ALPHAS)
    w = AT.adam_second_moment_bound(a, b2, steps=steps, tail=tail)
    k = (1 - b1) * math.sqrt(2) * elr / (1 + b1) * a
    s = ((np.sqrt(w * w + 4 * eps * k) - w) / (2 * eps)) ** 2
    # the root of sum(s*) = 1 found by bisection to float64 resolution; s* is smooth in elr
    assert s.sum() == pytest.approx(1.0, rel=1e-9)
    # at each s*, T49 holds with equality: eps s + w sqrt(s) = a alpha
    np.testing.assert_allclose(eps * s + w * np.sqrt(s), k, rtol=1e-9)
    # a larger second moment only relaxes the bound: never below the eps threshold
    assert elr >= M.adam_eps_threshold(a, (b1, b2), eps) * (1 - 1e-12)


def test_horizon_threshold_tends_to_the_eps_threshold_T50():
    e0 = M.adam_eps_threshold(ALPHAS, (0.9, 0.9), 1e-2)
    # beta2^tail = 0 to float64 and tol -> 0: the bound is E0 up to the bisection's resolution
    assert AT.adam_horizon_threshold(ALPHAS, (0.9, 0.9), 1e-2, steps=20000, tail=10000,
                                     tol=1e-300) == pytest.approx(e0, rel=1e-12)
    # a memory longer than the tail lifts it: beta2^tail alpha^2 >> eps^2
    assert AT.adam_horizon_threshold(ALPHAS, (0.9, 0.999), 1e-2, steps=20000, tail=2000) > 100 * e0


def test_no_transported_run_passes_the_criterion_above_the_horizon_threshold_T50():
    # short runs, a grid straddling the bound at a beta2 where it is tight (beta2^tail ~ 1e-92)
    a, steps, tail, b2 = ALPHAS, 6000, 2000, 0.9
    hz = AT.adam_horizon_threshold(a, (0.9, b2), 1e-2, steps=steps, tail=tail)
    problem = SphereToy(a)
    from toymodel import dynamics
    th0 = dynamics.initial_states(problem, range(4))
    elr = hz * np.array([0.05, 1.0001, 1.5, 3.0])
    th, e = np.tile(th0, (elr.size, 1, 1)), np.repeat(elr, 4)
    for mode in M.MOMENTUM_MODES:
        res = M.summarize_momentum_batch(problem, th, e, 0.9, steps=steps, tail=tail,
                                         momentum_mode=mode, optimizer="adam", beta2=b2, eps=1e-2)
        ok = M.converged(res).reshape(elr.size, 4)
        if mode == "transport":
            assert not ok[1:].any()  # rigorous for AdamSRT
        assert ok[0, :3].all()  # seeds 0-2 converge at 0.05 of it (seed 3's shares forbid it)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shares"):
        AT.adam_share_threshold(ALPHAS, [0.5, 0.5], (0.9, 0.999), 1e-2)
    with pytest.raises(ValueError, match="tail"):
        AT.adam_second_moment_bound(ALPHAS, 0.9, steps=10, tail=20)
    with pytest.raises(ValueError, match="eps"):
        AT.adam_horizon_threshold(ALPHAS, (0.9, 0.9), -1.0, steps=10, tail=5)


def test_memory_threshold_solves_its_cubic_and_forgets_T50():
    base, eps, steps, k = 0.005, 1e-2, 20000, 6.0
    for b2 in (0.9995, 0.9999):
        elr = AT.adam_memory_threshold(base, eps, b2, steps=steps, action=k)
        v = k / elr * (1 - b2) * b2 ** steps / (1 - b2 ** steps)
        # bisection on sqrt(elr) to float64 resolution: the defining equation to ~1e-12
        assert elr == pytest.approx(base * (1 + math.sqrt(v) / eps), rel=1e-12)
    # a memory much shorter than the run (b2^T ~ 1e-87): the base itself to float64 resolution
    assert AT.adam_memory_threshold(base, eps, 0.99, steps=steps, action=k) == base
    # longer memory, higher estimate
    assert AT.adam_memory_threshold(base, eps, 0.9999, steps=steps, action=k) > \
        AT.adam_memory_threshold(base, eps, 0.9998, steps=steps, action=k) > base
