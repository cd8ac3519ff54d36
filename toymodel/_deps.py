"""Cheap detection of optional packages: never imports them (importlib.util.find_spec).

``TOYMODEL_DISABLE=numba,cupy`` hides packages (to test fallbacks and install hints).
"""
from __future__ import annotations

import importlib.util
import os

INSTALL_HINTS = {
    "numba": "pip install 'toymodel[numba]'",
    "numba_cuda": "pip install 'toymodel[gpu]' (numba-cuda, and an NVIDIA driver)",
    "cupy": "pip install 'toymodel[gpu]' (cupy-cuda12x, and an NVIDIA driver)",
    "xarray": "pip install 'toymodel[scan]'",
    "zarr": "pip install 'toymodel[scan]'",
    "torch": "pip install torch==2.13.0 'toymodel[torch]'",
    "dask": "pip install 'toymodel[dist]'",
    "distributed": "pip install 'toymodel[dist]'",
    "jax": "pip install jax",
}


def _disabled() -> set[str]:
    return {s.strip() for s in os.environ.get("TOYMODEL_DISABLE", "").split(",") if s.strip()}


def has(package: str) -> bool:
    """True if ``package`` is importable (without importing it) and not disabled by the env."""
    if package in _disabled():
        return False
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require(package: str, feature: str):
    """Import and return ``package``, or raise ``ImportError`` with the install hint for ``feature``."""
    if not has(package):
        hint = INSTALL_HINTS.get(package, f"pip install {package}")
        raise ImportError(f"{feature} needs the optional package '{package}': {hint}")
    return importlib.import_module(package)
