r"""The conventional-training kernels (``toy_wd``: GD with weight decay, no projection, T20) equal the
specification `conventional.summarize_wd_batch` on identical inputs.

``numba`` is `kernels.numba_cpu`; ``cuda`` and ``cupy_sim`` run `kernels.numba_cuda` and
`kernels.cupy_gpu` under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by conftest; NumPy arrays).

Where the bounds come from (docs/backends.md, "Conventional training (weight decay) kernels"):

* **d = 2, bit for bit but the angle.** The kernels do the spec's IEEE operations in the spec's
  order, without fastmath, FMA contraction or a flush of subnormals: each group's $p^2$ is one
  product (NumPy's einsum of one term, whatever its SIMD width), $\|\theta_i\|^2=x^2+p^2$ has two
  terms (every lane order adds them the same way), NumPy sums fewer than 8 groups left to right, and
  + - * / sqrt are correctly rounded on every x86-64 CPU. So the state, the losses, the ELRs and
  every count equal the spec exactly (tolerance 0). Only ``tail_angle`` differs: NumPy's arcsin and
  libm's asin are each within 4 ulp, so one angle differs by at most 8 ulp $\le16u$ relative, and the
  two sums of ``tail`` positive terms, each within $(tail-1)u$ of its exact value, by
  $2u(8+tail)$ relative.
* **d > 2.** The sums of squares have several terms, which NumPy adds in its SIMD lane order: each
  implementation puts at most $k\,u$ into a coordinate per step ($k=nd+10$, `_tolerances.ops_per_step`)
  and an error injected at step $t$ grows by at most $G=\max_t$ (relative-error growth from $t$ to the
  end), measured by a renormalised twin under the spec's own step (`growth`). Relative bound
  $R=2u(k\,steps\,G+tail)$, twice that for quantities formed from two states or squared norms;
  absolute $R\sum\alpha$ for losses (a relative state error $\epsilon$ moves $F_i$ by at most
  $\alpha_i\epsilon$) and $4R$ for the angle (a chord of two unit vectors, each off by $R$, through
  $2\arcsin(c/2)$ whose slope is below 2). Cases are chosen with $G\approx1$ (equilibrium starts,
  converging runs): the periodic regime at d > 2 amplifies rounding by $e^{20}$ and more over its
  spikes (`growth`), so there the trajectories separate and only their statistics can agree.
* Integers and flags (spike counts and steps, ``status``, ``bad_step``, ``converged_exactly``) are
  compared exactly everywhere: they are decided by comparisons whose operands agree to the bounds
  above, far from the levels they are compared with.
"""
import numpy as np
import pytest
from _devices import cuda_ok, float64_leaks
from _tolerances import close, ops_per_step, unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st

from toymodel import backend, conventional, periodic, regimes
from toymodel._deps import has
from toymodel.problems import SphereToy, toy_grad

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # overflow in the spec



NUMBA = pytest.param("numba", marks=pytest.mark.skipif(not has("numba"), reason="no numba"))
SIM = [pytest.param(k, marks=pytest.mark.skipif(not cuda_ok(), reason="no CUDA/simulator"))
       for k in ("cuda", "cupy_sim")]
KINDS = [NUMBA, *SIM]
INT_NAMES = ("n_spikes", "first_spike", "last_spike", "group_n_spikes", "group_first_spike",
             "group_last_spike", "converged_exactly", "group_converged_exactly", "status", "bad_step")


def run_kernel(kind, th, lr, wd, al, steps, tail):
    if kind == "numba":
        from toymodel.kernels import numba_cpu as m
    elif kind == "cuda":
        from toymodel.kernels import numba_cuda as m
    else:
        from toymodel.kernels import cupy_gpu as m
    args = [np.ascontiguousarray(a) for a in (th.copy(), lr, wd, al)]
    return m.toy_wd(*args, steps, tail)


def spec(th, lr, wd, al, steps, tail):
    return conventional.summarize_wd_batch(SphereToy(al[0], dim=th.shape[-1]), th, lr, wd,
                                           steps=steps, tail=tail, alphas=al)


