"""Dispatch: toymodel.backend is the one place that picks a backend (STYLE §5)."""
import numpy as np
import pytest
from _tolerances import assert_matches, close, finite_time_lyapunov, tolerance

from toymodel import backend, dynamics
from toymodel._deps import has
from toymodel.problems import RayleighToy, SphereToy


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve("tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.summarize(SphereToy([1.0]), np.ones((1, 1, 2)), [0.1], steps=2, tail=1,
                          backend="NUMBA")


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_auto_picks_numba_for_numpy_inputs_and_numpy_for_other_problems():
    x = np.ones((2, 1, 2))
    assert backend.resolve("auto", x) == "numba"
    assert backend.resolve("auto", x, problem=object()) == "numpy"
    assert "numba" in backend.available_backends()


def test_disabled_numba_falls_back_and_explicit_request_names_the_install(monkeypatch):
    monkeypatch.setenv("TOYMODEL_DISABLE", "numba,numba_cuda,cupy")
    assert backend.resolve("auto", np.ones(3)) == "numpy"
    assert backend.available_backends() == ("numpy",)
    for name, hint in (("numba", "toymodel\\[numba\\]"), ("cuda", "toymodel\\[gpu\\]"),
                       ("cupy", "toymodel\\[gpu\\]")):
        with pytest.raises(ImportError, match=hint):
            backend.resolve(name)


@pytest.mark.skipif(has("cupy"), reason="CuPy installed")
def test_cupy_without_cupy_is_unavailable():
    with pytest.raises(backend.BackendUnavailable, match="cupy"):
        backend.resolve("cupy")


def test_bad_arguments_are_value_errors():
    prob = SphereToy([1.0, 2.0])
    th0 = dynamics.initial_states(prob, [0, 1])
    for kw, msg in ((dict(steps=0, tail=1), "steps"), (dict(steps=5, tail=6), "tail"),
                    (dict(steps=5, tail=2, constraint="both"), "constraint")):
        with pytest.raises(ValueError, match=msg):
            backend.summarize(prob, th0, [0.1, 0.1], backend="numpy", **kw)
    if has("numba"):
        with pytest.raises(ValueError, match="theta0 must have shape"):
            backend.summarize(prob, th0[:, :1], [0.1, 0.1], steps=2, tail=1, backend="numba")
        with pytest.raises(ValueError, match="float64 or float32"):
            backend.summarize(prob, th0.astype(np.float16), [0.1, 0.1], steps=2, tail=1,
                              backend="numba")
        with pytest.raises(ValueError, match="twin_dirs"):
            backend.summarize(prob, th0, [0.1, 0.1], steps=2, tail=1, backend="numba",
                              twin_dirs=np.ones((1, 2, 2)))


class _Other:
    """A problem without a kernel: only the NumPy path runs it."""


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_kernel_backends_refuse_problems_without_kernels():
    with pytest.raises(ValueError, match="SphereToy and RayleighToy"):
        backend.summarize(_Other(), np.ones((1, 1, 2)), [0.1], steps=2, tail=1, backend="numba")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", [n for n in ("numba", "cuda") if n in backend.available_backends()])
@pytest.mark.parametrize("kind", ["toy", "rayleigh"])
def test_summarize_matches_numpy_through_the_dispatch(name, kind):
    """Same dict (plus the name of the backend that ran), same dtypes, same values as the NumPy
    path; default alphas and scalar elr broadcast. Values within the derived bound of
    tests/_tolerances.py: the converging cells (elr 0.05, 0.1) to the 1e-12 contract, the toy's
    chaotic third cell (elr 2, c = 14, lambda ~ 0.15) to the chaos-aware bound ~1e-12 x e^(lambda steps)."""
    if kind == "toy":
        prob = SphereToy([1.0, 2.0, 4.0], dim=2)
    else:
        prob = RayleighToy(np.diag([0.0, 1.0, 3.0]) + 0.1)
    th0, w = dynamics.initial_states(prob, [0, 1, 2], twin=True)
    elr = np.array([0.05, 0.1, 2.0])
    ref = backend.summarize(prob, th0, elr, steps=20, tail=8, twin_dirs=w, backend="numpy")
    got = backend.summarize(prob, th0, elr, steps=20, tail=8, twin_dirs=w, backend=name)
    assert ref["backend"] == "numpy" and got["backend"] == name
    assert set(got) == set(ref)
    for key in set(ref) - {"backend"}:
        assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape, key
    lam = finite_time_lyapunov(prob, th0, elr, steps=20, twin_dirs=w)
    tol = tolerance(np.float64, prob, steps=20, tail=8, lyap_ft=lam)
    converging = lam <= 0
    assert converging[:2].all() and np.all(tol["rtol"][converging] <= 1e-12)   # the contract
    assert_matches(got, ref, tol)
    assert np.array_equal(th0, dynamics.initial_states(prob, [0, 1, 2]))   # input not modified
    scalar = backend.summarize(prob, th0, 0.05, steps=20, tail=8, backend=name)
    close("tail_loss", scalar["tail_loss"][:1], ref["tail_loss"][:1], tol["rtol"][:1],
          tol["atol"][:1])


