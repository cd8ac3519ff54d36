"""Every compiled kernel equals the specification ``dynamics.summarize_batch`` on identical inputs.

Kernels are called directly with preallocated outputs (their contract). ``cuda`` runs under the
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by conftest); ``cupy_sim`` runs the CuPy module's
host loop on NumPy arrays under the simulator; ``cupy`` runs only on a machine with a GPU.
Tolerances (docs/backends.md): float64 rtol = atol = 1e-12, Lyapunov atol 1e-6 (the twin's
separation carries only half the digits, eps = sqrt(machine eps)); float32 rtol 1e-3, atol 1e-6,
Lyapunov atol 1e-3.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toymodel import dynamics
from toymodel._deps import has
from toymodel.problems import RayleighToy, SphereToy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # simulator overflow warnings


def _cuda_ok():
    if not has("numba_cuda"):
        return False
    from toymodel.kernels import numba_cuda

    return numba_cuda.is_available()


def _cupy_ok():
    if not has("cupy"):
        return False
    from toymodel.kernels import cupy_gpu

    return cupy_gpu.is_available()


KERNELS = [pytest.param("numba", marks=pytest.mark.skipif(not has("numba"), reason="no numba")),
           pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_ok(), reason="no CUDA/simulator")),
           pytest.param("cupy_sim", marks=pytest.mark.skipif(not _cuda_ok(), reason="no CUDA/simulator")),
           pytest.param("cupy", marks=pytest.mark.skipif(not _cupy_ok(), reason="no CuPy device"))]
NAMES = dynamics.SUMMARY_NAMES


def run_kernel(kind, problem, theta0, elr, *, steps, tail, constraint="total", alphas=None,
               twin_dirs=None):
    """Call the kernel of ``kind`` with preallocated outputs; return the spec's dict layout."""
    dt = theta0.dtype
    B, n, d = theta0.shape
    al = np.ascontiguousarray(np.broadcast_to(problem.alphas if alphas is None else alphas,
                                              (B, n)), dtype=dt)
    use = twin_dirs is not None
    w = np.ascontiguousarray(twin_dirs, dtype=dt) if use else np.zeros((1, n, d), dt)
    fi = np.finfo(dt)
    args = dict(eps=dt.type(np.sqrt(fi.eps)), tiny=dt.type(fi.tiny))
    theta = theta0.copy()
    el = np.ascontiguousarray(elr, dtype=dt)
    out = np.full((len(NAMES), B), -7.0, dt)     # sentinel: every entry must be overwritten
    status = np.full(B, 99, np.int8)
    bad = np.full(B, -99, np.int64)
    xp = np
    if kind == "numba":
        from toymodel.kernels import numba_cpu as m
        toy, ray = m.toy_kernel, m.rayleigh_kernel
    elif kind == "cuda":
        from toymodel.kernels import numba_cuda as m
        toy, ray = m.toy, m.rayleigh
    else:
        from toymodel.kernels import cupy_gpu as m
        toy, ray = m.toy, m.rayleigh
        if kind == "cupy":
            import cupy as xp
            theta, el, al, w, out = map(xp.asarray, (theta, el, al, w, out))
            status, bad = xp.zeros(B, np.int8), xp.full(B, -1, np.int64)
    if isinstance(problem, RayleighToy):
        Bs = xp.asarray(problem.A - problem.lambda_min * np.eye(problem.dim), dtype=dt)
        ray(theta, Bs, el, al, w, use, steps, tail, args["eps"], args["tiny"], out, status, bad)
    else:
        toy(theta, el, al, w, use, constraint == "individual", steps, tail, args["eps"],
            args["tiny"], out, status, bad)
    if kind == "cupy":
        theta, out, status, bad = (a.get() for a in (theta, out, status, bad))
    res = {nm: out[j] for j, nm in enumerate(NAMES)}
    res.update(status=status, bad_step=bad, theta_final=theta)
    return res


