"""Completion markers of the scan's zarr store: which chunks are done, and whether their files
still match what was written.

Layout: ``.toymodel/manifest.json`` (the plan's parameters and their hash) and
``.toymodel/done/<chunk_id>.json``, one marker per finished chunk naming its files with their
size and sha256 (`toymodel._store` writes them). Owns the checks: sizes only for readers,
sizes and hashes for a writer before it trusts a chunk and for `verify_store`.
"""
from __future__ import annotations

import json
import os

from ._store_files import _sha256_file

#: the store's metadata folder (manifest, markers, lock).
META = ".toymodel"


class DamagedStoreError(ValueError):
    """A store whose completion markers do not match its files; ``damage`` lists
    ``(chunk_id, what)`` pairs."""

    def __init__(self, path, damage):
        self.path, self.damage = path, list(damage)
        super().__init__(f"the store {path} is damaged: {describe_damage(self.damage)}; re-run the "
                         f"same scan to recompute the damaged chunks")


def describe_damage(damage, limit: int = 5) -> str:
    """``(chunk_id, what)`` pairs as one line: the first ``limit``, then how many more."""
    text = "; ".join(f"chunk {c} ({what})" for c, what in damage[:limit])
    return text + (f"; and {len(damage) - limit} more chunks" if len(damage) > limit else "")


def _marker_damage(root: str, marker: dict, full: bool):
    """What is wrong with a chunk's files against its marker (``None`` if nothing): sizes always,
    sha256 when ``full``."""
    files = marker.get("files")
    if not isinstance(files, dict):  # written before markers named their files
        return "its marker records no file checksums (written by an older toymodel)" if full else None
    for name, rec in files.items():
        f = os.path.join(root, rec["path"])
        try:
            size = os.path.getsize(f)
        except OSError:
            size = None
        if rec["size"] is None:
            if size is not None:
                return f"{name}: unexpected file {rec['path']}"
            continue
        if size is None:
            return f"{name}: file {rec['path']} is missing"
        if size != rec["size"]:
            return f"{name}: file {rec['path']} has {size} bytes, expected {rec['size']}"
        if full and _sha256_file(f) != rec["sha256"]:
            return f"{name}: file {rec['path']} does not match its sha256"
    return None


def iter_markers(path: str):
    """``(chunk_id, marker)`` of every completion marker, in chunk order, one at a time (a store's
    markers are never all held in memory); ``marker`` is ``None`` when the file is unreadable."""
    done_dir = os.path.join(path, META, "done")
    ids = sorted(int(n[:-5]) for n in os.listdir(done_dir) if n.endswith(".json") and n[:-5].isdigit())
    for c in ids:
        try:
            with open(os.path.join(done_dir, f"{c}.json")) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            marker = None
        yield c, marker


def check_markers(path, full: bool = True):
    """``(done, damage)``: ids of the chunks whose files match their markers, and
    ``(chunk_id, what)`` for those that do not."""
    path = os.path.abspath(os.fspath(path))
    done, damage = set(), []
    for c, m in iter_markers(path):
        what = "its completion marker is unreadable" if m is None else _marker_damage(path, m, full)
        if what is None:
            done.add(c)
        else:
            damage.append((c, what))
    return done, sorted(damage)


def _manifest(path: str) -> dict:
    manifest = os.path.join(path, META, "manifest.json")
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"{path} is not a toymodel scan store (no {META}/manifest.json)")
    with open(manifest) as f:
        return json.load(f)


def verify_store(path) -> dict:
    """Check every marked chunk of a store against its marker (sizes and sha256): returns
    ``{"path", "n_chunks", "done", "damage"}`` with ``damage`` a list of ``(chunk_id, what)``."""
    path = os.path.abspath(os.fspath(path))
    n_chunks = _manifest(path)["n_chunks"]
    done, damage = check_markers(path, full=True)
    return {"path": path, "n_chunks": n_chunks, "done": len(done), "damage": damage}