@pytest.mark.skipif(not has("numba"), reason="no numba")
@pytest.mark.parametrize("constraint", ["total", "individual"])
def test_phase_diagram_batches_take_the_lane_vectorised_kernel(constraint):
    """A batch of a phase diagram (many cells of n = 3, d = 2) runs numba's SoA kernel through the
    dispatch and matches the NumPy path to the derived bound: converging cells (c < 1) and,
    20 steps in, the chaotic ones (chaos-aware bound), twin included, alphas per cell."""
    from toymodel.kernels import numba_cpu

    prob = SphereToy([1.0, 2.0, 4.0], dim=2)
    B = 90
    th0, w = dynamics.initial_states(prob, list(range(B)), constraint, twin=True)
    assert numba_cpu.use_soa(B, 3, 2)
    alphas = np.tile(prob.alphas, (B, 1)) * np.linspace(0.5, 1.5, B)[:, None]
    elr = np.geomspace(0.3, 3.0, B) / alphas.sum(1)
    kw = dict(steps=20, tail=8, constraint=constraint, alphas=alphas, twin_dirs=w)
    ref = backend.summarize(prob, th0, elr, backend="numpy", **kw)
    got = backend.summarize(prob, th0, elr, backend="numba", **kw)
    assert got["backend"] == "numba"
    lam = finite_time_lyapunov(prob, th0, elr, steps=20, constraint=constraint, alphas=alphas,
                               twin_dirs=w)
    assert_matches(got, ref, tolerance(np.float64, prob, steps=20, tail=8, alphas=alphas,
                                       lyap_ft=lam))


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_overflowing_elr_is_flagged_through_the_dispatch():
    prob = SphereToy([1.0, 2.0])
    th0 = dynamics.initial_states(prob, [0, 1])
    got = backend.summarize(prob, th0, [0.1, 1e300], steps=10, tail=3, backend="auto")
    assert got["status"][0] == 0 and got["status"][1] != 0 and got["bad_step"][1] >= 0
    assert np.isnan(got["tail_loss"][1]) and np.isfinite(got["tail_loss"][0])
    assert int(got["status"][1]) in dynamics.INVALID_REASONS


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", [n for n in ("numba", "cuda") if n in backend.available_backends()])
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_backend_gives_the_spec_status_through_the_dispatch(name, dt):
    """The reliability issue: float32 at ELR 1e30 was `invalid` (status 2) with backend='numpy'
    and a finite 'divergence' with numba. Through the dispatch, statuses, bad steps and the
    invalid-cell reasons now agree in float32 and float64, with the float64 ELRs of a scan."""
    prob = SphereToy([1.0, 2.0, 4.0], dim=3)
    th0 = dynamics.initial_states(prob, [0, 1, 2, 3, 4]).astype(dt)
    th0[4, 1] = 0.0                                   # a zero-norm group
    elr = np.array([1e30, 1e38, 1e300, 1e-300, 0.1])  # float64, as scan passes them
    ref = backend.summarize(prob, th0, elr, steps=6, tail=3, backend="numpy")
    got = backend.summarize(prob, th0, elr, steps=6, tail=3, backend=name)
    np.testing.assert_array_equal(got["status"], ref["status"])
    np.testing.assert_array_equal(got["bad_step"], ref["bad_step"])
    np.testing.assert_array_equal(dynamics.status_reasons(got["status"]),
                                  dynamics.status_reasons(ref["status"]))
    assert ref["status"][4] != 0 and ref["status"][3] == 0 and ref["status"][2] != 0


def test_every_backend_reports_its_name():
    prob = SphereToy([1.0, 2.0])
    th0 = dynamics.initial_states(prob, [0])
    for name in backend.available_backends():
        if name == "cupy":
            continue
        res = backend.summarize(prob, th0, [0.1], steps=3, tail=1, backend=name)
        assert res["backend"] == name
    assert backend.summarize(prob, th0, [0.1], steps=3, tail=1, backend="auto")["backend"] == \
        backend.resolve("auto", th0, problem=prob)


def test_cupy_arrays_need_the_cupy_backend():
    cupy = pytest.importorskip("cupy")
    x = cupy.ones((1, 1, 2))
    with pytest.raises(ValueError, match="CuPy arrays"):
        backend.resolve("numba", x)


@pytest.mark.parametrize("fn, kw, match", [
    ("summarize_wd", {"lr": -0.1, "weight_decay": 0.1}, r"lr must be positive and finite .* got -0\.1"),
    ("summarize_wd", {"lr": 2.0, "weight_decay": [0.1, 0.6]}, r"lr=2\.0, weight_decay=0\.6 \(product 1\.2"),
    ("summarize_wd", {"lr": 1.0, "weight_decay": -1.0}, r"weight_decay must be finite numbers >= 0, got -1\.0"),
    ("summarize_momentum", {"elr": 0.1, "momentum": 1.5}, r"momentum must be in \[0, 1\), got 1\.5"),
    ("summarize_momentum", {"elr": 0.0, "momentum": 0.5}, r"elr must be positive and finite .* got 0\.0"),
    ("summarize_momentum", {"elr": 0.1, "momentum": 0.5, "optimizer": "adam", "beta2": 1.0},
     r"beta2 must be a number in \[0, 1\), got 1\.0"),
    ("summarize_momentum", {"elr": 0.1, "momentum": 0.5, "optimizer": "adam", "eps": 0.0}, r"eps"),
])
def test_mode_entry_points_refuse_bad_parameters_naming_them(fn, kw, match):
    p = SphereToy([1.0, 2.0, 4.0])
    theta0 = dynamics.initial_states(p, [0, 1])
    with pytest.raises(ValueError, match=match):
        getattr(backend, fn)(p, theta0, steps=4, tail=2, backend="numpy", **kw)
