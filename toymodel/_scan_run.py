r"""The entry point of a scan: plan, refuse, open the destination, compute the chunks left, finish.

Owns `scan` (the public function `toymodel.scan`), the runner `_run` that executes a validated
`ScanPlan` in process or on a Dask cluster, the in-memory sink, and the readers of a finished
store (`open_scan`, `verify_scan`). The chunk function `compute_chunk` is handed to the executor
(`toymodel.distributed.run_chunks`), which never imports the scan; the store (`toymodel._store`)
and the cluster are imported only when asked for.
"""
from __future__ import annotations

import numpy as np

from ._progress import progress
from ._scan_chunk import compute_chunk
from ._scan_dataset import decode_regime, template
from ._scan_plan import FORMAT, _plan, check_memory


def scan(problem_or_alphas, elrs=None, seeds=4, steps=20000, tail=2000, constraint="total",
         backend="auto", dtype="float64", store=None, lyapunov=False, client=None,
         chunk_size=None, progress_bar=True, dim=2, *, momentum=None, momentum_mode="official",
         optimizer="heavy_ball", beta2=0.999, eps=1e-3, lr=None, weight_decay=None,
         _after_chunk=None, _after_write=None):
    r"""Run every cell of the grid ELR × configuration × seed and return an ``xarray.Dataset``;
    with ``momentum``, of ELR × momentum × configuration × seed; with ``constraint="none"``, of
    learning rate × weight decay × configuration × seed (the modes of `toymodel._scan_modes`).

    Parameters
    ----------
    problem_or_alphas
        A problem, a curvature sequence (a `SphereToy` of dimension ``dim``),
        or a list of them (the ``config`` dimension). Configurations of different shapes are
        run in separate kernel calls.
    elrs
        ELRs $\tilde\eta$ (T3): a sequence, ``"a:b:N"`` (N log-spaced) or ``"x,y,z"``.
    seeds
        A count ``N`` (seeds ``0..N-1``) or a sequence of distinct non-negative integers;
        the initial state depends on the seed, the problem's shape and the constraint only.
    steps, tail
        Steps per trajectory and the tail window the summaries average over.
    constraint
        ``"total"`` or ``"individual"`` (T7), or ``"none"``: conventional training, full-space GD
        with weight decay (docs/conventional.md T20), over the grid ``lr`` × ``weight_decay``.
    backend
        Passed unchanged to `toymodel.backend.summarize` (`summarize_momentum`, `summarize_wd`).
    dtype
        ``"float64"`` or ``"float32"``: the computing dtype.
    store
        Path of a zarr store (``"scan.zarr"``): chunks are written as they finish and the same
        call resumes an interrupted scan (see `toymodel._store`); a store made with other
        parameters, or being written by another live process, raises ``ValueError``; a finished
        chunk whose files no longer match its completion marker (deleted, truncated, altered) is
        recomputed, with a ``RepairWarning``. The returned dataset then reads lazily from the store.
    lyapunov
        Also estimate the largest Lyapunov exponent (a twin trajectory per cell).
    client
        ``None`` (in-process), a ``dask.distributed.Client`` or a scheduler address
        ``"tcp://host:port"``: chunks run on the Dask workers, the results are written here.
    chunk_size
        Cells per chunk (int) or ``(elr, config, seed)`` sizes (one per dimension in the other
        modes); default from the work per cell (`plan_chunks`).
    progress_bar
        Show cells done / total (a resumed scan starts at the cells already done).
    momentum
        Momenta $\beta\in[0,1)$ (a sequence, ``"x,y,z"`` or ``"a:b:N"``): heavy ball at each
        fixed ELR (docs/momentum.md T41–T48), the buffer starting at zero; for ``optimizer="adam"``
        the values are $\beta_1$. No ``lyapunov``.
    momentum_mode, optimizer, beta2, eps
        ``"official"`` (the buffer left as is after the rescale) or ``"transport"``;
        ``"heavy_ball"`` or ``"adam"`` (then ``beta2`` and ``eps``, on the unit sphere, apply).
    lr, weight_decay
        With ``constraint="none"``: learning rates $\eta$ (as ``elrs``) and weight decays
        $\lambda\ge0$ (as ``momentum``), every pair with $\eta\lambda<1$ (checked first, naming
        the offending pair); starts of unit norm (as `toymodel.simulate` with ``constraint="none"``).

    Bad input, and a scan beyond the limits (`MAX_ELEMENT_STEPS`, the machine's memory for an
    in-memory result or for one chunk, `MAX_STORE_CHUNKS`), raise ``ValueError`` before any work,
    with the number the scan would need (docs/reliability.md).

    Returns
    -------
    xarray.Dataset
        Momentum and weight-decay scans: the layout of docs/scans.md ("Momentum and weight
        decay"), with a ``mode`` attribute. A fixed-ELR scan: dims ``(elr, config, seed)``; per-cell ``tail_loss``, ``tail_loss_std``,
        ``final_loss``, ``min_share``, ``frac_above_threshold``, ``tail_grad_norm``, ``tail_angle``
        (``lyapunov``), ``status``, ``bad_step``, ``regime`` (int8 codes: `decode_regime` gives the
        labels, `regime_reason` the reasons); per configuration ``alphas`` (dim ``group``),
        ``random_loss``, ``total_threshold``, ``divergence_threshold``; per (elr, config)
        ``equilibrium_loss`` and ``predicted_regime`` (codes); provenance in attrs.
    """
    plan = _plan(problem_or_alphas, elrs, seeds, steps=steps, tail=tail, constraint=constraint,
                 backend=backend, dtype=dtype, lyapunov=lyapunov, chunk_size=chunk_size, dim=dim,
                 momentum=momentum, momentum_mode=momentum_mode, optimizer=optimizer, beta2=beta2,
                 eps=eps, lr=lr, weight_decay=weight_decay)
    return _run(plan, store=store, client=client, progress_bar=progress_bar,
                after_chunk=_after_chunk, after_write=_after_write)


