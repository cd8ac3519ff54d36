"""Finished runs of a network ELR scan kept on disk, so an interrupted scan resumes.

Layout: a folder (the CLI uses ``OUT.parts`` next to ``OUT``) holding one NetCDF file per run,
``elr_<elr>_seed_<seed>.nc`` (``<elr>`` is Python's shortest round-trip ``repr``, so the name
identifies the float exactly). Each file carries the run's parameters (everything but the ELR) as
the JSON attribute ``run_params``.

Protocol (one writer): a run is written to a temporary sibling, ``fsync``-ed and renamed into
place, so a file with a part's name is always complete; opening the folder checks every part's
``run_params`` against the call's and refuses, naming what differs, when they disagree.
Only xarray and the standard library here: the training code passes the datasets in.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

from .._atomic import write_netcdf_atomic

ATTR = "run_params"


def part_name(elr: float, seed: int) -> str:
    """The file name of one finished run."""
    return f"elr_{float(elr)!r}_seed_{int(seed)}.nc"


def _normalise(params: dict) -> dict:
    return json.loads(json.dumps(params, sort_keys=True))


class RunParts:
    """The finished runs in ``folder`` made with ``params`` (module docstring)."""

    def __init__(self, folder, params: dict):
        self.folder = os.fspath(folder)
        self.params = _normalise(params)
        if os.path.lexists(self.folder) and not os.path.isdir(self.folder):
            raise ValueError(f"{self.folder!r} holds a scan's finished runs but exists and is not a "
                             "folder; move it away")
        for path in self.paths():
            self._check(path)

    def paths(self) -> list[str]:
        return sorted(glob.glob(os.path.join(glob.escape(self.folder), "elr_*_seed_*.nc")))

    def path(self, elr: float, seed: int) -> str:
        return os.path.join(self.folder, part_name(elr, seed))

    def _check(self, path):
        import xarray as xr
        try:
            with xr.open_dataset(path) as ds:
                stored = json.loads(ds.attrs[ATTR])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot read the finished run {path!r} ({type(err).__name__}: "
                             f"{err}); delete it to recompute that run") from None
        diff = sorted(k for k in set(stored) | set(self.params) if stored.get(k) != self.params.get(k))
        if diff:
            was = ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={self.params.get(k)!r}" for k in diff)
            raise ValueError(f"{self.folder!r} holds runs made with other parameters ({was}; this "
                             f"call: {now}); rerun with the same parameters to resume, or delete "
                             "that folder (or choose another output) to start over")

    def has(self, elr: float, seed: int) -> bool:
        return os.path.isfile(self.path(elr, seed))

    def get(self, elr: float, seed: int):
        """The finished run as an in-memory Dataset (without ``run_params``), or ``None``."""
        import xarray as xr
        if not self.has(elr, seed):
            return None
        ds = xr.load_dataset(self.path(elr, seed))
        ds.attrs.pop(ATTR, None)
        for var in ds.variables.values():
            # the file's fixed string width ("convergence": 11) would stick to a scan concatenated
            # from this run and cut the longer labels of the others when that scan is written
            if var.dtype.kind in "SU":
                var.encoding.pop("dtype", None)
        return ds

    def put(self, ds, elr: float, seed: int) -> str:
        os.makedirs(self.folder, exist_ok=True)
        path = self.path(elr, seed)
        write_netcdf_atomic(ds.assign_attrs({ATTR: json.dumps(self.params, sort_keys=True)}), path)
        return path

    def remove(self) -> None:
        """Delete the folder (once the combined result is safely written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
