"""Heavy-ball momentum and Adam on the sphere (toymodel.momentum, docs/momentum.md T40–T48).

Oracles: `toymodel.dynamics.simulate` (momentum 0), loops written here with their own gradient
formula and, for the transport, the d = 2 rotation form of T42 instead of SGD-MRT's
inner-product form; the closed forms T43 and T47.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from toymodel import dynamics
from toymodel import _momentum_boundary
from toymodel import momentum as M
from toymodel.problems import SphereToy

A3 = (1.0, 2.0, 4.0)
U = np.finfo(np.float64).eps / 2  # unit roundoff


# -- oracles ---------------------------------------------------------------------------------------
def _grad(theta, alphas):
    """Toy gradient in the form 2a(x0^2 theta/r^4 - x0 e0/r^2) (not the module's p^2 form)."""
    a = np.asarray(alphas, float)[..., None]
    x0 = theta[..., :1]
    sq = (theta * theta).sum(-1, keepdims=True)
    g = 2 * a * x0 ** 2 * theta / sq ** 2
    g[..., 0] -= (2 * a * x0 / sq)[..., 0]
    return g


def _loss(theta, alphas):
    sq = (theta * theta).sum(-1)
    return (np.asarray(alphas) * (1.0 - theta[..., 0] ** 2 / sq)).sum(-1)


def _tangent_2d(x):
    """Unit tangent (-y, x)/r of every 2-D group."""
    return np.stack([-x[..., 1], x[..., 0]], -1) / np.sqrt((x * x).sum(-1, keepdims=True))


def _oracle(alphas, elr, beta, steps, theta0, mode):
    """Heavy ball + total rescale, batched over the leading axis of theta0 ``(B, n, 2)``; the
    transport is 'keep the tangent component, turned with the point, times r/r'' (T42 in d = 2)."""
    th = np.array(theta0, float)
    rho = np.sqrt((th * th).sum((-2, -1)))
    lr = np.asarray(elr) * rho ** 2
    b = np.zeros_like(th)
    losses = []
    for _ in range(steps):
        losses.append(_loss(th, alphas))
        b = np.asarray(beta)[..., None, None] * b + _grad(th, alphas)
        v = th - lr[..., None, None] * b
        new = v * (rho / np.sqrt((v * v).sum((-2, -1))))[..., None, None]
        if mode == "transport":
            r_old = np.sqrt((th * th).sum(-1, keepdims=True))
            r_new = np.sqrt((new * new).sum(-1, keepdims=True))
            s = (b * _tangent_2d(th)).sum(-1, keepdims=True)
            b = (r_old / r_new) * s * _tangent_2d(new)
        th = new
    return th, b, np.array(losses)


# -- T40: momentum 0 is projected GD ----------------------------------------------------------------
@pytest.mark.parametrize("mode", M.MOMENTUM_MODES)
@pytest.mark.parametrize("constraint", ["total", "individual"])
@pytest.mark.parametrize("elr", [0.1, 0.3])  # c = 0.7 converging, c = 2.1 rotating
def test_momentum_zero_is_projected_gd_T40(mode, constraint, elr):
    # Tolerance: with beta = 0 the buffer update is 0*b + g; 0*b is +-0 for finite b and
    # +-0 + g == g exactly in IEEE arithmetic, so the step computes dynamics.step(theta, g)
    # with the very same operations (the transport only rewrites b, which the next step
    # multiplies by 0). The traces are therefore equal bit for bit: the derived bound is 0, and
    # 1e-12 is the bound asked for.
    ref = dynamics.simulate(A3, elr, 400, seed=3, constraint=constraint)
    got = M.simulate_momentum(A3, elr, 0.0, mode, steps=400, seed=3, constraint=constraint)
    for name in dynamics.Trajectory.TRACES + ("theta_final",):
        a, b = getattr(ref, name), getattr(got, name)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12, err_msg=name)
        assert np.array_equal(a, b), name


