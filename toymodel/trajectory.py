"""`Trajectory`: the traces of one run and its final state, saved as ``.npz`` or NetCDF.

Indexed by recorded step, for the state a step starts from (the conventions of
`toymodel.dynamics`); every simulator of the toy returns one (`toymodel.dynamics.simulate`,
`toymodel.conventional.simulate_wd`, `toymodel.momentum.simulate_momentum`, which add fields).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ._validate import positive_int


@dataclass
class Trajectory:
    """Traces of one run; arrays are indexed by recorded step (see the module docstring)."""

    step: np.ndarray
    loss: np.ndarray
    individual_elr: np.ndarray
    shares: np.ndarray
    grad_norm: np.ndarray
    group_grad_norm: np.ndarray
    angle: np.ndarray
    theta_final: np.ndarray
    params: dict = field(default_factory=dict)

    TRACES = ("loss", "individual_elr", "shares", "grad_norm", "group_grad_norm", "angle")

    def tail(self, name: str, n: int) -> np.ndarray:
        """The last ``n`` recorded values of trace ``name``."""
        n = positive_int("n", n)
        return getattr(self, name)[-n:]

    def to_dataset(self):
        """The traces as an ``xarray.Dataset`` (dims ``step``, ``group``), parameters in attrs."""
        import xarray as xr

        data = {}
        for name in self.TRACES:
            arr = getattr(self, name)
            dims = ("step", "group") if arr.ndim == 2 else ("step",)
            data[name] = (dims, arr)
        ds = xr.Dataset(data, coords={"step": self.step,
                                      "group": np.arange(self.theta_final.shape[0])})
        ds["theta_final"] = (("group", "coord"), self.theta_final)
        ds.attrs.update({k: json.dumps(v) if not isinstance(v, (int, float, str)) else v
                         for k, v in self.params.items()})
        return ds

    def save(self, path) -> str:
        """Save traces and parameters: ``.npz`` (params as JSON) or ``.nc`` (NetCDF via xarray).

        Returns the path written: NumPy appends ``.npz`` to any other name, and the caller
        should report that path, not the one it asked for."""
        path = str(path)
        if path.endswith(".nc"):
            self.to_dataset().to_netcdf(path)
            return path
        np.savez_compressed(path, **{n: getattr(self, n) for n in self.TRACES}, step=self.step,
                            theta_final=self.theta_final, params=json.dumps(self.params))
        return path if path.endswith(".npz") else path + ".npz"

    @classmethod
    def load(cls, path) -> "Trajectory":
        """Read a trajectory written by `save` as ``.npz``."""
        with np.load(path) as f:
            kw = {n: f[n] for n in cls.TRACES + ("step", "theta_final")}
            return cls(**kw, params=json.loads(str(f["params"])))
