"""Dispatch: toymodel.backend is the one place that picks a backend (STYLE §5)."""
import numpy as np
import pytest

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
    """Same dict, same dtypes, same values as the NumPy path; default alphas and scalar elr broadcast."""
    if kind == "toy":
        prob = SphereToy([1.0, 2.0, 4.0], dim=2)
    else:
        prob = RayleighToy(np.diag([0.0, 1.0, 3.0]) + 0.1)
    th0, w = dynamics.initial_states(prob, [0, 1, 2], twin=True)
    elr = np.array([0.05, 0.1, 2.0])   # the last is chaotic for the toy: compare statuses only
    ref = backend.summarize(prob, th0, elr, steps=20, tail=8, twin_dirs=w, backend="numpy")
    got = backend.summarize(prob, th0, elr, steps=20, tail=8, twin_dirs=w, backend=name)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape, key
    for nm in dynamics.SUMMARY_NAMES:
        np.testing.assert_allclose(got[nm][:2], ref[nm][:2], rtol=1e-12, atol=1e-6 if nm == "lyapunov" else 1e-12)
    np.testing.assert_array_equal(got["status"], ref["status"])
    assert np.array_equal(th0, dynamics.initial_states(prob, [0, 1, 2]))   # input not modified
    scalar = backend.summarize(prob, th0, 0.05, steps=20, tail=8, backend=name)
    np.testing.assert_allclose(scalar["tail_loss"][0], ref["tail_loss"][0], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_overflowing_elr_is_flagged_through_the_dispatch():
    prob = SphereToy([1.0, 2.0])
    th0 = dynamics.initial_states(prob, [0, 1])
    got = backend.summarize(prob, th0, [0.1, 1e300], steps=10, tail=3, backend="auto")
    assert got["status"][0] == 0 and got["status"][1] != 0 and got["bad_step"][1] >= 0
    assert np.isnan(got["tail_loss"][1]) and np.isfinite(got["tail_loss"][0])
    assert int(got["status"][1]) in dynamics.INVALID_REASONS


def test_cupy_arrays_need_the_cupy_backend():
    cupy = pytest.importorskip("cupy")
    x = cupy.ones((1, 1, 2))
    with pytest.raises(ValueError, match="CuPy arrays"):
        backend.resolve("numba", x)
