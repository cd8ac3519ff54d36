"""Atomic, durable file writes shared by the toy's scans and the network scans.

``fsync`` of a file and of a directory, the temporary sibling ``.NAME.tmp-PID-XXXXXXXX`` (hidden;
its pid says whose it is, so `toymodel._store_files.remove_stale_temporaries` can remove those of
dead processes) and `write_netcdf_atomic`: a destination is either its old content or the complete
new file, never a torn one. Standard library only (the dataset brings its own ``to_netcdf``).
"""
from __future__ import annotations

import contextlib
import os
import uuid


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync-ed
        _fsync_file(path)


def _tmp_name(path: str) -> str:
    """A temporary sibling ``.NAME.tmp-PID-XXXXXXXX``: hidden, and its pid says whose it is."""
    parent, base = os.path.split(path)
    return os.path.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_netcdf_atomic(ds, path) -> None:
    """Write ``ds`` to ``path`` through a temporary file in the same directory, then rename: an
    existing file is replaced only by a complete new one, and a failure leaves no temporary."""
    path = os.path.abspath(os.fspath(path))
    tmp = _tmp_name(path)
    try:
        ds.to_netcdf(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path))
