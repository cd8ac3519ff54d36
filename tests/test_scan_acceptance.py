"""Issue acceptance for scans, at reduced resolution: a phase diagram of alpha = (1, 2, 4).

Labels come from the classifier (observed dynamics); predictions from theory.predict_regime.
The comparison excludes the 5% window around the sharp boundary 1/sum(alpha) and states what
happens in the smooth equilibrium->divergence passage just above 1/min(alpha) (docs/theory.md).
"""
import importlib

import numpy as np
import pytest

import toymodel

A = [1.0, 2.0, 4.0]


@pytest.fixture(scope="module")
def ds():
    return toymodel.scan(A, "1e-2:10:100", seeds=3, steps=20000, tail=2000, backend="numpy",
                         progress_bar=False)


def test_labels_match_theory_away_from_the_boundaries(ds):
    elr = ds["elr"].values
    labels = importlib.import_module("toymodel.scan").decode_regime(ds)  # codes -> label strings
    obs = labels["regime"].values[:, 0, :]
    pred = labels["predicted_regime"].values[:, 0]
    near_total = np.abs(elr * sum(A) - 1) <= 0.05
    band = (elr > 1.0) & (elr <= 1.35)  # just above 1/min(alpha): the smooth passage
    keep = ~near_total & ~band
    assert (obs[keep] == pred[keep, None]).all()
    # inside the band the only disagreement is the documented one: the loss is still below 0.9 of
    # the random level, so the run is labelled an equilibrium where theory says divergence
    wrong = obs[band] != pred[band, None]
    assert (obs[band][wrong] == "chaotic_equilibrium").all()
    assert toymodel.agreement(ds, window=0.05) > 0.95  # labels, not rounding: observed 0.970


def test_tail_loss_matches_equilibrium_loss_in_the_window(ds):
    elr = ds["elr"].values
    c = elr * sum(A)
    win = (c >= 1.1) & (c <= 1.5)
    tl = ds["tail_loss"].values[win, 0, :]
    want = ds["equilibrium_loss"].values[win, 0][:, None]
    rel = np.abs(tl / want - 1)
    # statistics over cells, not rounding: observed median 1.3e-7, all within 1%; a seed on the
    # second orbit (1.2% below L*, docs/theory.md) is decided by a chaotic transient
    assert np.median(rel) < 1e-4
    assert (rel < 0.01).mean() >= 0.9  # a few seeds sit on a second, quasi-periodic orbit
    assert (ds["status"].values == 0).all()


def test_numba_scan_agrees_with_the_numpy_scan(ds):
    pytest.importorskip("numba")
    fast = toymodel.scan(A, "1e-2:10:100", seeds=3, steps=20000, tail=2000, backend="numba",
                         progress_bar=False)
    assert fast.attrs["backend"] == "numba" and ds.attrs["backend"] == "numpy"
    c = ds["elr"].values * sum(A)
    below, window = c <= 0.9, (c >= 1.1) & (c <= 1.5)
    assert fast["tail_loss"].values[below].max() < 1e-12  # convergence level (observed 0.0)
    rel = np.abs(fast["tail_loss"].values[window] / ds["tail_loss"].values[window] - 1)
    # Two operation orders over 20000 steps. Neutral dynamics (lambda ~ 0) let rounding grow about
    # linearly: 20000 x ~30 flops x u ~ 7e-11, / L >= 0.3 -> ~2e-10 relative; cells with a chaotic
    # transient (growth up to 1e12 in 60 steps for c > 1.1) are the outliers (observed max 1.1e-8),
    # which the median ignores (observed median 1e-15). 1e-6 leaves 5000x over the neutral bound.
    assert np.median(rel) < 1e-6  # quasi-periodic there: rounding differences stay small
    # chaotic cells differ in their digits, not in their regime (except right at a criterion)
    # a chaotic cell's tail mean moves by ~1e-3 with rounding (observed <= 1.1e-2): a label flips
    # only within that of a criterion (observed agreement 1.0; 0.98 allows 6 of 300 flips)
    assert (fast["regime"].values == ds["regime"].values).mean() > 0.98


def test_individual_constraint_staircase_agrees_below_the_top_step():
    # below 1/(n min alpha) = 1/3 the staircase is sharp: every label matches away from its first
    # step 1/(n max alpha) = 1/12 (the window agreement() uses under this constraint)
    ind = toymodel.scan(A, "1e-2:0.3:40", seeds=2, steps=6000, tail=600, constraint="individual",
                        backend="numpy", progress_bar=False)
    boundary = importlib.import_module("toymodel.scan").convergence_boundary  # toymodel.scan: the function
    assert float(boundary(ind)[0]) == pytest.approx(1 / 12)
    assert toymodel.agreement(ind, window=0.05) == 1.0
    labels = set(importlib.import_module("toymodel.scan").decode_regime(ind["regime"]).values.ravel())
    assert labels == {"convergence", "chaotic_equilibrium"}
