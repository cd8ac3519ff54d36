"""THE one place that picks a compute backend for batch runs.

``backend="auto" | "numpy" | "numba" | "cuda" | "cupy"`` (STYLE §5):

* ``"numpy"``: `toymodel.dynamics.summarize_batch`, the specification; always available;
  every problem.
* ``"numba"``: `kernels.numba_cpu` (``prange`` over trajectories).
* ``"cuda"``: `kernels.numba_cuda` (one thread per trajectory; NumPy in, NumPy out).
* ``"cupy"``: `kernels.cupy_gpu` (CuPy in, CuPy out; GEMM per step for the Rayleigh quotient).
* ``"auto"``: ``"cupy"`` when the inputs are CuPy arrays; otherwise ``"numba"`` when numba is
  installed and the problem has a kernel (`SphereToy`,
  `RayleighToy`), else ``"numpy"``. A GPU is used only when asked for or
  when the inputs already live on it.

Unknown names raise ``ValueError``; known but unavailable backends raise
`BackendUnavailable` (an ``ImportError``) with the install hint. ``TOYMODEL_DISABLE``
hides packages (see `toymodel._deps`). Kernels are imported here only, lazily.
"""
from __future__ import annotations

import numpy as np

from . import dynamics
from ._deps import INSTALL_HINTS, has, require
from ._validate import (constraint_name, positive_finite, positive_finite_array, positive_int,
                        tail_within)
from .problems import RayleighToy, SphereToy

BACKENDS = ("auto", "numpy", "numba", "cuda", "cupy")
#: backends with compiled kernels, and the problems they support.
KERNEL_PROBLEMS = (SphereToy, RayleighToy)
#: dtypes the compiled kernels run in (the NumPy path takes any float dtype).
KERNEL_DTYPES = (np.float64, np.float32)


class BackendUnavailable(ImportError):
    """A known backend whose package or device is missing (the message says how to install it)."""


def _is_cupy(a) -> bool:
    return a is not None and type(a).__module__.split(".")[0] == "cupy"


#: why a kernel module's ``is_available()`` can be false, per backend.
_UNAVAILABLE = {
    "numba": "backend='numba' cannot run here (kernels.numba_cpu.is_available() is False); use "
             f"backend='numpy'. Install: {INSTALL_HINTS['numba']}",
    "cuda": "backend='cuda' needs an NVIDIA GPU with a working driver (numba.cuda.is_available() "
            "is False); set NUMBA_ENABLE_CUDASIM=1 to run the kernel on the CPU simulator, or use "
            f"backend='numba'. Install: {INSTALL_HINTS['numba_cuda']}",
    "cupy": "backend='cupy' needs an NVIDIA GPU visible to CuPy; use backend='numba' on a CPU. "
            f"Install: {INSTALL_HINTS['cupy']}",
}


def _kernel_module(name: str):
    """The kernel module of backend ``name`` (imported here only, lazily)."""
    if name == "numba":
        from toymodel.kernels import numba_cpu as mod
    elif name == "cuda":
        from toymodel.kernels import numba_cuda as mod
    else:
        from toymodel.kernels import cupy_gpu as mod
    return mod


def _check_available(name: str) -> None:
    """Raise `BackendUnavailable` unless backend ``name`` can run here."""
    if name == "numpy":
        return
    feature = f"backend={name!r}"
    try:
        if name == "numba":
            require("numba", feature)
        elif name in ("cuda", "cupy"):
            if name == "cupy":
                require("cupy", feature)
            require("numba_cuda", feature)
            require("numba", feature)
    except ImportError as err:
        raise BackendUnavailable(str(err)) from None
    if not _kernel_module(name).is_available():
        raise BackendUnavailable(_UNAVAILABLE[name])


