"""The scan's zarr store: written chunk by chunk, resumable, verified, never silently overwritten.

Layout (zarr format 3, written through xarray so any ``xr.open_zarr`` reads it)::

    scan.zarr/
      zarr.json, tail_loss/, regime/, ...     the dataset; per-cell arrays are chunked exactly
                                              like the scan's chunk plan (one storage chunk per
                                              plan chunk and variable)
      .toymodel/manifest.json                 the plan's parameters and their hash
      .toymodel/done/<chunk_id>.json          completion markers: each names its chunk's files
                                              with their size and sha256
      .toymodel/lock                          the writer's lock (``flock``) and its pid

Protocol (one writer at a time, the process holding the lock):

1. creation is atomic: the template (coordinates, predictions, attrs; cell arrays left at their
   fill values, which zarr does not write) and the manifest are written to a temporary sibling
   directory ``.NAME.tmp-PID-XXXXXXXX`` that is then renamed to the store's path; a failed or
   interrupted creation removes it, and a later call removes those of dead processes;
2. a writer takes ``.toymodel/lock`` (``fcntl.flock``, released by the kernel when the process
   dies, so a stale lock is simply taken over); a second writer is refused, naming the holder's pid;
3. a chunk's arrays are written, their files ``fsync``-ed, and only then its marker is written
   (temporary file, ``fsync``, rename): a marker therefore always points at durable data, and it
   records each file's size and sha256 (``None`` for a chunk zarr did not store: all fill values);
4. before trusting a chunk, a writer checks its files against the marker (sizes and hashes):
   a missing, truncated or altered chunk loses its marker and is recomputed; readers
   (`open_store`) check sizes only, `verify_store` everything;
5. a chunk without a marker is recomputed and rewritten whole on the next call: because plan
   chunks and storage chunks coincide, a torn write never touches a finished chunk;
6. opening a store whose manifest hash differs from the call's plan raises ``ValueError`` naming
   the parameters that differ;
7. a store whose manifest records another layout (``params["format"]``, e.g. ``toymodel-scan/1``
   with string labels) than the plan's is refused with a message naming both, by the writer and
   by `open_store` when given the ``format`` it reads.

Modules: `toymodel._store_files` (atomic, durable file operations), `toymodel._store_markers`
(completion markers and their checks), this one (the writer `ScanStore`, its lock, and the
reader `open_store`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import warnings

import numpy as np

from ._store_files import (_TMP, _atomic_write_json, _fsync_dir, _fsync_file, _sha256_file,
                           _tmp_name, remove_stale_temporaries, write_netcdf_atomic)
from ._store_markers import (META, DamagedStoreError, _manifest, check_markers, iter_markers,
                             describe_damage, verify_store)

try:
    import fcntl
except ImportError:  # not POSIX: no lock (a warning says so)
    fcntl = None

__all__ = ["META", "DamagedStoreError", "RepairWarning", "ScanStore", "StoreLockedError",
           "check_markers", "describe_damage", "open_store", "quiet_zarr", "remove_stale_temporaries",
           "verify_store", "write_netcdf_atomic"]


class StoreLockedError(ValueError):
    """Another live process is writing the store; ``pid`` is its process id (or ``None``)."""

    def __init__(self, path, pid):
        self.path, self.pid = path, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"the store {path} is being written by {who}; wait for it to finish or stop "
                         f"it (a killed writer's lock is taken over), or choose another store path")


class RepairWarning(UserWarning):
    """A damaged chunk was found and is being recomputed."""


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's notices about fixed-width strings and consolidated metadata in format 3
    (xarray writes strings the same way; the store is read back by xarray)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr.*")
        yield


def _diff(old: dict, new: dict) -> list:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class _Lock:
    """An exclusive ``flock`` on ``.toymodel/lock`` that also records the holder's pid."""

    def __init__(self, store_path: str):
        self.store_path = store_path
        self.path = os.path.join(store_path, META, "lock")
        self.fd = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            warnings.warn("no fcntl on this system: the store is not locked against a second writer",
                          RuntimeWarning, stacklevel=3)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    warnings.warn(f"could not lock {self.path} ({err}): make sure only one scan "
                                  f"writes this store", RuntimeWarning, stacklevel=3)
                    return
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                raise StoreLockedError(self.store_path, int(holder) if holder.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class ScanStore:
    """A scan store on the local filesystem, open for writing (see the module docstring for the
    protocol). ``on_write(chunk_id, name)``, if given, is called after each variable of a chunk is
    written (fault-injection tests kill the process there)."""

    def __init__(self, path: str, plan, on_write=None):
        self.path, self.plan, self.on_write = path, plan, on_write
        self.done_dir = os.path.join(path, META, "done")
        self._group = None
        self._threads = None  # the fsync pool, made at the first write
        self._lock = _Lock(path)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, path, plan, make_template, on_write=None) -> "ScanStore":
        """Open the store for ``plan`` (resume), or create it; refuse a store of another plan, a
        path that is not a store, and a store another live process is writing. The returned store
        holds the lock until `close`."""
        from ._validate import writable_parent

        path = writable_parent("store", path)
        remove_stale_temporaries(path)
        for _ in range(2):  # a creation race: the loser opens what the winner made
            manifest = os.path.join(path, META, "manifest.json")
            if os.path.exists(manifest):
                with open(manifest) as f:
                    old = json.load(f)
                _check_format(path, old, plan.params().get("format"), resume=True)
                if old.get("plan_hash") != plan.digest():
                    changed = _diff(old.get("params", {}), plan.params())
                    raise ValueError(
                        f"the store {path} holds a scan with other parameters (differs in: "
                        f"{', '.join(changed) or 'format'}); pass the same parameters to resume it, "
                        f"or choose another store path")
                break
            if os.path.isdir(path):
                raise ValueError(f"{path} exists and is not a toymodel scan store (no "
                                 f"{META}/manifest.json); choose another store path")
            if os.path.exists(path):
                raise ValueError(f"{path} is a file, not a zarr store directory; choose another path")
            if cls._create(path, plan, make_template):
                break
        store = cls(path, plan, on_write)
        store._lock.acquire()
        store._remove_stale_files()
        return store

    @staticmethod
    def _create(path, plan, make_template) -> bool:
        """Create the store atomically; ``False`` if another process created it first."""
        parent = os.path.dirname(path)
        tmp = _tmp_name(path)
        try:
            ds = make_template()
            # integer cells: zarr's fill is the template's (a chunk not computed yet is not written)
            encoding = {name: {"chunks": plan.var_chunks(name),
                               **({"fill_value": int(ds[name].values.flat[0])}
                                  if dt.kind in "iu" else {})}
                        for name, dt in plan.cell_vars().items()}
            with quiet_zarr():
                ds.to_zarr(tmp, mode="w-", zarr_format=3, encoding=encoding, consolidated=True)
            os.makedirs(os.path.join(tmp, META, "done"))
            _atomic_write_json(os.path.join(tmp, META, "manifest.json"),
                               {"plan_hash": plan.digest(), "params": plan.params(),
                                "n_chunks": plan.n_chunks, "shape": list(plan.shape)})
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=16) as pool:  # concurrent fsyncs commit together
                list(pool.map(_fsync_file, [os.path.join(root, name) for root, _, files in os.walk(tmp)
                                            for name in files]))
            try:
                os.rename(tmp, path)
            except OSError as err:
                if os.path.exists(os.path.join(path, META, "manifest.json")):
                    return False
                raise ValueError(f"could not create the store {path}: {err}") from err
        finally:  # failed, interrupted or lost the race: leave no temporary behind
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(parent)
        return True

    def _remove_stale_files(self) -> None:
        """Temporary marker files of a killed writer (we hold the lock: none is live)."""
        for d in (os.path.join(self.path, META), self.done_dir):
            for n in os.listdir(d):
                if _TMP.search(n):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(d, n))

    def close(self) -> None:
        """Release the lock (the store stays as it is: a later call resumes it)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- chunks ----------------------------------------------------------------------------------
    def check(self, full: bool = True):
        """``(done, damage)`` of `check_markers`: the chunks to trust, and those to recompute."""
        return check_markers(self.path, full=full)

    def discard(self, chunk_ids) -> None:
        """Forget damaged chunks: remove their markers first (so they count as not done), then
        their files; clear the store's ``complete`` flag. The next writes recompute them."""
        chunk_ids = sorted(chunk_ids)
        if not chunk_ids:
            return
        self.mark_incomplete()
        for c in chunk_ids:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.done_dir, f"{c}.json"))
        _fsync_dir(self.done_dir)
        for c in chunk_ids:
            for name in self.plan.cell_vars():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._chunk_file(name, c))

    def mark_incomplete(self) -> None:
        """Clear ``complete`` before rewriting any chunk of a store that was marked complete."""
        import zarr

        with quiet_zarr():
            g = zarr.open_group(self.path, mode="r+")
            if g.attrs.get("complete"):
                g.attrs["complete"] = 0
                zarr.consolidate_metadata(self.path)
        self._group = None

    def _pool(self):
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor
            self._threads = ThreadPoolExecutor(max_workers=min(16, len(self.plan.cell_vars())),
                                               thread_name_prefix="toymodel-fsync")
        return self._threads

    def _durable(self, f: str) -> dict:
        """Make one chunk file durable and describe it for the marker (an all-fill chunk is not
        stored at all: size and hash ``None``)."""
        rel = os.path.relpath(f, self.path)
        if not os.path.exists(f):
            return {"path": rel, "size": None, "sha256": None}
        _fsync_file(f)
        return {"path": rel, "size": os.path.getsize(f), "sha256": _sha256_file(f)}

    def _chunk_file(self, name: str, chunk_id: int) -> str:
        idx = self.plan.storage_index(name, chunk_id)  # a "group" variable: one chunk along it
        return os.path.join(self.path, name, "c", *(str(i) for i in idx))

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
                self._group[name][self.plan.var_region(name, region)] = data
                digest.update(data.tobytes())
                if self.on_write is not None:
                    self.on_write(chunk_id, name)
        names = list(self.plan.cell_vars())
        # every file fsync-ed (and hashed) before the marker; in parallel threads, because the
        # filesystem commits concurrent fsyncs together (3-10x faster than one after another here)
        files = dict(zip(names, self._pool().map(self._durable, [self._chunk_file(n, chunk_id)
                                                                for n in names])))
        _atomic_write_json(os.path.join(self.done_dir, f"{chunk_id}.json"),
                           {"chunk_id": chunk_id, "region": [[int(s.start), int(s.stop)] for s in region],
                            "backend": result.get("_backend", ""), "sha256": digest.hexdigest(),
                            "files": files, "written": time.time()})

    def finish(self):
        """Record the backends used, mark the store complete, consolidate; return the dataset."""
        import zarr

        # one marker at a time: memory does not grow with the number of chunks
        backends = sorted({b for _, m in iter_markers(self.path) if m
                           for b in m.get("backend", "").split(",") if b})
        with quiet_zarr():
            g = zarr.open_group(self.path, mode="r+")
            g.attrs.update({"backend": ",".join(backends), "complete": 1})
            zarr.consolidate_metadata(self.path)
        return open_store(self.path, format=self.plan.params().get("format"))


