"""Tail losses of a scan against the orbit envelope (toymodel.scan.loss_agreement, docs/scans.md).

Oracles: a real scan, whose equilibrium cells are fresh draws from the distribution the
envelope's census samples (an exchangeability bound, derived below), and hand-made datasets whose
tail losses are placed on, far outside, or out of the window by construction.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

xr = pytest.importorskip("xarray")

from toymodel import regimes, theory  # noqa: E402
from toymodel._cli_scan import _print_summary  # noqa: E402
from toymodel.scan import LossAgreement, agreement, loss_agreement, scan  # noqa: E402

ALPHAS = (1.0, 2.0, 4.0)
# 20 values of c = elr * sum(alpha) across the whole equilibrium window (1, 7] of alpha = (1, 2, 4)
# (7 = sum(alpha) / min(alpha): elr = 1/min(alpha), the divergence side of T10), plus one ELR
# below it (convergence, c = 0.7) and one above (divergence, c = 14) that must not be compared
WINDOW_ELRS = np.geomspace(1.05, 7.0, 20) / 7.0
STEPS, TAIL, SEEDS = 4000, 1000, 8


@pytest.fixture(scope="module")
def small_scan():
    pytest.importorskip("numba")
    elrs = np.sort(np.concatenate([WINDOW_ELRS, [0.1, 2.0]]))
    return scan(ALPHAS, elrs, seeds=SEEDS, steps=STEPS, tail=TAIL, backend="numba",
                progress_bar=False)


def test_scan_tail_losses_fall_in_the_orbit_envelope(small_scan):
    la = loss_agreement(small_scan, seeds=128, backend="numba")
    assert isinstance(la, LossAgreement)
    # only the window is compared: 20 ELRs x 8 seeds, none left out (nothing unresolved/invalid)
    assert (la.compared, la.unresolved, la.invalid) == (20 * SEEDS, 0, 0)
    assert la.inside + la.outside == la.compared
    # Why 0.95. At one c, the scan's 8 starts and the envelope's 128 (other seeds, same law of the
    # initial state) give 136 exchangeable tail losses: the dynamics are deterministic. Without any
    # margin, the chance that at least j of the 8 exceed the largest of the 128 is at most
    # C(8, j) / C(136, j) (the top j ranks all among the 8): 0.059 for j = 1, 0.003 for j = 2; the
    # same below the smallest. So per c the expected count outside is <= 2 * 8/129 = 0.124, over
    # the 20 independent c's about 2.5 of 160 cells, nearly Poisson: more than 8 outside (fraction
    # below 0.95) has probability ~1e-3. The envelope's margins (2 sigma of the wandering tail
    # means, 2e-3 L*) only lower it; measured: 160 of 160 inside.
    assert float(la) >= 0.95, la


def test_cli_summary_prints_the_envelope_line(small_scan, capsys):
    _print_summary(small_scan, agreement)
    text = capsys.readouterr().out
    m = re.search(r"tail loss within the orbit envelope .* for (\d+) of (\d+) equilibrium cells", text)
    assert m, text
    assert int(m.group(2)) == 20 * SEEDS and int(m.group(1)) >= 0.95 * 20 * SEEDS


# -- hand-made datasets ------------------------------------------------------------------------------
def _dataset(configs, elrs, seeds, constraint="total", problems=None):
    """A scan-shaped dataset (the variables `loss_agreement` reads, as `template` writes them)
    whose tail losses are the L* of T12 in every equilibrium cell and 0 elsewhere."""
    C, G, E, S = len(configs), max(len(a) for a in configs), len(elrs), seeds
    alphas = np.full((C, G), np.nan)
    for j, a in enumerate(configs):
        alphas[j, :len(a)] = a
    pred = np.array([[theory.predict_regime(e, a, constraint) for a in configs] for e in elrs])
    lstar = np.array([[theory.equilibrium_loss(e, a) for a in configs] for e in elrs])
    regime = np.broadcast_to(pred[:, :, None], (E, C, S)).astype("<U19")
    ds = xr.Dataset(
        {"alphas": (("config", "group"), alphas),
         "n_groups": (("config",), np.array([len(a) for a in configs])),
         "dim": (("config",), np.full(C, 2)),
         "problem": (("config",), np.array(problems or ["sphere_toy"] * C)),
         "total_threshold": (("config",), np.array([theory.total_threshold(a) for a in configs])),
         "predicted_regime": (("elr", "config"), pred),
         "equilibrium_loss": (("elr", "config"), lstar),
         "tail_loss": (("elr", "config", "seed"), np.repeat(lstar[:, :, None], S, axis=2)),
         "regime": (("elr", "config", "seed"), regime)},
        coords={"elr": np.asarray(elrs, float), "config": np.arange(C), "seed": np.arange(S)})
    ds.attrs.update(steps=2000, tail=500, constraint=constraint, seeds=json.dumps(list(range(S))))
    return ds


# c = elr * sum(alpha): (1, 2, 4): 0.7 (convergence), 1.4, 2.1, 3.5; (1, 3) (NaN-padded to three
# groups): 0.4, 0.8 (convergence), 1.2, 2.0. Every equilibrium cell starts at its own config's L*,
# which the envelope contains by construction (both ends include L* and a margin >= 2e-3 L*); the
# L* of the two configs at one ELR differ by 2-6x, so mixing up their rows would put cells outside.
HAND_ELRS = [0.1, 0.2, 0.3, 0.5]


@pytest.mark.parametrize("as_codes", [False, True], ids=["labels", "codes"])
def test_hand_made_losses_inside_outside_and_left_out(as_codes):
    if as_codes and not hasattr(regimes, "encode"):
        pytest.skip("regime codes (toymodel.regimes.encode) not in this version")
    ds = _dataset([ALPHAS, (1.0, 3.0), (1.0, 5.0)], HAND_ELRS, seeds=4,
                  problems=["sphere_toy", "sphere_toy", "rayleigh"])
    loss, regime = ds["tail_loss"].values, ds["regime"].values
    # far outside, by construction: the toy loss never exceeds sum(alpha) = 7, the envelope's
    # margin never exceeds 2 * (sum(alpha)/2) (the std of numbers in [0, 7]), so upper <= 14 < 70
    loss[1, 0, 0] = 70.0
    # far outside, measured: at c = 1.4 every attractor lies within 5% of L* (docs/attractors.md)
    loss[1, 0, 1] = 0.5 * loss[1, 0, 2]
    # left out and counted: an unresolved cell, an invalid one, a non-finite loss
    regime[2, 0, 0] = regimes.UNRESOLVED
    regime[3, 1, 0], loss[3, 1, 0] = regimes.INVALID, np.nan
    loss[2, 1, 3] = np.inf
    # not in the window, hence neither compared nor counted: convergence cells of both toys, the
    # Rayleigh config (not a toy: no envelope), an unresolved convergence cell
    loss[0, 0, :], loss[1, 1, :], loss[:, 2, :] = 70.0, 70.0, 70.0
    regime[0, 1, 0] = regimes.UNRESOLVED
    if as_codes:  # a scan stores int8 regime codes; hand-made datasets may hold the labels
        ds = ds.assign(regime=(ds["regime"].dims, regimes.encode(regime)),
                       predicted_regime=(ds["predicted_regime"].dims,
                                         regimes.encode(ds["predicted_regime"].values)))
    la = loss_agreement(ds, seeds=16)
    window = (3 + 2) * 4                   # window cells: 3 ELRs of (1, 2, 4) and 2 of (1, 3)
    assert (la.unresolved, la.invalid) == (1, 2)
    assert la.compared == window - 3 and la.outside == 2
    assert float(la) == pytest.approx((window - 3 - 2) / (window - 3), rel=1e-15)
    assert la.left_out == 3 and "compared=17" in repr(la)


def test_no_equilibrium_cell_is_refused():
    with pytest.raises(ValueError, match="no equilibrium cell to compare"):
        loss_agreement(_dataset([ALPHAS], [0.05, 0.1], seeds=2))           # all convergence
    with pytest.raises(ValueError, match="constraint='individual'"):
        loss_agreement(_dataset([ALPHAS], HAND_ELRS, seeds=2, constraint="individual"))
    ds = _dataset([ALPHAS], HAND_ELRS, seeds=2)
    ds["regime"].values[1:] = regimes.UNRESOLVED
    with pytest.raises(ValueError, match=r"left to compare \(6 unresolved, 0 invalid\)"):
        loss_agreement(ds)


def test_cli_summary_is_silent_without_equilibrium_cells(capsys):
    ds = scan(ALPHAS, [0.05, 0.1], seeds=2, steps=300, tail=60, backend="numpy", progress_bar=False)
    _print_summary(ds, agreement)
    assert "orbit envelope" not in capsys.readouterr().out
