"""toymodel.simulate picks the specification; it adds no dynamics of its own (same bits as the spec)."""
import numpy as np
import pytest

import toymodel as tm
from toymodel import conventional, dynamics


def test_fixed_elr_is_the_projected_gd_spec():
    a = tm.simulate([1, 2, 4], 0.2, 300, seed=3)
    b = dynamics.simulate([1, 2, 4], 0.2, 300, seed=3)
    np.testing.assert_array_equal(a.loss, b.loss)  # same function, same inputs: same bits
    np.testing.assert_array_equal(a.theta_final, b.theta_final)


def test_constraint_none_is_conventional_training_with_an_elr_trace():
    a = tm.simulate([1, 2, 4], lr=0.1, weight_decay=0.05, constraint="none", steps=400, seed=1)
    b = conventional.simulate_wd(tm.SphereToy([1, 2, 4]), 0.1, 0.05, steps=400, seed=1)
    assert isinstance(a, tm.Trajectory)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.elr, b.elr)
    # the recorded effective ELR is eta/((1 - eta*lambda)|theta_t|^2) (T20), not a constant
    assert a.elr.shape == a.loss.shape and np.ptp(a.elr) > 0


@pytest.mark.parametrize("kw, match", [
    (dict(elr=0.2, steps=10, lr=0.1), "lr and weight_decay apply to constraint='none'"),
    (dict(elr=0.2, steps=10, weight_decay=0.1), "lr and weight_decay apply"),
    (dict(elr=0.2, steps=10, constraint="none", lr=0.1), "takes lr= and weight_decay=, not elr"),
    (dict(steps=10, constraint="none"), "needs lr=, weight_decay= and steps="),
    (dict(steps=10), "simulate needs elr= and steps="),
])
def test_mixed_or_missing_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        tm.simulate([1, 2, 4], **kw)


def test_momentum_zero_is_projected_gd_and_momentum_runs_dispatch():
    a = tm.simulate([1, 2, 4], 0.2, 300, seed=2, momentum=0.0)
    b = dynamics.simulate([1, 2, 4], 0.2, 300, seed=2)
    np.testing.assert_array_equal(a.loss, b.loss)  # beta = 0 is the same step, same bits
    from toymodel import momentum
    c = tm.simulate([1, 2, 4], 0.1, 300, seed=2, momentum=0.5, momentum_mode="transport")
    d = momentum.simulate_momentum([1, 2, 4], 0.1, 0.5, "transport", steps=300, seed=2)
    np.testing.assert_array_equal(c.loss, d.loss)
    assert not np.array_equal(c.loss, tm.simulate([1, 2, 4], 0.1, 300, seed=2, momentum=0.5).loss)
    with pytest.raises(ValueError, match="fixed ELR"):
        tm.simulate([1, 2, 4], 0.1, 300, momentum=0.5, lr=0.1)


def test_solvers_threshold_with_momentum_reports_a_boundary():
    import warnings

    from toymodel import momentum, solvers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", momentum.MultipleCrossingsWarning)
        bd = solvers.locate_total_threshold([1, 3], momentum=0.3, seed=0, steps=4000, tail=400)
    # heavy ball converges only below the linear bound c < 1 + beta (docs/momentum.md T43)
    assert isinstance(bd, momentum.Boundary) and 1.0 < bd.c <= 1.3 * (1 + 1e-3)
    with pytest.raises(ValueError, match="summarize applies to plain projected GD"):
        solvers.locate_total_threshold([1, 3], momentum=0.3, summarize=dynamics.summarize_batch)
