"""Every attractor of fixed-ELR GD (toymodel.census, docs/attractors.md T30-T37).

Oracles: the closed forms of T12/T30-T32/T36 and the reference stepper `dynamics.simulate`;
orbits are constructed from rounded coordinates and refined by Newton's method, then the census
must name them. Every tolerance is derived in a comment next to it.
"""
from __future__ import annotations

import numpy as np
import pytest

from toymodel import census, dynamics, orbits, theory
from toymodel.problems import SphereToy

ALPHAS = np.array([1.0, 2.0, 4.0])
# the period-5 orbit of alpha = (1, 2, 4) at c = 1.3 with no cluster (docs/attractors.md), to 4
# digits: folded angles (deg) and shares at one point of the orbit
P5_PSI_DEG, P5_SHARES = (34.44, 6.23, 15.77), (0.1736, 0.4238, 0.4026)
# the period-6 orbit at c = 1.2 in which groups 2 and 3 lock together (T33)
P6_PSI_DEG, P6_SHARES = (4.19, 18.19, 18.19), (0.1114, 0.2962, 0.5924)


def _orbit(alphas, c, psi_deg, shares, period):
    theta = orbits._state2(np.radians(psi_deg), np.asarray(shares) / np.sum(shares))
    return census.periodic_orbit(alphas, c, theta, period)


@pytest.fixture(scope="module")
def p5():
    return _orbit(ALPHAS, 1.3, P5_PSI_DEG, P5_SHARES, 5)


@pytest.fixture(scope="module")
def p6():
    return _orbit(ALPHAS, 1.2, P6_PSI_DEG, P6_SHARES, 6)


def _folded_step(x, alphas, elr):
    return orbits._p_map(x, 1, alphas, elr)


# -- closed forms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alphas", [(1.0, 3.0), (1.0, 2.0, 4.0, 8.0)])
@pytest.mark.parametrize("c", [1.05, 1.3, 2.5])
def test_synchronized_point_is_fixed_and_its_spectrum_is_T31(alphas, c):
    a = np.array(alphas)
    psi, s = census.synchronized_point(a, c)
    x0 = orbits._pack(psi, s)
    elr = c / a.sum()
    # a fixed point of the folded map (T30): rounding only, a few ulps per step
    np.testing.assert_allclose(_folded_step(x0, a, elr), x0, atol=1e-13)
    h = 1e-6
    m = x0.size
    J = np.empty((m, m))
    for j in range(m):
        e = np.zeros(m)
        e[j] = h
        J[:, j] = (_folded_step(x0 + e, a, elr) - _folded_step(x0 - e, a, elr)) / (2 * h)
    got = np.sort_complex(np.round(np.linalg.eigvals(J), 6))
    want = np.sort_complex(np.round(census.linear_spectrum(c, a.size), 6))
    # central differences: truncation O(h^2 f''') ~ 1e-12 and rounding ~ eps/h ~ 1e-10 per entry;
    # the double eigenvalues e^{+-2i Delta} are defective-free (two copies of one 2x2 block, T31),
    # so their perturbation is linear in the entry error: 1e-6 leaves a wide margin
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_resonances_T32():
    res = {(m, p): c for m, p, c in census.resonances(10)}
    assert res[(1, 4)] == pytest.approx(np.sqrt(2.0), rel=1e-15)
    assert res[(1, 6)] == pytest.approx(2.0 / np.sqrt(3.0), rel=1e-15)
    assert res[(1, 3)] == pytest.approx(2.0, rel=1e-15)
    assert (2, 4) not in res and (1, 2) not in res  # lowest terms, m/p < 1/2
    for (m, p), c in res.items():
        # at c_{m/p} the neutral pair turns by 2*pi*m/p per step: its p-th power is 1 (rounding)
        lam = census.linear_spectrum(c, 2)[1]
        assert abs(lam ** p - 1.0) < 1e-12


