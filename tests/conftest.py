import os

# Numba-CUDA kernels run under the CUDA simulator on machines without a GPU; the variable must be
# set before numba is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("ci")


def pytest_configure(config):
    """``TOYMODEL_TORCH_THREADS=N`` limits torch to N intra-op threads for the whole run.

    Results must not depend on thread counts (docs/numerics.md); this is how the suite checks it
    for torch (``OMP_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` cover OpenMP, BLAS and numba). Torch
    is imported only when the variable is set, so a plain run stays cheap.
    """
    value = os.environ.get("TOYMODEL_TORCH_THREADS", "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        import pytest

        raise pytest.UsageError(f"TOYMODEL_TORCH_THREADS must be a positive integer, got {value!r}")
    try:
        import torch
    except ImportError:  # torch is optional: its tests skip themselves
        return
    torch.set_num_threads(int(value))