# -- the official mode is torch's SGD + rescale -----------------------------------------------------
def test_official_step_equals_an_independent_heavy_ball_loop_step_for_step():
    problem = SphereToy(A3)
    theta = dynamics.initial_state(problem, 5)
    elr, beta = 1.2 / sum(A3), 0.7
    lr = elr * float((theta ** 2).sum())
    b = np.zeros_like(theta)
    for _ in range(300):
        # oracle step from (theta, b)
        b_ref = beta * b + _grad(theta, A3)
        v = theta - lr * b_ref
        th_ref = v / np.sqrt((v * v).sum())
        # spec step from the same (theta, b); tolerance: each coordinate passes through ~nd + 10
        # = 16 roundings in either implementation, so they differ by at most 2*16*u relative to
        # the state's scale (|theta| = 1, |b| <= 1/(1-beta) max|g|); 1e-14 ~ 45 u covers it.
        th, b_new = M.heavy_ball_step(theta, b, problem.grad(theta), lr, beta, "official",
                                      "total", 1.0)
        scale_b = max(1.0, np.abs(b_ref).max())
        assert np.abs(th - th_ref).max() <= 1e-14
        assert np.abs(b_new - b_ref).max() <= 1e-14 * scale_b
        theta, b = th_ref, b_ref  # follow the oracle: errors do not accumulate


def test_official_run_equals_the_independent_loop():
    # c = 0.6 < 1 + beta: a converging run whose linearisation contracts (T43), so per-step
    # rounding differences (<= 32 u each, see above) add up at most linearly: 300 steps * 32 u
    # * a transient gain of at most 10 (non-normal heavy-ball matrix) ~ 1e-11.
    problem = SphereToy(A3)
    elr, beta = 0.6 / sum(A3), 0.5
    tr = M.simulate_momentum(problem, elr, beta, "official", steps=300, seed=2)
    th, b, losses = _oracle(A3, elr, beta, 300, dynamics.initial_state(problem, 2)[None],
                            "official")
    np.testing.assert_allclose(tr.theta_final, th[0], rtol=0, atol=1e-11)
    np.testing.assert_allclose(tr.optimizer_state["buffer"], b[0], rtol=0, atol=1e-11)
    np.testing.assert_allclose(tr.loss, losses[:, 0], rtol=0, atol=1e-11)
    assert tr.params["lr"] == pytest.approx(elr)  # rho = 1: lr = elr * rho^2


# -- T42: the transport ---------------------------------------------------------------------------------
def test_transported_buffer_is_tangent_after_every_step_T42():
    problem = SphereToy(A3, dim=3)
    theta = dynamics.initial_state(problem, 1)
    b = np.zeros_like(theta)
    lr, beta = 2.5 / sum(A3), 0.8  # c = 2.5 > 1 + beta: the run keeps rotating
    worst = 0.0
    for _ in range(500):
        theta, b = M.heavy_ball_step(theta, b, problem.grad(theta), lr, beta, "transport",
                                     "total", 1.0)
        r = np.sqrt((theta ** 2).sum(-1))
        bn = np.sqrt((b ** 2).sum(-1))
        worst = max(worst, float((np.abs((b * theta).sum(-1)) / (r * bn)).max()))
    # the inner product cancels two products of size r|b|: a few u of it remain
    assert worst < 1e-14