def _run(plan, store=None, client=None, progress_bar=True, after_chunk=None, after_write=None,
         names=None):
    """Run a validated plan: check its memory, connect to the cluster, open (and check) the store,
    compute the chunks not yet done, finish. Everything that can be refused is refused before the
    first chunk is computed.

    ``after_chunk(chunk_id, chunks_done)`` is called after each chunk is committed and
    ``after_write(chunk_id, variable)`` after each variable of a chunk is written to the store:
    the fault-injection tests stop or kill the process there. ``names`` as in `_plan`.
    """
    def label(key):
        return (names or {}).get(key, key)

    check_memory(plan, in_memory=store is None, label=label,
                 store_hint=(names or {}).get("store", "store='NAME.zarr'"))
    owned = False
    if client is not None:  # connect first: an unreachable scheduler is refused before any work
        from .distributed import connect
        client, owned = connect(client)
    try:
        if store is None:
            sink = _MemorySink(template(plan, lazy=False), plan)
            todo = list(range(plan.n_chunks))
        else:
            from ._store import ScanStore
            sink = ScanStore.open_or_create(store, plan, lambda: template(plan, lazy=True),
                                            on_write=after_write)
        try:
            if store is not None:
                todo = _trusted_todo(sink, plan)
            return _compute(plan, sink, todo, client, progress_bar, after_chunk)
        finally:
            sink.close()
    finally:
        if owned:
            client.close()


def _trusted_todo(sink, plan) -> list:
    """The chunks to compute: those without a marker, and those whose files no longer match it
    (deleted, truncated, altered), which are discarded first with a `RepairWarning`."""
    import warnings

    from ._store import RepairWarning, describe_damage

    done, damage = sink.check(full=True)
    if damage:
        warnings.warn(RepairWarning(f"{sink.path}: {describe_damage(damage)}; recomputing "
                                    f"{'it' if len(damage) == 1 else f'these {len(damage)} chunks'}"),
                      stacklevel=3)
        sink.discard([c for c, _ in damage])
    todo = [c for c in range(plan.n_chunks) if c not in done]
    if todo:
        sink.mark_incomplete()
    return todo


def _compute(plan, sink, todo, client, progress_bar, after_chunk):
    """Compute ``todo`` (in process or on ``client``), committing each chunk to ``sink``."""
    done_cells = plan.n_cells - sum(_cells(plan, c) for c in todo)
    # the bar starts at the cells already done; its rate (and ETA) counts the new work only
    with progress(total=plan.n_cells, desc="scan cells", disable=not progress_bar,
                  initial=done_cells) as bar:
        counter = [plan.n_chunks - len(todo)]

        def commit(chunk_id, result):
            sink.write(chunk_id, plan.region(chunk_id), result)
            bar.update(_cells(plan, chunk_id))
            counter[0] += 1
            if after_chunk is not None:
                after_chunk(chunk_id, counter[0])

        tasks = ((c, plan.task(c)) for c in todo)
        if client is None:
            for c, task in tasks:
                commit(c, compute_chunk(task))
        else:
            from .distributed import run_chunks
            run_chunks(client, compute_chunk, tasks, commit)
    return sink.finish()


def _cells(plan, chunk_id) -> int:
    return int(np.prod([s.stop - s.start for s in plan.region(chunk_id)]))


class _MemorySink:
    """Writes chunk results into an in-memory dataset (``store=None``)."""

    def __init__(self, ds, plan):
        self.ds, self.plan, self.backends = ds, plan, set()

    def write(self, chunk_id, region, result):
        for name in self.plan.cell_vars():
            self.ds[name].values[self.plan.var_region(name, region)] = result[name]
        self.backends.update(b for b in result["_backend"].split(",") if b)

    def finish(self):
        self.ds.attrs["backend"] = ",".join(sorted(self.backends))
        return self.ds

    def close(self):
        pass


def open_scan(path, allow_incomplete: bool = False, decode: bool = False):
    """Open a scan store written by `scan` (lazy ``xarray.Dataset``); an unfinished store
    raises ``ValueError`` unless ``allow_incomplete``, and a damaged one (a chunk file missing or
    of the wrong size) raises ``ValueError`` naming the chunks, whatever ``allow_incomplete``:
    re-running the scan recomputes them. A store of an older layout (``format`` of its manifest:
    ``toymodel-scan/1`` stored the labels and reasons as strings) is refused, naming both.

    ``decode=True`` loads ``regime`` and ``predicted_regime`` as label strings (`decode_regime`:
    76 B per cell instead of 1); by default they stay int8 codes."""
    from ._store import open_store
    ds = open_store(path, allow_incomplete=allow_incomplete, format=FORMAT)
    return decode_regime(ds) if decode else ds


def verify_scan(path) -> dict:
    """Check every finished chunk of a scan store against the size and sha256 its completion
    marker records: ``{"path", "n_chunks", "done", "damage"}``, ``damage`` a list of
    ``(chunk_id, what)`` (empty for an intact store)."""
    from ._store import verify_store
    return verify_store(path)
