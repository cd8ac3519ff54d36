"""The scan's zarr store: written chunk by chunk, resumable, never silently overwritten.

Layout (zarr format 3, written through xarray so any ``xr.open_zarr`` reads it)::

    scan.zarr/
      zarr.json, tail_loss/, regime/, ...     the dataset; per-cell arrays are chunked exactly
                                              like the scan's chunk plan (one storage chunk per
                                              plan chunk and variable)
      .toymodel/manifest.json                 the plan's parameters and their hash
      .toymodel/done/<chunk_id>.json          completion markers

Protocol (one writer: the process that called `toymodel.scan.scan`):

1. creation is atomic: the template (coordinates, predictions, attrs; cell arrays left at their
   fill values, which zarr does not write) and the manifest are written to a temporary sibling
   directory that is then renamed to the store's path;
2. a chunk's arrays are written, their files ``fsync``-ed, and only then its marker is written
   (temporary file, ``fsync``, rename): a marker therefore always points at durable data;
3. a chunk without a marker is recomputed and rewritten whole on the next call: because plan
   chunks and storage chunks coincide, a torn write never touches a finished chunk;
4. opening a store whose manifest hash differs from the call's plan raises ``ValueError`` naming
   the parameters that differ.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings

import numpy as np

META = ".toymodel"
#: test hook: called as ``hook(chunk_id, variable_name)`` after each variable of a chunk is written.
_WRITE_HOOK = None


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's notices about fixed-width strings and consolidated metadata in format 3
    (xarray writes strings the same way; the store is read back by xarray)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr.*")
        yield


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync-ed
        _fsync_file(path)


def _atomic_write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _diff(old: dict, new: dict) -> list:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class ScanStore:
    """A scan store on the local filesystem (see the module docstring for the protocol)."""

    def __init__(self, path: str, plan):
        self.path, self.plan = path, plan
        self.done_dir = os.path.join(path, META, "done")
        self._group = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, path, plan, make_template) -> "ScanStore":
        """Open the store for ``plan`` (resume), or create it; refuse a store of another plan."""
        path = os.path.abspath(os.fspath(path))
        manifest = os.path.join(path, META, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                old = json.load(f)
            if old.get("plan_hash") != plan.digest():
                changed = _diff(old.get("params", {}), plan.params())
                raise ValueError(
                    f"the store {path} holds a scan with other parameters (differs in: "
                    f"{', '.join(changed) or 'format'}); pass the same parameters to resume it, "
                    f"or choose another store path")
        elif os.path.exists(path):
            raise ValueError(f"{path} exists and is not a toymodel scan store (no {META}/manifest.json); "
                             f"choose another store path")
        else:
            cls._create(path, plan, make_template)
        return cls(path, plan)

    @staticmethod
    def _create(path, plan, make_template) -> None:
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        ds = make_template()
        encoding = {name: {"chunks": plan.chunks} for name in plan.cell_vars()}
        with quiet_zarr():
            ds.to_zarr(tmp, mode="w-", zarr_format=3, encoding=encoding, consolidated=True)
        os.makedirs(os.path.join(tmp, META, "done"))
        _atomic_write_json(os.path.join(tmp, META, "manifest.json"),
                           {"plan_hash": plan.digest(), "params": plan.params(),
                            "n_chunks": plan.n_chunks, "shape": list(plan.shape)})
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(os.path.join(root, name))
        try:
            os.rename(tmp, path)
        except OSError as err:
            raise ValueError(f"could not create the store {path}: {err}") from err
        _fsync_dir(parent)

    # -- chunks ----------------------------------------------------------------------------------
    def done_chunks(self) -> set:
        """Ids of the chunks whose marker exists (their data is durable)."""
        return {int(n[:-5]) for n in os.listdir(self.done_dir)
                if n.endswith(".json") and n[:-5].isdigit()}

    def _chunk_files(self, name: str, chunk_id: int) -> str:
        idx = np.unravel_index(chunk_id, self.plan.grid)
        return os.path.join(self.path, name, "c", *(str(int(i)) for i in idx))

    def write(self, chunk_id: int, region, result: dict) -> None:
        """Write one chunk's arrays, make them durable, then mark the chunk done."""
        import zarr

        if self._group is None:
            with quiet_zarr():
                self._group = zarr.open_group(self.path, mode="r+")
        digest = hashlib.sha256()
        with quiet_zarr():
            for name in self.plan.cell_vars():
                data = np.ascontiguousarray(result[name])
                self._group[name][region] = data
                digest.update(data.tobytes())
                if _WRITE_HOOK is not None:
                    _WRITE_HOOK(chunk_id, name)
        for name in self.plan.cell_vars():
            f = self._chunk_files(name, chunk_id)
            if os.path.exists(f):  # an all-fill chunk is not stored at all
                _fsync_file(f)
        _atomic_write_json(os.path.join(self.done_dir, f"{chunk_id}.json"),
                           {"chunk_id": chunk_id, "region": [[int(s.start), int(s.stop)] for s in region],
                            "backend": result.get("_backend", ""), "sha256": digest.hexdigest(),
                            "written": time.time()})

    def markers(self) -> list:
        out = []
        for c in sorted(self.done_chunks()):
            with open(os.path.join(self.done_dir, f"{c}.json")) as f:
                out.append(json.load(f))
        return out

    def finish(self):
        """Record the backends used, mark the store complete, consolidate; return the dataset."""
        import zarr

        backends = sorted({b for m in self.markers() for b in m.get("backend", "").split(",") if b})
        with quiet_zarr():
            g = zarr.open_group(self.path, mode="r+")
            g.attrs.update({"backend": ",".join(backends), "complete": 1})
            zarr.consolidate_metadata(self.path)
        return open_store(self.path)


def open_store(path, allow_incomplete: bool = False):
    """Open a scan store as an ``xarray.Dataset`` (lazy). An unfinished store raises ``ValueError``
    (re-run the same scan call to finish it) unless ``allow_incomplete``."""
    import xarray as xr

    path = os.path.abspath(os.fspath(path))
    manifest = os.path.join(path, META, "manifest.json")
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"{path} is not a toymodel scan store (no {META}/manifest.json)")
    with open(manifest) as f:
        n_chunks = json.load(f)["n_chunks"]
    done = len([n for n in os.listdir(os.path.join(path, META, "done")) if n.endswith(".json")])
    if done < n_chunks and not allow_incomplete:
        raise ValueError(f"the store {path} is incomplete ({done} of {n_chunks} chunks done); "
                         f"re-run the same scan to finish it")
    with quiet_zarr():
        return xr.open_zarr(path, chunks=None, consolidated=True)