def test_area_form_of_one_group_T34():
    """det d(phi', log k')/d(phi, log k) = sin 2phi'/sin 2phi at fixed normalisation Z."""
    rng = np.random.default_rng(3)

    def f(v, Z):
        phi, logk = v
        k = np.exp(logk)
        D = np.arctan(k * np.sin(2 * phi))
        return np.array([phi - D, logk - np.log1p(np.tan(D) ** 2) + np.log(Z)])

    for _ in range(20):
        v = np.array([rng.uniform(0.05, 1.5), np.log(rng.uniform(0.3, 5.0))])
        Z, h = rng.uniform(0.5, 2.0), 1e-6
        J = np.column_stack([(f(v + e, Z) - f(v - e, Z)) / (2 * h) for e in np.eye(2) * h])
        phi2 = f(v, Z)[0]
        # central differences: O(h^2) truncation, eps/h rounding on entries of size <= ~10
        assert np.linalg.det(J) == pytest.approx(np.sin(2 * phi2) / np.sin(2 * v[0]), abs=1e-7)


# -- the census names constructed orbits ---------------------------------------------------------------
def test_census_names_a_constructed_synchronized_cycle():
    a, c = np.array([1.0, 3.0]), 1.3
    psi, s = census.synchronized_point(a, c)
    theta = orbits._state2(psi, s)
    # a small kick off the cycle: the census must still find it (it attracts, slowly, T31)
    starts = np.stack([theta, theta + 1e-3 * np.array([[0.0, 1.0], [1.0, 0.0]])])
    res = census.orbit_census(a, [c], theta0=starts, steps=4000, tail=1000, as_dataset=False)
    assert (res["orbit"] == "synchronized").all()
    assert (res["period"] == 1).all() and (res["clusters"] == 1).all()
    # the exact cycle stays put (rounding); the kicked one oscillates with amplitude ~1e-3 in the
    # neutral modes, which moves the tail mean by second order, < 1e-5 of L*
    assert abs(res["loss_ratio"][0, 0] - 1.0) < 1e-10
    assert abs(res["loss_ratio"][0, 1] - 1.0) < 1e-5
    np.testing.assert_allclose(res["basin"].sum(-1), 1.0, rtol=0, atol=1e-12)


def test_census_names_constructed_lower_orbits(p5, p6):
    starts = np.stack([p5.state(0), p5.state(2)])
    res = census.orbit_census(ALPHAS, [1.3], theta0=starts, steps=500, tail=500, as_dataset=False)
    assert (res["orbit"] == "periodic").all() and (res["period"] == 5).all()
    assert (res["clusters"] == 3).all()
    # the orbit attracts (all multipliers < 1), so a start on it stays on it to rounding; the tail
    # (100 whole periods) and the window's whole periods both average the orbit's p losses exactly
    np.testing.assert_allclose(res["orbit_loss"][0], p5.loss, rtol=1e-10)
    np.testing.assert_allclose(res["tail_loss"][0], p5.loss, rtol=1e-10)
    res6 = census.orbit_census(ALPHAS, [1.2], theta0=p6.state(0)[None], steps=600, tail=600,
                               as_dataset=False)
    assert res6["orbit"][0, 0] == "periodic" and res6["period"][0, 0] == 6
    assert res6["cluster_of"][0, 0].tolist() == [0, 1, 1]  # groups 2 and 3 locked (T33)


