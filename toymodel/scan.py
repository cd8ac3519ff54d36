r"""Phase-diagram scans: grids over ELR × configuration × seed, reduced to labelled summaries;
with ``momentum=``, over ELR × momentum × configuration × seed (heavy ball or Adam at a fixed ELR),
with ``constraint="none"``, over learning rate × weight decay × configuration × seed
(conventional training), the modes of `toymodel._scan_modes` (docs/scans.md).

A *cell* is one trajectory: an ELR $\tilde\eta$ (T3), a configuration (a problem of
`toymodel.problems`, e.g. a `SphereToy` with curvatures
$\alpha_i$) and a seed (which fixes the initial state, `toymodel.dynamics.initial_states`).
Every cell is run by the batch backend (`toymodel.backend.summarize`, the contract of
`toymodel.dynamics.summarize_batch`) and reduced to summaries: no traces are stored.

The grid is cut into rectangular *chunks* (blocks of ELRs × configurations × seeds). One pure
function, `compute_chunk`, computes a chunk from its description alone, so the same chunk
plan gives the same bits in-process, on Dask workers (`toymodel.distributed`) and after a
resume from a zarr store (`toymodel._store`).

Beside the observed ``regime`` (int8 codes of `toymodel.regimes.classify_codes`, which judges
the dynamics only; `decode_regime` gives the labels, `regime_reason` each cell's reason), the
dataset carries the theory's predictions for comparison:
``predicted_regime`` (T10, T12), ``equilibrium_loss`` $L^*=(\sum\alpha_i-1/\tilde\eta)/2$
(T12), the thresholds $1/\sum\alpha_i$ and $1/\min\alpha_i$ (T10) and the random level.

This module is the public face of the scan and defines nothing itself (the function
``toymodel.scan`` hides it as an attribute of the package; ``from toymodel.scan import ...``
reaches it). The implementation lives in private modules, one concern each
(docs/architecture.md): `toymodel._scan_chunk` (`CellSpec`, `compute_chunk`),
`toymodel._scan_plan` (`ScanPlan`, chunking, limits), `toymodel._scan_dataset` (`template`),
`toymodel._scan_run` (`scan`, the runner, `open_scan`), `toymodel._scan_agreement`,
`toymodel._scan_plot`, `toymodel._scan_modes` (the modes and their parameter grids); ELR and seed
grids in `toymodel._grids`.
"""
from __future__ import annotations

# the names of __all__, and (noqa) the ones reachable here before the split
from ._grids import MAX_SEED, elr_grid  # noqa: F401
from ._scan_agreement import (Agreement, LossAgreement, agreement,  # noqa: F401
                              convergence_boundary, loss_agreement)
from ._scan_chunk import CellSpec, ChunkTask, compute_chunk  # noqa: F401
from ._scan_dataset import decode_regime, regime_reason, template  # noqa: F401
from ._scan_plan import (CELL_DIMS, FORMAT, MAX_CHUNK_CELLS, MAX_ELEMENT_STEPS,  # noqa: F401
                         MAX_ELR_CONFIG_PAIRS, MAX_STORE_CHUNKS, TARGET_ELEMENT_STEPS, ScanPlan,
                         plan_chunks)
from ._scan_plot import MAX_PIXELS, figure_pixels, plot_scan  # noqa: F401
from ._scan_run import open_scan, scan, verify_scan

__all__ = ["scan", "agreement", "Agreement", "loss_agreement", "LossAgreement", "open_scan",
           "verify_scan", "plot_scan", "decode_regime", "regime_reason", "elr_grid", "plan_chunks",
           "compute_chunk", "CELL_DIMS", "TARGET_ELEMENT_STEPS"]