def test_transport_rotates_in_plane_vectors_and_rescales_by_the_norm_ratio_T42():
    rng = np.random.default_rng(0)
    old = rng.standard_normal((50, 3, 4))
    new = old + 0.4 * rng.standard_normal((50, 3, 4))
    # a tangent vector at old inside span(old, new), and a radial one
    w = new - ((new * old).sum(-1, keepdims=True) / (old * old).sum(-1, keepdims=True)) * old
    t = M.transport(w, old, new)
    r_old = np.sqrt((old * old).sum(-1))
    r_new = np.sqrt((new * new).sum(-1))
    np.testing.assert_allclose((t * new).sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose(r_new * np.sqrt((t * t).sum(-1)), r_old * np.sqrt((w * w).sum(-1)),
                               rtol=1e-12)
    np.testing.assert_allclose(M.transport(old, old, new), 0, atol=1e-12)


def test_transport_matters_on_a_rotating_problem_T47():
    """One group above its limit sits on a 2-cycle whose loss depends on the mode (T47):
    transport (1 - (1+b)/k)/2, official (1-b)(1 - (1+b)/k)/2. Switching the transport off makes
    the transport run give the official value and fails here."""
    beta, k = 0.5, 1.62
    out = {m: M.simulate_momentum([1.0], k, beta, m, steps=4000, seed=0) for m in M.MOMENTUM_MODES}
    base = (1 - (1 + beta) / k) / 2
    assert out["transport"].loss[-500:].mean() == pytest.approx(base, rel=1e-9)
    assert out["official"].loss[-500:].mean() == pytest.approx((1 - beta) * base, rel=1e-9)
    assert np.all(out["transport"].angle[-500:] > 0.1)  # it rotates: 2 phi* per step
    # and on three groups the summaries tell the modes apart through the buffer's radial part
    th = dynamics.initial_states(SphereToy(A3), [0, 1])
    s = {m: M.summarize_momentum_batch(SphereToy(A3), th, 3.0 / 7, 0.5, steps=3000, tail=1000,
                                       momentum_mode=m) for m in M.MOMENTUM_MODES}
    assert np.all(s["transport"]["tail_radial"] < 1e-13)
    assert np.all(s["official"]["tail_radial"] > 0.1)
    assert np.all(np.abs(s["official"]["tail_loss"] / s["transport"]["tail_loss"] - 1) > 0.1)


# -- T43: the linear stability of the minimum -------------------------------------------------------
def test_heavy_ball_rate_is_the_companion_spectral_radius_T43():
    for beta in (0.0, 0.3, 0.9):
        for k in np.linspace(0.05, 2.5, 40):
            z = np.linalg.eigvals([[1 + beta - 2 * k, -beta], [1.0, 0.0]])
            assert M.heavy_ball_rate(k, beta) == pytest.approx(np.abs(z).max(), rel=1e-9)
            assert (M.heavy_ball_rate(k, beta) < 1) == (k < 1 + beta)
    assert M.naive_total_threshold(A3, 0.5) == pytest.approx(1.5 / 7)


@pytest.mark.parametrize("mode", M.MOMENTUM_MODES)
def test_one_group_converges_iff_k_below_one_plus_beta_T43(mode):
    beta = 0.5
    ks = np.array([1.40, 1.47, 1.53, 1.60])
    th = np.broadcast_to(dynamics.initial_state(SphereToy([1.0]), 4), (ks.size, 1, 2))
    out = M.summarize_momentum_batch(SphereToy([1.0]), th, ks, beta, steps=6000, tail=500,
                                     momentum_mode=mode)
    assert M.converged(out).tolist() == (ks < 1 + beta).tolist()


# -- outcomes near the boundary, against the independent loop ------------------------------------------
# (alphas = (1, 3)). Points chosen on both sides of the seed's boundary (official beta = 0.3:
# c* = 1.234 for seed 0 and 1.271 for seed 1; transport beta = 0.8: c* = 1.796), where 32 starts
# perturbed by one ulp of the ELR all share the outcome, so any two correct implementations agree.
NEAR = [  # (beta, mode, seed, c, converges)
    (0.3, "official", 0, 1.200, True), (0.3, "official", 0, 1.260, False),
    (0.3, "official", 1, 1.240, True), (0.3, "official", 1, 1.285, False),
    (0.8, "transport", 0, 1.780, True), (0.8, "transport", 0, 1.815, False),
]


def test_outcomes_near_the_boundary_agree_with_an_independent_simulation():
    a = (1.0, 3.0)
    beta = np.array([p[0] for p in NEAR])
    c = np.array([p[3] for p in NEAR])
    expect = [p[4] for p in NEAR]
    th0 = dynamics.initial_states(SphereToy(a), [p[2] for p in NEAR])
    for mode in M.MOMENTUM_MODES:
        sel = np.array([p[1] == mode for p in NEAR])
        out = M.summarize_momentum_batch(SphereToy(a), th0[sel], c[sel] / 4, beta[sel],
                                         steps=20000, tail=2000, momentum_mode=mode)
        th, _, losses = _oracle(a, c[sel] / 4, beta[sel], 20000, th0[sel], mode)
        tail = losses[-2000:].mean(0)
        # the oracle's stability test at the end (T43): eta*alpha_i < (1 + beta) r_i^2
        sq = (th * th).sum(-1)
        stable = ((c[sel] / 4)[:, None] * np.array(a) < (1 + beta[sel])[:, None] * sq).all(-1)
        oracle_ok = (tail < 1e-10) & stable
        assert M.converged(out).tolist() == oracle_ok.tolist() == [e for e, s in zip(expect, sel)
                                                                  if s]


def test_loss_alone_reports_convergence_above_one_plus_beta_T48():
    """Pinned: alpha = (1, 3), beta = 0.3, transport, c = 1.3052 > 1 + beta, seed 0: the loss
    underflows to 0 with group 1 exactly on its axis while it is above its limit; only the
    stability part of the criterion says 'not converged'."""
    th0 = dynamics.initial_states(SphereToy([1.0, 3.0]), [0])
    out = M.summarize_momentum_batch(SphereToy([1.0, 3.0]), th0, 1.3052 / 4, 0.3, steps=20000,
                                     tail=2000, momentum_mode="transport")
    assert out["tail_loss"][0] < 1e-200
    assert out["final_stability"][0] > 1.0
    assert M.converged(out, stable=False)[0] and not M.converged(out)[0]


# -- boundary location ------------------------------------------------------------------------------------
def test_located_boundary_of_a_seed_lies_in_the_band_over_seeds_T44():
    kw = {"momentum_mode": "official", "steps": 10000, "tail": 1000, "grid": 24, "rtol": 2e-3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MultipleCrossingsWarning)
        band = M.momentum_boundary_band((1.0, 3.0), 0.3, [0, 1, 2, 3], **kw)
        one = M.locate_total_threshold((1.0, 3.0), 0.3, seed=2, **kw)
    assert band.c_min <= one.c <= band.c_max
    np.testing.assert_allclose(one.crossings_elr, band.boundaries[2].crossings_elr)
    # every seed stops converging below the naive 1 + beta (T44), above plain GD's 1
    assert np.all(band.c > 1.0) and np.all(band.c < 1.3)
    assert one.elr == pytest.approx(one.c / 4)


def test_every_crossing_is_reported_and_warned(monkeypatch):
    """A converging set [lo, 1.2) U (1.3, 1.4) (a stand-in for the simulation) gives three
    crossings, found to rtol, with directions, and a warning."""
    def fake(problem, theta0, elr, beta, mode, steps, tail, tol, stable):
        c = np.asarray(elr) * 7.0
        return (c < 1.2) | ((c > 1.3) & (c < 1.4))

    monkeypatch.setattr(_momentum_boundary, "_converges_cells", fake)
    with pytest.warns(M.MultipleCrossingsWarning, match="3 convergence crossings"):
        b = M.locate_total_threshold(A3, 0.5, grid=40, rtol=1e-4)
    np.testing.assert_allclose(b.crossings_c, [1.2, 1.3, 1.4], rtol=1e-4)
    assert b.directions.tolist() == [1, -1, 1] and not b.is_interval
    assert b.c == pytest.approx(1.2, rel=1e-4)


def test_the_reference_instance_has_more_than_one_crossing_T48():
    """alpha = (1, 2, 4), beta = 0.5, official, seed 0: the converging ELRs are not an interval."""
    with pytest.warns(M.MultipleCrossingsWarning):
        b = M.locate_total_threshold(A3, 0.5, "official", seed=0, grid=32, rtol=5e-3)
    assert b.crossings_c.size + b.hidden > 1
    assert 1.0 < b.c < 1.5


# -- Adam ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", M.MOMENTUM_MODES)
def test_adam_does_not_depend_on_the_radius_T45(mode):
    # lr = elr * rho and eps / rho make the direction sequence rho-free; the runs differ by the
    # rounding of the rescaled arithmetic only (a converging-then-hovering run, 300 steps)
    a = M.simulate_adam(A3, 0.05, (0.9, 0.99), 1e-2, mode, steps=300, seed=1)
    b = M.simulate_adam(A3, 0.05, (0.9, 0.99), 1e-2, mode, steps=300, seed=1, radius=7.3)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(b.theta_final / 7.3, a.theta_final, atol=1e-8)
    assert b.params["lr"] == pytest.approx(0.05 * 7.3)


def test_adam_moments_per_mode_T45_T46():
    problem = SphereToy(A3, dim=3)
    theta = dynamics.initial_state(problem, 0)
    m = np.zeros_like(theta)
    v = np.zeros(3)
    for k in range(1, 200):
        g = problem.grad(theta)
        new, m_new, v_new = M.adam_step(theta, m, v, g, k, 0.05, (0.9, 0.99), 1e-2, "transport",
                                        "total", 1.0)
        # second moment: the EMA of |g_i|^2, then rescaled by r_i^2 / r_i'^2 (AdamSRT)
        ratio = (theta ** 2).sum(-1) / (new ** 2).sum(-1)
        np.testing.assert_allclose(v_new, (0.99 * v + 0.01 * (g ** 2).sum(-1)) * ratio,
                                   rtol=1e-13)
        assert np.abs((m_new * new).sum(-1)).max() <= 1e-13 * max(np.abs(m_new).max(), 1e-300)
        theta, m, v = new, m_new, v_new


def test_adam_eps_threshold_formula_T46():
    assert M.adam_eps_threshold(A3, (0.9, 0.999), 1e-2) == pytest.approx(
        1.9 * 1e-2 / (math.sqrt(2) * 0.1 * 7))


# -- box counting ---------------------------------------------------------------------------------------------
def test_box_counting_dimension_of_known_sets():
    x = np.arange(1024) < 300  # one crossing: a point
    s, n = M.boundary_box_counts(x)
    assert np.all(n == 1) and M.box_counting_dimension(s, n) == pytest.approx(0.0, abs=1e-12)
    yy, xx = np.mgrid[0:256, 0:256]
    half = xx + 0.37 * yy < 180  # a straight line; boxes of 1-2 cells see the lattice steps
    s, n = M.boundary_box_counts(half)
    assert M.box_counting_dimension(s, n, fit=slice(2, None)) == pytest.approx(1.0, abs=0.05)
    noise = np.random.default_rng(0).random((256, 256)) < 0.5  # fills the plane
    s, n = M.boundary_box_counts(noise)
    assert M.box_counting_dimension(s, n) > 1.9


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_momentum_is_refused_with_its_value(beta):
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got"):
        M.simulate_momentum(A3, 0.1, beta, steps=2)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        M.locate_total_threshold(A3, beta)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        M.momentum_boundary_band(A3, beta, [0])


@pytest.mark.parametrize("mode", ["Official", "projected", "", None, 1])
def test_unknown_mode_is_refused_with_its_value(mode):
    with pytest.raises(ValueError, match=r"momentum_mode must be one of \('official', "
                                         r"'transport'\), got"):
        M.simulate_momentum(A3, 0.1, 0.5, mode, steps=2)
    with pytest.raises(ValueError, match="momentum_mode must be one of"):
        M.locate_total_threshold(A3, 0.5, mode)
    with pytest.raises(ValueError, match="momentum_mode must be one of"):
        M.summarize_momentum_batch(SphereToy(A3), np.ones((1, 3, 2)), 0.1, 0.5, steps=1, tail=1,
                                   momentum_mode=mode)
    with pytest.raises(ValueError, match=r"^mode must be one of"):
        M.simulate_adam(A3, 0.1, mode=mode, steps=2)


def test_other_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"betas\[1\] must be a number in \[0, 1\), got 1.0"):
        M.simulate_adam(A3, 0.1, (0.9, 1.0), steps=2)
    with pytest.raises(ValueError, match="betas must be a pair"):
        M.simulate_adam(A3, 0.1, 0.9, steps=2)
    with pytest.raises(ValueError, match="elr must be a positive finite number, got -1"):
        M.simulate_momentum(A3, -1, 0.5, steps=2)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.2"):
        M.convergence_grid(A3, [1.0], [0.5, 1.2], [0])
    with pytest.raises(ValueError, match="need lo < hi"):
        M.locate_total_threshold(A3, 0.5, lo=0.3, hi=0.2)
    with pytest.raises(ValueError, match="buffer0 must be a finite array of shape"):
        M.simulate_momentum(A3, 0.1, 0.5, steps=2, buffer0=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        M.summarize_momentum_batch(SphereToy(A3), np.ones((1, 3, 2)), 0.1, 0.5, steps=1, tail=1,
                                   optimizer="lion")


# -- the figure's data ----------------------------------------------------------------------------------------------
def test_fig11_quick_data(tmp_path):
    from toymodel.figures import _common as C

    from figures import fig11_momentum_boundary as fig

    paths = fig.main(tmp_path, quick=True)
    data, params = C.load_data(next(p for p in paths if str(p).endswith(".npz")))
    for mode in M.MOMENTUM_MODES:
        ok = data[f"converged_{mode}"].astype(bool)
        c, beta = data["c"], data["beta"]
        # nothing converges above the naive bound (T43); everything converges well below 1
        above = c[:, None] > (1 + beta)[None, :] * 1.02
        assert not ok[above].any()
        assert ok[c < 0.9][:, beta < 0.95].all()
    assert params["quick"] is True