def _check_format(path, manifest: dict, expected, resume: bool) -> None:
    """Refuse a store of another layout (``params["format"]`` of its manifest) than ``expected``."""
    found = manifest.get("params", {}).get("format")
    if expected is None or found == expected:
        return
    what = ("it cannot be resumed: run the scan into a new store path" if resume else
            f"run the scan again into a new store, or read this one as it is with "
            f"xarray.open_zarr({path!r})")
    raise ValueError(f"the store {path} has the layout {found!r}, and this toymodel reads and writes "
                     f"{expected!r} (regimes as int8 codes, reasons derived, not stored); {what}")


def open_store(path, allow_incomplete: bool = False, format=None):
    """Open a scan store as an ``xarray.Dataset`` (lazy). An unfinished store raises ``ValueError``
    (re-run the same scan call to finish it) unless ``allow_incomplete``; a store whose chunk files
    do not match their markers (checked by size: cheap) raises `DamagedStoreError` in any case; a
    store whose manifest records another ``format`` than the one given raises ``ValueError``."""
    import xarray as xr

    path = os.path.abspath(os.fspath(path))
    manifest = _manifest(path)
    _check_format(path, manifest, format, resume=False)
    n_chunks = manifest["n_chunks"]
    done, damage = check_markers(path, full=False)
    if damage:
        raise DamagedStoreError(path, damage)
    if len(done) < n_chunks and not allow_incomplete:
        raise ValueError(f"the store {path} is incomplete ({len(done)} of {n_chunks} chunks done); "
                         f"re-run the same scan to finish it")
    with quiet_zarr():
        return xr.open_zarr(path, chunks=None, consolidated=True)