def case(B, n, d, lr, wd, *, seed=0, scale=1.0, dt=np.float64, equilibrium=False):
    """Inputs of the dtype: random states of norm ~``scale``, or (``equilibrium``) within 1 % of the
    stationary point of T21/T22 (group norms $\\eta\\alpha_i$, angle $\\cos2\\varphi=q$)."""
    rng = np.random.default_rng(seed)
    al = rng.uniform(0.5, 3.0, (B, n))
    if equilibrium:
        q = 1.0 - lr * wd
        phi = 0.5 * np.arccos(q) * (1 + 0.01 * rng.standard_normal((B, n)))
        r = np.sqrt(lr * al)
        dirs = rng.standard_normal((B, n, d - 1))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        th = np.concatenate([(r * np.cos(phi))[..., None], (r * np.sin(phi))[..., None] * dirs], -1)
    else:
        th = rng.standard_normal((B, n, d)) * scale
    full = lambda v: np.broadcast_to(np.asarray(v, float), (B,)).astype(dt)
    return th.astype(dt), full(lr), full(wd), al.astype(dt)


def growth(th, lr, wd, al, steps, seed=0):
    r"""$G$ per trajectory: the largest growth of a relative state error from any step to the end,
    $\exp\max_t\sum_{s\ge t}\ell_s$ with $\ell_s$ the log-stretch of a twin renormalised to relative
    distance 1e-7 after every step (float64, the spec's step)."""
    th = np.array(th, np.float64)
    lr = np.asarray(lr, np.float64)[:, None, None]
    q = 1.0 - lr * np.asarray(wd, np.float64)[:, None, None]
    al = np.asarray(al, np.float64)
    eps = 1e-7
    norm = lambda a: np.sqrt((a * a).sum((-2, -1)))[:, None, None]
    w = np.random.default_rng(seed).standard_normal(th.shape)
    tw = th + eps * norm(th) * w / norm(w)
    logs = np.zeros((steps, th.shape[0]))
    for t in range(steps):
        new, twn = q * th - lr * toy_grad(th, al), q * tw - lr * toy_grad(tw, al)
        delta = twn - new
        logs[t] = np.log(norm(delta) / (eps * norm(new)))[:, 0, 0]
        tw, th = new + eps * norm(new) * delta / norm(delta), new
    return np.exp(np.maximum(np.cumsum(logs[::-1], 0).max(0), 0.0))


def assert_same_layout_and_integers(got, ref):
    assert set(got) == set(ref)
    for nm, r in ref.items():
        g = np.asarray(got[nm])
        assert g.shape == r.shape and g.dtype == r.dtype, (nm, g.shape, r.shape, g.dtype, r.dtype)
    for nm in INT_NAMES:
        np.testing.assert_array_equal(got[nm], ref[nm], err_msg=nm)


def assert_bit_equal_but_angle(got, ref, tail):
    """The d = 2 contract (module docstring): everything exact, ``tail_angle`` within 2u(8 + tail)."""
    assert_same_layout_and_integers(got, ref)
    for nm, r in ref.items():
        if nm not in INT_NAMES and nm != "tail_angle":
            np.testing.assert_array_equal(got[nm], r, err_msg=nm)
    close("tail_angle", got["tail_angle"], ref["tail_angle"],
          2 * unit_roundoff(ref["theta_final"].dtype) * (8 + tail))


def assert_within_growth_bound(got, ref, th, lr, wd, al, steps, tail):
    """The d > 2 contract (module docstring); returns the relative bound R per trajectory."""
    assert_same_layout_and_integers(got, ref)
    dt = ref["theta_final"].dtype
    prob = SphereToy(al[0], dim=th.shape[-1])
    R = 2 * unit_roundoff(dt) * (ops_per_step(prob) * steps * growth(th, lr, wd, al, steps) + tail)
    scale = np.asarray(al, float).sum(-1)
    for nm in ("tail_loss", "tail_loss_std", "final_loss", "min_loss", "group_tail_loss"):
        close(nm, got[nm], ref[nm], 2 * R, 2 * R * scale)
    close("tail_elr", got["tail_elr"], ref["tail_elr"], 2 * R)
    close("tail_angle", got["tail_angle"], ref["tail_angle"], 2 * R, 4 * R)
    close("theta_final", got["theta_final"], ref["theta_final"], R, R * np.sqrt(scale))
    return R


# -- d = 2: bit for bit ------------------------------------------------------------------------------
D2_CASES = {   # (B, n, lr, wd, steps, tail, scale); eta*lambda in the name
    "periodic_1e-2": (6, 3, 0.1, 0.1, 6000, 5000, 0.3),
    "periodic_2e-3": (6, 3, 0.1, 0.02, 20000, 19000, 0.3),
    "rotating_1e-1": (6, 3, 0.1, 1.0, 300, 100, 1.0),
    "one_group_5e-3": (4, 1, 0.5, 0.01, 4000, 3000, 1.0),
}


