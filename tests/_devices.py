"""Which kernel backends can run in this test session (the CUDA simulator counts as CUDA)."""
from __future__ import annotations

from toymodel._deps import has


def cuda_ok() -> bool:
    """numba-cuda is installed and a device, or the simulator (NUMBA_ENABLE_CUDASIM=1), runs."""
    if not has("numba_cuda"):
        return False
    from toymodel.kernels import numba_cuda

    return numba_cuda.is_available()


def cupy_ok() -> bool:
    """CuPy is installed and sees a device."""
    if not has("cupy"):
        return False
    from toymodel.kernels import cupy_gpu

    return cupy_gpu.is_available()


def float64_leaks(roots, allowed=frozenset()):
    """The float64 variables of compiled numba dispatchers ``roots`` and of every dispatcher they
    call (read from the typed IR of their compiled overloads), by function name, leaving out
    ``allowed`` names, numba temporaries and arguments; and the number of dispatchers walked. A
    float32 kernel whose arithmetic stays float32 has none."""
    from numba.core import types as nt

    seen, leaks = set(), {}

    def walk(disp):
        if id(disp) in seen:
            return
        seen.add(id(disp))
        fn = disp.py_func
        refs = [c.cell_contents for c in (fn.__closure__ or ())]
        refs += [fn.__globals__[k] for k in fn.__code__.co_names if k in fn.__globals__]
        for cres in disp.overloads.values():
            f64 = {k.split(".")[0] for k, v in cres.type_annotation.typemap.items()
                   if v == nt.float64 and not k.startswith(("$", "arg."))}
            if f64 - set(allowed):
                leaks[fn.__name__] = sorted(f64 - set(allowed))
        for r in refs:
            if hasattr(r, "overloads") and hasattr(r, "py_func"):
                walk(r)

    for root in roots:
        walk(root)
    return leaks, len(seen)