def test_lower_orbit_characterisation_matches_direct_simulation(p5, p6):
    # p5: exact period 5, no cluster, attracting, loss 4.3% below L* (docs/attractors.md)
    assert p5.period == 5 and p5.clusters == [[0], [1], [2]]
    assert p5.max_modulus < 0.95 and p5.residual < 1e-12
    assert p5.loss_ratio == pytest.approx(0.95708, abs=5e-6)
    elr = 1.3 / ALPHAS.sum()
    tr = dynamics.simulate(SphereToy(ALPHAS), elr, 10 * p5.period, theta0=p5.state(0))
    # the reference stepper returns to the folded point after p steps and repeats the p losses
    # (rounding grows by at most the multipliers, < 1, per period: 1e-12 is ~1e4 ulps)
    psi, s = census.quotient_coords(tr.theta_final)
    np.testing.assert_allclose(psi, p5.psi[0], atol=1e-12)
    np.testing.assert_allclose(s, p5.shares[0], atol=1e-12)
    np.testing.assert_allclose(tr.loss[:5], p5.losses, rtol=1e-12)
    # from a random start (seed 27 falls into this basin): after 20 000 steps the distance to the
    # orbit has shrunk by 0.89^4000; the tail of T = 2000 = 400 p steps then averages whole periods,
    # and in general |tail mean - orbit mean| <= (p - 1)/T * (max - min loss on the orbit)
    rep = census.characterize(ALPHAS, 1.3, seed=27)
    assert rep.orbit == "periodic" and rep.period == 5
    bound = (p5.period - 1) / 2000 * np.ptp(p5.losses)
    assert abs(rep.tail_loss - p5.loss) <= bound
    assert rep.refined.loss == pytest.approx(p5.loss, rel=1e-12)
    # T35: on a periodic orbit every group has the same mean log sec^2 of its step angle
    theta, acc = p5.state(0), np.zeros(3)
    for _ in range(p5.period):
        g = SphereToy(ALPHAS).grad(theta)
        sq = (theta ** 2).sum(-1)
        tan = elr / sq * np.sqrt(sq * (g ** 2).sum(-1))
        acc += np.log1p(tan ** 2)
        theta = dynamics.step(theta, g, elr, "total", 1.0)
    np.testing.assert_allclose(acc, acc[0], rtol=1e-12)
    # p6 and T33: the cluster {2, 3} acts as one group with alpha = 6, so the two-group toy
    # alpha = (1, 6) has the same orbit and loss (rounding), the cluster's relative mode is neutral
    assert p6.period == 6 and p6.clusters == [[0], [1, 2]]
    reduced = orbits._state2(p6.psi[0][:2], np.array([p6.shares[0][0], p6.shares[0][1:].sum()]))
    two = census.periodic_orbit([1.0, 6.0], 1.2, reduced, 6)
    assert two.loss == pytest.approx(p6.loss, rel=1e-12)
    assert np.sort(np.abs(p6.multipliers))[-2:] == pytest.approx([1.0, 1.0], abs=1e-6)


# -- basins and envelope -----------------------------------------------------------------------------
def test_basin_fractions_sum_to_one_and_follow_the_regimes():
    res = census.orbit_census([1.0, 3.0], [0.8, 1.3, 2.5], seeds=12, steps=6000, tail=1000,
                              as_dataset=False)
    np.testing.assert_allclose(res["basin"].sum(-1), 1.0, rtol=0, atol=1e-12)
    assert (res["orbit"][0] == "convergence").all()           # c < 1 (T12)
    assert not np.isin(res["orbit"][1:], ("convergence",)).any()  # c > 1 never converges (T10)
    assert (res["orbit"][2] == "chaotic").all()               # measured: chaos from c ~ 1.8
    with pytest.raises(ValueError, match="unknown orbit labels"):
        census.basin_fractions([["synchronized", "lower"]])


@pytest.mark.parametrize("alphas, cs", [((1.0, 3.0), (1.2, 1.45, 2.0, 3.5)),
                                        ((1.0, 2.0, 4.0, 8.0), (1.2, 1.45, 2.0, 6.0))])
def test_envelope_contains_simulated_tail_losses(alphas, cs):
    steps, tail = 20000, 2000
    env = census.envelope(alphas, cs, seeds=64, steps=steps, tail=tail)
    assert (env["lower"] <= env["equilibrium_loss"]).all()
    assert (env["equilibrium_loss"] <= env["upper"]).all()
    a = np.array(alphas)
    problem = SphereToy(a)
    theta0 = dynamics.initial_states(problem, range(16))   # seeds the envelope never ran
    from toymodel import backend
    losses = np.stack([backend.summarize(problem, theta0, np.full(16, c / a.sum()), steps=steps,
                                         tail=tail)["tail_loss"] for c in cs])
    inside = census.within_envelope(losses, env)
    assert inside.all(), (np.argwhere(~inside), losses[~inside], env)