def available_backends() -> tuple:
    """The concrete backends that can run here, ``"numpy"`` first."""
    out = []
    for name in BACKENDS[1:]:
        try:
            _check_available(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return tuple(out)


def resolve(backend: str = "auto", *arrays, problem=None) -> str:
    """The concrete backend name for ``backend`` given the input ``arrays`` (validated).

    Raises ``ValueError`` for an unknown name or for CuPy arrays given to a host backend, and
    `BackendUnavailable` when the backend cannot run here.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_device = any(_is_cupy(a) for a in arrays)
    if backend == "auto":
        if on_device:
            backend = "cupy"
        elif problem is not None and not isinstance(problem, KERNEL_PROBLEMS):
            return "numpy"
        else:
            return "numba" if has("numba") else "numpy"
    if on_device and backend != "cupy":
        raise ValueError(f"backend={backend!r} works on NumPy arrays but got CuPy arrays; use "
                         "backend='cupy' or move the inputs to the host with .get()")
    if backend != "numpy":
        _check_available(backend)
    return backend


def _xp(name):
    if name == "cupy":
        import cupy

        return cupy
    return np


def summarize(problem, theta0, elr, *, steps, tail, constraint="total", alphas=None,
              twin_dirs=None, backend="auto"):
    """Per-trajectory summaries of ``B`` runs (contract: `toymodel.dynamics.summarize_batch`).

    ``theta0`` ``(B, n, d)`` on the constraint set (its dtype is the computing dtype: float64 or
    float32 for the kernels), ``elr`` ``(B,)``, ``alphas`` ``(B, n)`` or ``None`` (the problem's),
    ``twin_dirs`` ``(B, n, d)`` unit directions for the Lyapunov twin or ``None``. Returns a dict of
    ``(B,)`` summaries named by ``dynamics.SUMMARY_NAMES`` plus ``status``, ``bad_step`` and
    ``theta_final``, as arrays of the input's type (NumPy, or CuPy for ``backend="cupy"``), and
    ``backend``: the name of the backend that ran (a string, `resolve`'s answer).

    Every backend gives the same ``status`` and ``bad_step`` as the NumPy specification, in float32
    as in float64: the kernels compute the learning rate, the update and its norms in the state's
    dtype, so an overflow there is flagged exactly where the spec flags it (docs/backends.md).
    """
    name = resolve(backend, theta0, elr, alphas, twin_dirs, problem=problem)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    constraint = constraint_name(constraint)
    if name == "numpy":
        res = dynamics.summarize_batch(problem, theta0, elr, steps=steps, tail=tail,
                                       constraint=constraint, alphas=alphas, twin_dirs=twin_dirs)
    elif not isinstance(problem, KERNEL_PROBLEMS):
        raise ValueError(f"backend={name!r} has kernels for SphereToy and RayleighToy only, got "
                         f"{type(problem).__name__}; use backend='numpy'")
    else:
        res = _run_kernel(name, problem, theta0, elr, steps, tail, constraint, alphas, twin_dirs)
    res["backend"] = name
    return res


def _kernel_inputs(xp, problem, theta0, elr, alphas, twin_dirs):
    """Coerce to contiguous arrays of the computing dtype and check shapes."""
    # C order: a strided view would make numba compile (~10 s) a second specialisation
    theta = xp.array(theta0, copy=True, order="C")
    if theta.ndim != 3 or theta.shape[1:] != (problem.n_groups, problem.dim):
        raise ValueError(f"theta0 must have shape (B, {problem.n_groups}, {problem.dim}), got "
                         f"{tuple(theta.shape)}")
    if theta.dtype not in KERNEL_DTYPES:
        if theta.dtype.kind != "f":
            theta = theta.astype(np.float64)
        else:
            raise ValueError(f"compiled backends compute in float64 or float32, got theta0 of "
                             f"dtype {theta.dtype}; cast it or use backend='numpy'")
    dt = theta.dtype
    B, n, d = theta.shape
    el = xp.array(xp.broadcast_to(xp.asarray(elr, dtype=dt), (B,)), copy=True, order="C")
    al = problem.alphas if alphas is None else alphas
    try:
        al = xp.array(xp.broadcast_to(xp.asarray(al, dtype=dt), (B, n)), copy=True, order="C")
    except ValueError:
        raise ValueError(f"alphas must broadcast to shape ({B}, {n}), got "
                         f"{tuple(xp.asarray(al).shape)}") from None
    if twin_dirs is None:
        w = None   # BatchInputs.of supplies the dummy
    else:
        w = xp.array(twin_dirs, dtype=dt, copy=True, order="C")
        if tuple(w.shape) != (B, n, d):
            raise ValueError(f"twin_dirs must have shape ({B}, {n}, {d}), got {tuple(w.shape)}")
    return theta, el, al, w


def _run_kernel(name, problem, theta0, elr, steps, tail, constraint, alphas, twin_dirs):
    from toymodel.kernels._protocol import BatchInputs, BatchOutputs

    xp = _xp(name)
    theta, el, al, w = _kernel_inputs(xp, problem, theta0, elr, alphas, twin_dirs)
    dt = theta.dtype
    mod = _kernel_module(name)
    shifted = None
    if isinstance(problem, RayleighToy):
        shifted = xp.asarray(problem.A - problem.lambda_min * np.eye(problem.dim), dtype=dt)
    inputs = BatchInputs.of(theta, el, al, w, individual=constraint == "individual",
                            steps=steps, tail=tail, shifted=shifted)
    outputs = BatchOutputs.empty(xp, theta.shape[0], dt)
    (mod.rayleigh if shifted is not None else mod.toy)(inputs, outputs)
    res = {nm: outputs.out[j] for j, nm in enumerate(dynamics.SUMMARY_NAMES)}
    res.update(status=outputs.status, bad_step=outputs.bad_step, theta_final=inputs.theta)
    return res


# -- the other training modes: conventional training (weight decay) and momentum / Adam -------------
#: the kernel entry point of each mode (a kernel module without it has no kernel for that mode).
MODE_ENTRY = {"wd": "toy_wd", "momentum": "toy_momentum"}


def _mode_backend(backend, mode, problem, *arrays) -> str:
    """`resolve` for a mode: ``"auto"`` picks a kernel only where the module has the mode's entry."""
    name = resolve(backend, *arrays, problem=problem)
    if name == "numpy":
        return name
    if not isinstance(problem, SphereToy):
        raise ValueError(f"backend={name!r} has {mode} kernels for SphereToy only, got "  # noqa: TRY004 (as summarize)
                         f"{type(problem).__name__}; use backend='numpy'")
    if not hasattr(_kernel_module(name), MODE_ENTRY[mode]):
        if backend == "auto":
            return "numpy"
        raise BackendUnavailable(f"backend={name!r} has no kernel for the {mode} mode; use "
                                 "backend='numpy'")
    return name


def _mode_inputs(xp, problem, theta0, params, alphas):
    """``theta`` ``(B, n, d)`` (a C-contiguous copy of a kernel dtype), each of ``params`` as a
    ``(B,)`` array and ``alphas`` ``(B, n)`` of the same dtype."""
    theta, first, al, _ = _kernel_inputs(xp, problem, theta0, params[0], alphas, None)
    rest = [xp.array(xp.broadcast_to(xp.asarray(p, dtype=theta.dtype), (theta.shape[0],)),
                     copy=True, order="C") for p in params[1:]]
    return theta, [first] + rest, al


def summarize_wd(problem, theta0, lr, weight_decay, *, steps, tail, alphas=None, backend="auto"):
    r"""Summaries of ``B`` conventional runs (weight decay, no projection; T20), contract:
    `toymodel.conventional.summarize_wd_batch` (the same keys, plus ``backend``).

    ``theta0`` ``(B, n, d)`` as given (its norm matters), ``lr`` and ``weight_decay`` ``(B,)`` or
    broadcasting, with ``lr*weight_decay < 1`` (bad values raise ``ValueError`` naming the first,
    before any work); ``alphas`` ``(B, n)`` or ``None``. The kernels
    (``"numba"``, ``"cuda"``) equal the specification to 1e-12 in float64 (tests/test_kernels_wd.py).
    """
    name = _mode_backend(backend, "wd", problem, theta0)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    from .conventional import check_decay_arrays

    check_decay_arrays(lr, weight_decay)
    if name == "numpy":
        from .conventional import summarize_wd_batch

        theta0 = np.asarray(theta0)
        lr, weight_decay = (np.broadcast_to(np.asarray(v, dtype=theta0.dtype), theta0.shape[:1])
                            for v in (lr, weight_decay))
        res = summarize_wd_batch(problem, theta0, lr, weight_decay, steps=steps, tail=tail,
                                 alphas=alphas)
    else:
        xp = _xp(name)
        theta, (lr_, wd_), al = _mode_inputs(xp, problem, theta0, (lr, weight_decay), alphas)
        res = getattr(_kernel_module(name), MODE_ENTRY["wd"])(theta, lr_, wd_, al, steps, tail)
    res["backend"] = name
    return res


def summarize_momentum(problem, theta0, elr, momentum, *, steps, tail, momentum_mode="official",
                       constraint="total", alphas=None, optimizer="heavy_ball", beta2=0.999,
                       eps=1e-3, backend="auto"):
    r"""Summaries of ``B`` momentum / Adam runs at a fixed ELR (T41–T48), contract:
    `toymodel.momentum.summarize_momentum_batch` (the same keys, plus ``backend``).

    ``theta0`` ``(B, n, d)`` on the constraint set, ``elr`` and ``momentum`` ``(B,)`` or
    broadcasting; ``momentum_mode`` ``"official"`` or ``"transport"``; ``optimizer``
    ``"heavy_ball"`` or ``"adam"`` (with ``beta2``, ``eps``); an ELR that is not positive and finite,
    a momentum or ``beta2`` outside [0, 1) or ``eps <= 0`` raise ``ValueError`` naming the value.
    The kernels equal the specification
    to 1e-12 in float64 (tests/test_kernels_momentum.py).
    """
    name = _mode_backend(backend, "momentum", problem, theta0)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    constraint = constraint_name(constraint)
    from ._momentum_checks import check_momentum, check_momentum_array

    positive_finite_array("elr", elr)
    check_momentum_array(momentum, "momentum (beta1 for Adam)" if optimizer == "adam" else "momentum")
    if optimizer == "adam":
        check_momentum(beta2, "beta2")
        positive_finite("eps", eps)
    if name == "numpy":
        from ._momentum_batch import summarize_momentum_batch

        res = summarize_momentum_batch(problem, theta0, elr, momentum, steps=steps, tail=tail,
                                       momentum_mode=momentum_mode, constraint=constraint,
                                       alphas=alphas, optimizer=optimizer, beta2=beta2, eps=eps)
    else:
        xp = _xp(name)
        from ._momentum_checks import CONVERGED_LOSS, check_mode

        theta, (elr_, beta_), al = _mode_inputs(xp, problem, theta0, (elr, momentum), alphas)
        res = getattr(_kernel_module(name), MODE_ENTRY["momentum"])(
            theta, elr_, beta_, al, steps, tail, check_mode(momentum_mode),
            constraint == "individual", optimizer, beta2, eps, hit_loss=CONVERGED_LOSS)
    res["backend"] = name
    return res
