"""Scans on a Dask cluster (``dask.distributed``): the same chunk plan, computed on workers.

The executor is generic: `run_chunks` receives the chunk function (the scan passes
`toymodel._scan_chunk.compute_chunk`, pure: its result depends on the chunk's description only) and
never imports the scan back. The client process gathers results as they complete and is the
store's single writer (`toymodel._store`), so no two processes ever write zarr at once.

Faults: a worker that dies loses only its running task, which the scheduler reruns on another
worker (``distributed.scheduler.allowed-failures``); a lost scheduler raises here, and the same
call resumes from the store's completion markers; an unreachable scheduler raises
`SchedulerUnreachable` after `CONNECT_TIMEOUT_S` seconds, before any work. ``dask`` is imported
only inside functions: ``import toymodel`` never needs it.
"""
from __future__ import annotations

import contextlib
import itertools
import uuid

from ._deps import require

#: seconds to wait for a scheduler named by its address before giving up.
CONNECT_TIMEOUT_S = 5.0


class SchedulerUnreachable(ConnectionError):
    """No Dask scheduler answered at the given address within the timeout."""


def connect(client, timeout: float | None = None):
    """``(client, owned)`` for a ``dask.distributed.Client`` or a scheduler address (connected
    within ``timeout`` seconds, default `CONNECT_TIMEOUT_S`, else `SchedulerUnreachable`)."""
    require("dask", "distributed scans")
    distributed = require("distributed", "distributed scans")
    if isinstance(client, str):
        if not client.startswith(("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")):
            raise ValueError(f"client must be a dask.distributed.Client or a scheduler address "
                             f"like 'tcp://host:8786', got {client!r}")
        timeout = CONNECT_TIMEOUT_S if timeout is None else float(timeout)
        try:
            return distributed.Client(client, timeout=f"{timeout}s"), True
        except OSError as err:  # distributed raises OSError (TimeoutError) after the timeout
            raise SchedulerUnreachable(
                f"no Dask scheduler answered at {client} within {timeout:g} s ({err}); start one "
                f"(dask scheduler) or check the address") from None
    if isinstance(client, distributed.Client):
        return client, False
    raise ValueError(f"client must be None, a dask.distributed.Client or a scheduler address "
                     f"'tcp://host:port', got {type(client).__name__}")


def _slots(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # an unusual client: fall back to a modest window
        return 4


def run_chunks(client, fn, tasks, commit, max_in_flight=None) -> None:
    """Run ``fn(task)`` on the cluster for every ``(key, task)`` of ``tasks``; call
    ``commit(key, result)`` here, in completion order. ``client`` is a connected
    ``dask.distributed.Client`` (see `connect`). At most ``max_in_flight`` tasks (default: 2 per
    worker thread, at least 4) are submitted at once, so results never pile up in memory."""
    from distributed import as_completed

    todo = iter(tasks)  # consumed lazily: a task is described only when it is submitted
    window = max_in_flight or max(4, 2 * _slots(client))
    tag = uuid.uuid4().hex[:8]
    ids: dict = {}
    futures: list = []

    def submit(item):
        key, task = item
        fut = client.submit(fn, task, key=f"toymodel-chunk-{tag}-{key}", pure=False)
        ids[fut.key] = key
        futures.append(fut)
        return fut

    pending = as_completed([submit(item) for item in itertools.islice(todo, window)])
    try:
        for fut in pending:
            result = fut.result()  # the task's error, or CancelledError if the cluster died
            key = ids.pop(fut.key)
            fut.release()
            commit(key, result)
            item = next(todo, None)
            if item is not None:
                pending.add(submit(item))
    except BaseException:
        # Ctrl-C, a failed task or a lost scheduler: stop the rest of this scan's tasks; the
        # chunks committed so far stay in the store and the same call resumes from them.
        with contextlib.suppress(Exception):
            client.cancel([f for f in futures if f.key in ids])
        raise