# -- directions on the sphere ------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 5])
def test_uniform_direction_mean_loss_T36(dim):
    a = np.array([1.0, 2.0, 4.0])
    rng = np.random.default_rng(11)
    N = 40000
    u = rng.standard_normal((N, a.size, dim))            # uniform on S^{d-1} after normalising
    loss = SphereToy(a, dim=dim).loss(u)
    mean, var = census.uniform_loss_moments(a, dim)
    # CLT: the sample mean of N iid losses has standard error sqrt(var/N); 5 of them bound a
    # two-sided miss at probability 6e-7
    assert abs(loss.mean() - mean) < 5 * np.sqrt(var / N)
    # the sample variance (for the tolerance above to mean anything): its own relative standard
    # error is below sqrt(2/N)*sqrt(kurtosis) < 0.03 for a bounded loss
    assert loss.var() == pytest.approx(var, rel=0.05)
    # on a great circle through e_1 (what the dynamics visit, T37) the mean is the random level
    phi = rng.uniform(0, 2 * np.pi, (N, a.size))
    circle = (a * np.sin(phi) ** 2).sum(-1)
    m2, v2 = census.uniform_loss_moments(a, dim, on_circle=True)
    assert m2 == theory.random_loss(a)
    assert abs(circle.mean() - m2) < 5 * np.sqrt(v2 / N)
    if dim == 2:
        assert (mean, var) == (m2, v2)   # in d = 2 the sphere is the circle


def test_each_group_keeps_its_great_circle_T37():
    problem = SphereToy([1.0, 2.0, 4.0], dim=4)
    tr = dynamics.simulate(problem, 3.0, 3000, seed=5)
    th0 = dynamics.initial_state(problem, 5)
    for i in range(3):
        perp0 = th0[i, 1:] / np.linalg.norm(th0[i, 1:])
        perp = tr.theta_final[i, 1:]
        # the perpendicular part stays parallel to its start: rounding per step ~1e-16, 3000 steps
        resid = perp - (perp @ perp0) * perp0
        assert np.linalg.norm(resid) < 1e-10


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: census.orbit_census([1, -2], [1.2]), "alphas"),
    (lambda: census.orbit_census([1, 2], [1.2, 0.0]), "c_values"),
    (lambda: census.orbit_census([1, 2], [np.nan]), "c_values"),
    (lambda: census.orbit_census([1, 2], "1.2"), "c_values"),
    (lambda: census.orbit_census([1, 2], [1.2], seeds=[0, -1]), "seed"),
    (lambda: census.orbit_census([1, 2], [1.2], seeds=0), "seeds"),
    (lambda: census.orbit_census([1, 2], [1.2], steps=10, tail=20), "tail"),
    (lambda: census.orbit_census([1, 2], [1.2], backend="gpu"), "backend"),
    (lambda: census.orbit_census([1, 2], [1.2], max_period=0), "max_period"),
    (lambda: census.orbit_census([1, 2], [1.2], dim=1), "dim"),
    (lambda: census.orbit_census([1, 2], [1.2], theta0=np.ones((3, 2, 3))), r"\(\.\.\., 2, 2\)"),
    (lambda: census.orbit_census([1, 2], [1.2], as_dataset="yes"), "as_dataset"),
    (lambda: census.synchronized_point([1, 2], 0.9), "must exceed 1"),
    (lambda: census.linear_spectrum(1.5, 0), "n_groups"),
    (lambda: census.resonances(2), "max_period"),
    (lambda: census.uniform_sin2_law(1), "dim"),
    (lambda: census.periodic_orbit([1, 2], 1.3, np.ones((2, 2)), 0), "period"),
    (lambda: census.periodic_orbit([1, 2], 1.3, np.ones((3, 2)), 2), r"\(\.\.\., 2, 2\)"),
    (lambda: census.envelope([1, 2], [1.2], widen=-1), "widen"),
    (lambda: census.envelope([1, 2], [1.2], rtol=np.inf), "rtol"),
])
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_newton_refuses_a_start_off_any_orbit():
    # a point of a chaotic orbit (c = 3) is not near any periodic orbit of period 7
    rep = census.characterize([1.0, 3.0], 3.0, seed=0, steps=3000, tail=500)
    assert rep.orbit == "chaotic" and rep.refined is None
    with pytest.raises(ValueError, match="no periodic orbit of period 7"):
        census.periodic_orbit([1.0, 3.0], 3.0, rep.theta, 7)


def test_dataset_when_xarray_is_installed():
    pytest.importorskip("xarray")
    ds = census.orbit_census([1.0, 3.0], [1.3], seeds=4, steps=2000, tail=500)
    assert ds["orbit"].dims == ("c", "seed") and ds["basin"].dims == ("c", "orbit_class")
    assert list(ds["orbit_class"].values) == list(census.ORBITS)
    np.testing.assert_allclose(ds["basin"].sum("orbit_class"), 1.0)
