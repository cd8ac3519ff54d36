"""Durable, atomic file operations of the scan's outputs: nothing is ever left half-written.

Owns what the zarr store (`toymodel._store`) adds to the primitives of `toymodel._atomic`
(``fsync``, the temporary sibling ``.NAME.tmp-PID-XXXXXXXX``, the atomic NetCDF write, all
re-exported here): JSON written through a temporary file and a rename, the removal of the
temporaries left by dead processes, sha256 of a file. Standard library only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid

from ._atomic import _fsync_dir, _fsync_file, _tmp_name, write_netcdf_atomic  # noqa: F401 (re-exported)

#: a temporary file or directory of this module, with the pid of the process that made it.
_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}")


def _atomic_write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path) -> list:
    """Remove the temporaries ``.NAME.tmp-PID-…`` next to ``path`` whose process is dead (left by a
    killed creation or NetCDF write); return the paths removed."""
    parent, base = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(rf"\.{re.escape(base)}\.tmp-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = pattern.match(name)
            if m and not _pid_alive(int(m.group(1))):
                full = os.path.join(parent, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(full)
                removed.append(full)
    return removed


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