@pytest.mark.parametrize("name", sorted(D2_CASES))
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_numba_d2_equals_spec_bit_for_bit(name, dt):
    B, n, lr, wd, steps, tail, scale = D2_CASES[name]
    th, lr_, wd_, al = case(B, n, 2, lr, wd, scale=scale, dt=dt)
    ref = spec(th, lr_, wd_, al, steps, tail)
    if name.startswith("periodic") and dt == np.float64:   # the case exercises the spikes
        assert (ref["group_n_spikes"] >= periodic.MIN_SPIKES).any()
    assert_bit_equal_but_angle(run_kernel("numba", th, lr_, wd_, al, steps, tail), ref, tail)


@pytest.mark.parametrize("kind", SIM)
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_gpu_d2_equals_spec_bit_for_bit(kind, dt):
    """The simulator is slow: 3 runs x 150 steps, one of them spiking (eta*lambda = 0.1)."""
    th, lr, wd, al = case(3, 3, 2, [0.1, 0.1, 0.5], [1.0, 0.1, 0.01], dt=dt)
    ref = spec(th, lr, wd, al, 150, 60)
    assert ref["group_n_spikes"].sum() > 0
    assert_bit_equal_but_angle(run_kernel(kind, th, lr, wd, al, 150, 60), ref, 60)


@pytest.mark.skipif(not has("numba"), reason="no numba")
@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 4), B=st.integers(1, 4), seed=st.integers(0, 2**20),
       lr=st.floats(-2, 0.5).map(lambda x: 10.0**x), ewd=st.floats(-3.5, -0.3).map(lambda x: 10.0**x),
       scale=st.floats(-1, 1).map(lambda x: 10.0**x))
def test_numba_d2_property(n, B, seed, lr, ewd, scale):
    """Any (eta, eta*lambda, start) at d = 2: bit for bit but the angle."""
    th, lr_, wd_, al = case(B, n, 2, lr, ewd / lr, seed=seed, scale=scale)
    assert_bit_equal_but_angle(run_kernel("numba", th, lr_, wd_, al, 400, 150),
                               spec(th, lr_, wd_, al, 400, 150), 150)


# -- d > 2: the growth bound -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("start", ["equilibrium_1e-1", "converging_1e-2"])
@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_numba_d5_within_derived_bound(n, dt, start):
    lr, wd = (0.1, 1.0) if start.startswith("equilibrium") else (0.05, 0.2)
    th, lr_, wd_, al = case(6, n, 5, lr, wd, seed=n, dt=dt, equilibrium=start.startswith("eq"))
    ref = spec(th, lr_, wd_, al, 150, 50)
    R = assert_within_growth_bound(run_kernel("numba", th, lr_, wd_, al, 150, 50), ref, th, lr_,
                                   wd_, al, 150, 50)
    if dt == np.float64:   # the acceptance line: the state's relative bound is 1e-12 or better
        assert np.all(R <= 1e-12), R


@pytest.mark.parametrize("kind", SIM)
def test_gpu_d5_within_derived_bound(kind):
    th, lr, wd, al = case(2, 3, 5, 0.1, 1.0, seed=3, equilibrium=True)
    assert_within_growth_bound(run_kernel(kind, th, lr, wd, al, 60, 20),
                               spec(th, lr, wd, al, 60, 20), th, lr, wd, al, 60, 20)


