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