def assert_matches(got, ref, rtol=1e-12, atol=1e-12, lyap_atol=1e-6, scale=1.0):
    np.testing.assert_array_equal(got["status"], ref["status"])
    np.testing.assert_array_equal(got["bad_step"], ref["bad_step"])
    for nm in NAMES:
        a = lyap_atol if nm == "lyapunov" else atol * scale
        np.testing.assert_allclose(got[nm], ref[nm], rtol=rtol, atol=a, err_msg=nm)
    np.testing.assert_allclose(got["theta_final"], ref["theta_final"], rtol=rtol, atol=atol * 10)


def _steps(kind):
    # the simulator interprets every thread in Python: keep its runs short
    return (60, 20) if kind == "numba" else (16, 6)


toy_cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "d": st.integers(2, 4), "B": st.integers(1, 3),
    "constraint": st.sampled_from(["total", "individual"]), "twin": st.booleans(),
    "seed": st.integers(0, 2**20), "u": st.floats(0.05, 0.9)})


def check_toy(kind, case):
    rng = np.random.default_rng(case["seed"])
    n, d, B = case["n"], case["d"], case["B"]
    alphas = rng.uniform(0.5, 4.0, (B, n))
    prob = SphereToy(alphas[0], dim=d)
    th0, w = dynamics.initial_states(prob, rng.integers(0, 1000, B), case["constraint"], twin=True)
    # sub-threshold: total c = elr*sum(alpha) < 1; individual: every n*elr*alpha_i < 1 (T11, T12)
    denom = alphas.sum(1) if case["constraint"] == "total" else n * alphas.max(1)
    elr = case["u"] * rng.uniform(0.5, 1.0, B) / denom
    steps, tail = _steps(kind)
    kw = dict(steps=steps, tail=tail, constraint=case["constraint"], alphas=alphas,
              twin_dirs=w if case["twin"] else None)
    assert_matches(run_kernel(kind, prob, th0, elr, **kw),
                   dynamics.summarize_batch(prob, th0, elr, **kw))


def check_rayleigh(kind, m, B, twin, seed, u):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, m))
    prob = RayleighToy(M + M.T)
    th0, w = dynamics.initial_states(prob, rng.integers(0, 1000, B), twin=True)
    elr = u * rng.uniform(0.5, 1.0, B) / prob.alphas[0]
    steps, tail = _steps(kind)
    kw = dict(steps=steps, tail=tail, twin_dirs=w if twin else None)
    scale = float(np.abs(prob.eigenvalues).max())   # the loss is a difference of O(|A|) terms
    assert_matches(run_kernel(kind, prob, th0, elr, **kw),
                   dynamics.summarize_batch(prob, th0, elr, **kw), scale=scale)


ray_cases = dict(m=st.integers(2, 6), B=st.integers(1, 3), twin=st.booleans(),
                 seed=st.integers(0, 2**20), u=st.floats(0.05, 0.9))


@pytest.mark.parametrize("kind", KERNELS[:1])
@settings(deadline=None, max_examples=30)
@given(case=toy_cases)
def test_toy_kernel_equals_spec_subthreshold(kind, case):
    check_toy(kind, case)


@pytest.mark.parametrize("kind", KERNELS[1:])
@settings(deadline=None, max_examples=6)
@given(case=toy_cases)
def test_toy_gpu_kernel_equals_spec_subthreshold(kind, case):
    check_toy(kind, case)


@pytest.mark.parametrize("kind", KERNELS[:1])
@settings(deadline=None, max_examples=20)
@given(**ray_cases)
def test_rayleigh_kernel_equals_spec_subthreshold(kind, m, B, twin, seed, u):
    check_rayleigh(kind, m, B, twin, seed, u)


@pytest.mark.parametrize("kind", KERNELS[1:])
@settings(deadline=None, max_examples=5)
@given(**ray_cases)
def test_rayleigh_gpu_kernel_equals_spec_subthreshold(kind, m, B, twin, seed, u):
    check_rayleigh(kind, m, B, twin, seed, u)