# -- failures, the float floor, exact convergence ----------------------------------------------------
def _edge_cases(dt):
    """Three batches: a norm decaying to 0 from the minimiser (q = 0.5: r^4 underflows, the gradient
    becomes inf * 0); eta*g overflowing (huge lr, tiny states); squared norms overflowing (d = 3)."""
    big = 1e150 if dt == np.float64 else 1e18
    th0 = np.zeros((3, 1, 2), dt)
    th0[:, 0, 0] = [1e-30, 1.0, 3.0]
    rng = np.random.default_rng(1)
    th1 = rng.standard_normal((3, 3, 2)) * np.array([1e-3, 1e-10, 1e-15])[:, None, None]
    th2 = rng.standard_normal((3, 2, 3)) * np.array([big, big * 1e20, 1.0])[:, None, None]
    f = lambda *v: np.array(v, dt)
    return [(th0, f(0.5, 0.5, 0.5), f(1.0, 1.0, 1.0), np.ones((3, 1), dt), 300, 50),
            (th1.astype(dt), f(1e10, 1e25, 1e30), f(1e-31, 1e-31, 1e-31), np.ones((3, 3), dt), 50, 10),
            (th2.astype(dt), f(0.1, 0.1, 0.1), f(0.1, 0.1, 0.1), np.ones((3, 2), dt), 30, 10)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_failures_have_the_spec_status_and_bad_step(kind, dt):
    seen = set()
    for th, lr, wd, al, steps, tail in _edge_cases(dt):
        ref = spec(th, lr, wd, al, steps, tail)
        got = run_kernel(kind, th, lr, wd, al, steps, tail)
        seen |= set(ref["status"].tolist())
        if th.shape[-1] == 2:
            assert_bit_equal_but_angle(got, ref, tail)
        else:   # d = 3 but no growth: the states barely move (or fail at step 0)
            assert_same_layout_and_integers(got, ref)
            close("theta_final", got["theta_final"], ref["theta_final"],
                  2 * unit_roundoff(dt) * ops_per_step(SphereToy(al[0], dim=3)) * steps)
    assert {0, 1} <= seen


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_numba_keeps_the_float64_floor():
    """At eta*lambda = 5e-4 the spec's perpendicular components underflow through the subnormal
    range (docs/conventional.md): gradual underflow, as the spec, keeps every spike and exact
    convergence; flushing subnormals to zero (``flush=True``) changes them."""
    from toymodel.kernels import numba_cpu

    th, lr, wd, al = case(24, 3, 2, 0.1, 0.005, scale=0.3)
    ref = spec(th, lr, wd, al, 30000, 15000)
    assert ref["group_converged_exactly"].any() and (ref["group_n_spikes"] > 0).any()
    assert_bit_equal_but_angle(run_kernel("numba", th, lr, wd, al, 30000, 15000), ref, 15000)
    flushed = numba_cpu.toy_wd(th.copy(), lr, wd, al, 30000, 15000, flush=True)
    assert not np.array_equal(flushed["group_n_spikes"], ref["group_n_spikes"])


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_sq_floor_is_where_squares_stop_underflowing(dt):
    from toymodel.kernels import _wd_step

    f = _wd_step.sq_floor(dt)
    below = np.nextafter(f, dt(0))
    assert f.dtype == dt and f * f > 0 and below * below == 0


# -- dispatch, constants, the decay factor -----------------------------------------------------------
def test_kernel_levels_are_the_spec_defaults():
    from toymodel.kernels import _wd_step

    assert _wd_step.CONV_RTOL == regimes.CONV_RTOL
    assert _wd_step.SPIKE_FRAC == periodic.SPIKE_FRAC


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_auto_runs_the_numba_kernel():
    th, lr, wd, al = case(4, 3, 2, 0.1, 0.1, scale=0.3)
    prob = SphereToy(al[0])
    res = backend.summarize_wd(prob, th, lr, wd, steps=500, tail=200, alphas=al)
    assert res.pop("backend") == "numba"
    assert_bit_equal_but_angle(res, spec(th, lr, wd, al, 500, 200), 200)
    assert backend.summarize_wd(prob, th, lr, wd, steps=5, tail=2, backend="numpy")["backend"] == "numpy"


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_the_decay_factor_matters():
    """A kernel that dropped the decay (q = 1) would equal the spec at weight_decay = 0, which is far
    from the spec at the given weight decay: the agreement tests above would fail."""
    th, lr, wd, al = case(4, 3, 2, 0.1, 0.1, scale=0.3)
    got = run_kernel("numba", th, lr, wd, al, 500, 200)
    no_decay = spec(th, lr, np.zeros_like(wd), al, 500, 200)
    # without decay the norm only grows (T4), with it the norm settles near sqrt(eta alpha)
    rel = np.abs(got["tail_elr"] - no_decay["tail_elr"]) / no_decay["tail_elr"]
    assert np.all(rel > 0.1), rel


@pytest.mark.skipif(not has("numba"), reason="no numba")
def test_float32_runs_touch_no_float64():
    """Compiled for float32, no variable of the trajectory code is float64 (numba types a bare float
    literal as float64 and promotes what it touches; the real CUDA target types the same source with
    the same rules, which the simulator cannot show). Compiled afresh: a cached overload has no type
    annotations."""
    from numba import njit
    from numba import types as nt
    from toymodel.kernels import _wd_step

    run = _wd_step.build(lambda f: njit(f, error_model="numpy", _dbg_optnone=True)).wd_run
    f32, i64 = nt.float32, nt.int64
    A2, A1 = nt.Array(f32, 2, "A"), nt.Array(f32, 1, "A")
    I1, B1 = nt.Array(i64, 1, "A"), nt.Array(nt.boolean, 1, "A")
    run.compile((A2, A2, A1, f32, f32, i64, i64, f32, f32, f32, A2, A1, I1, I1, I1, B1,
                 nt.Array(f32, 2, "C"), nt.Array(i64, 2, "C"), i64))
    leaks, seen = float64_leaks([run])
    assert seen >= 5 and not leaks, leaks
