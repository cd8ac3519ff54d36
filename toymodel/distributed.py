"""Scans on a Dask cluster (``dask.distributed``): the same chunk plan, computed on workers.

Every chunk is one task running `toymodel.scan.compute_chunk` (pure: its result depends on
the chunk's description only). The client process gathers results as they complete and is the
store's single writer (`toymodel._store`), so no two processes ever write zarr at once.

Faults: a worker that dies loses only its running task, which the scheduler reruns on another
worker (``distributed.scheduler.allowed-failures``); a lost scheduler raises here, and the same
call resumes from the store's completion markers. ``dask`` is imported only inside functions:
``import toymodel`` never needs it.
"""
from __future__ import annotations

import contextlib
import uuid

from ._deps import require


def connect(client):
    """``(client, owned)`` for a ``dask.distributed.Client`` or a scheduler address."""
    require("dask", "distributed scans")
    distributed = require("distributed", "distributed scans")
    if isinstance(client, str):
        if not client.startswith(("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")):
            raise ValueError(f"client must be a dask.distributed.Client or a scheduler address "
                             f"like 'tcp://host:8786', got {client!r}")
        return distributed.Client(client, timeout="30s"), True
    if isinstance(client, distributed.Client):
        return client, False
    raise ValueError(f"client must be None, a dask.distributed.Client or a scheduler address "
                     f"'tcp://host:port', got {type(client).__name__}")


def _slots(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # an unusual client: fall back to a modest window
        return 4


def run_chunks(client, plan, chunk_ids, commit, max_in_flight=None) -> None:
    """Compute ``chunk_ids`` of ``plan`` on the cluster; call ``commit(chunk_id, result)`` here,
    in completion order. At most ``max_in_flight`` chunks (default: 2 per worker thread, at least
    4) are submitted at once, so results never pile up in memory."""
    from distributed import as_completed

    from .scan import compute_chunk

    client, owned = connect(client)
    try:
        todo = list(chunk_ids)
        window = max_in_flight or max(4, 2 * _slots(client))
        tag = uuid.uuid4().hex[:8]

        def submit(c):
            fut = client.submit(compute_chunk, plan.task(c), key=f"toymodel-chunk-{tag}-{c}",
                                pure=False)
            ids[fut.key] = c
            return fut

        ids: dict = {}
        first, rest = todo[:window], todo[window:]
        futures = [submit(c) for c in first]
        pending = as_completed(futures)
        try:
            for fut in pending:
                result = fut.result()  # the task's error, or CancelledError if the cluster died
                c = ids.pop(fut.key)
                fut.release()
                commit(c, result)
                if rest:
                    futures.append(submit(rest.pop(0)))
                    pending.add(futures[-1])
        except BaseException:
            # Ctrl-C, a failed task or a lost scheduler: stop the rest of this scan's tasks; the
            # chunks committed so far stay in the store and the same call resumes from them.
            with contextlib.suppress(Exception):
                client.cancel([f for f in futures if f.key in ids])
            raise
    finally:
        if owned:
            client.close()