@pytest.mark.parametrize("kind", KERNELS)
def test_chaotic_tail_statistics_within_one_percent(kind):
    """c = 1.3 (chaotic equilibrium, T12): trajectories decorrelate, tail statistics agree."""
    prob = SphereToy([1.0, 2.0, 4.0], dim=3)
    th0, w = dynamics.initial_states(prob, [0, 1], twin=True)
    elr = np.full(2, 1.3 / 7.0)
    steps, tail = (3000, 2000) if kind == "numba" else (800, 600)
    kw = dict(steps=steps, tail=tail, twin_dirs=w)
    got = run_kernel(kind, prob, th0, elr, **kw)
    ref = dynamics.summarize_batch(prob, th0, elr, **kw)
    for nm in ("tail_loss", "tail_grad_norm", "tail_angle"):
        np.testing.assert_allclose(got[nm], ref[nm], rtol=1e-2, err_msg=nm)
    assert np.all(got["frac_above_threshold"] > 0) and np.all(got["status"] == 0)


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("constraint", ["total", "individual"])
def test_float32_within_documented_tolerance(kind, constraint):
    prob = SphereToy([1.0, 3.0], dim=3)
    th0, w = dynamics.initial_states(prob, [3, 4, 5], constraint, twin=True)
    th0, w = th0.astype(np.float32), w.astype(np.float32)
    elr = np.array([0.03, 0.06, 0.09])
    steps, tail = _steps(kind)
    kw = dict(steps=steps, tail=tail, constraint=constraint, twin_dirs=w)
    got = run_kernel(kind, prob, th0, elr, **kw)
    assert got["tail_loss"].dtype == np.float32 and got["theta_final"].dtype == np.float32
    assert_matches(got, dynamics.summarize_batch(prob, th0, elr, **kw), rtol=1e-3, atol=1e-6,
                   lyap_atol=1e-3)


@pytest.mark.parametrize("kind", KERNELS)
def test_invalid_cells_are_flagged_not_crashing(kind):
    """A zero-norm group and an overflowing ELR give a status code, bad_step and NaN summaries,
    exactly as the spec does; healthy neighbours are untouched."""
    prob = SphereToy([1.0, 2.0], dim=2)
    th0, w = dynamics.initial_states(prob, [0, 1, 2], "individual", twin=True)
    th0[1, 0] = 0.0                     # zero-norm group (bypasses validation on purpose)
    elr = np.array([0.1, 0.1, 1e300])   # overflow
    kw = dict(steps=12, tail=4, constraint="individual", twin_dirs=w)
    got = run_kernel(kind, prob, th0, elr, **kw)
    ref = dynamics.summarize_batch(prob, th0, elr, **kw)
    assert got["status"][0] == 0 and np.all(got["status"][1:] != 0)
    for nm in NAMES:
        assert np.all(np.isnan(got[nm][1:])), nm
    assert_matches(got, ref)
    assert np.all(np.isfinite(got["theta_final"][2]))   # frozen at the last finite state


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_numba_flush_to_zero_keeps_spec_and_restores_fp_mode():
    """The numba CPU kernel flushes subnormals to zero (a converged run's perpendicular coordinates
    otherwise crawl through the subnormal range at ~100 cycles per operation): the summaries still
    equal the spec, whose states do reach subnormals, and the caller's FP mode is restored."""
    prob = SphereToy([1.0, 2.0, 4.0], dim=3)
    th0, _ = dynamics.initial_states(prob, [0, 1], "total", twin=True)
    elr = np.array([0.3, 0.5]) / prob.alphas.sum()
    kw = dict(steps=2500, tail=250)
    ref = dynamics.summarize_batch(prob, th0, elr, **kw)
    tf = np.abs(ref["theta_final"])
    assert np.any((tf > 0) & (tf < np.finfo(float).tiny))   # the spec ran into subnormals
    assert_matches(run_kernel("numba", prob, th0, elr, **kw), ref)
    x = np.array([1e-300])
    assert (x * 1e-10)[0] > 0.0                               # subnormals still exist here
