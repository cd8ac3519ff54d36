"""Scans on a real Dask LocalCluster (worker processes, loopback only).

Oracle: the in-process scan of the same plan, compared bit for bit; faults are real (a worker
process killed with SIGKILL, a scheduler shut down mid-scan).
"""
import importlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("xarray")
pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

scan_mod = importlib.import_module("toymodel._scan_run")  # scan, and the planner _plan
scan = scan_mod.scan

ALPHAS = (1.0, 2.0, 4.0)
ELRS = np.geomspace(0.05, 5.0, 12)
KW = dict(seeds=2, steps=400, tail=80, backend="numpy", progress_bar=False, chunk_size=4)
VARS = ("tail_loss", "tail_loss_std", "final_loss", "min_share", "frac_above_threshold",
        "tail_grad_norm", "tail_angle", "status", "bad_step", "regime")


def _cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0")


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as c:
        yield c


def assert_same_cells(a, b):
    # exact on purpose: worker processes run the same code on the same per-cell inputs, on the same
    # machine (same CPU dispatch, same libraries), with no cross-cell reduction (docs/numerics.md)
    a, b = a.load(), b.load()
    for name in VARS + ("predicted_regime", "equilibrium_loss", "alphas"):
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_distributed_equals_local_bit_for_bit(client, tmp_path):
    local = scan([ALPHAS, [1.0, 3.0]], ELRS, **KW)
    dist = scan([ALPHAS, [1.0, 3.0]], ELRS, client=client, **KW)
    assert_same_cells(local, dist)
    assert dist.attrs["backend"] == "numpy"
    stored = scan([ALPHAS, [1.0, 3.0]], ELRS, client=client, store=tmp_path / "d.zarr", **KW)
    assert_same_cells(local, stored)


def test_scheduler_address_string(client):
    local = scan(ALPHAS, ELRS[:5], **KW)
    dist = scan(ALPHAS, ELRS[:5], client=client.scheduler.address, **KW)
    assert_same_cells(local, dist)


def test_worker_killed_mid_scan_loses_nothing(client, tmp_path, monkeypatch):
    local = scan(ALPHAS, ELRS, lyapunov=True, **{**KW, "steps": 1500, "tail": 300})
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def kill_one(chunk_id, n_done):
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(chunk_id)

    dist = scan(ALPHAS, ELRS, lyapunov=True, client=client, store=tmp_path / "k.zarr",
                _after_chunk=kill_one, **{**KW, "steps": 1500, "tail": 300})
    assert killed
    assert_same_cells(local, dist)
    n_chunks = scan_mod._plan(ALPHAS, ELRS, 2, 1500, 300, "total", "numpy", "float64", True, 4,
                              2).n_chunks
    assert len(os.listdir(tmp_path / "k.zarr" / ".toymodel" / "done")) == n_chunks
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    assert victim not in client.run(os.getpid).values()


def test_lost_scheduler_then_same_call_resumes(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    ref = scan(ALPHAS, ELRS, **KW)
    cluster = _cluster()
    c = distributed.Client(cluster)

    def lose_scheduler(chunk_id, n_done):
        if n_done == 2:
            cluster.close()

    try:
        with pytest.raises(Exception):
            scan(ALPHAS, ELRS, client=c, store=path, _after_chunk=lose_scheduler, **KW)
    finally:
        c.close()
        cluster.close()
    done = len(os.listdir(path / ".toymodel" / "done"))
    assert done >= 2
    resumed = scan(ALPHAS, ELRS, store=path, **KW)  # the same call, here in-process
    assert_same_cells(ref, resumed)


def test_bad_client_raises():
    with pytest.raises(ValueError, match="scheduler address"):
        scan(ALPHAS, ELRS[:2], client="localhost:8786", **KW)
    with pytest.raises(ValueError, match="client"):
        scan(ALPHAS, ELRS[:2], client=42, **KW)


def test_missing_dask_gives_the_install_hint(monkeypatch):
    monkeypatch.setenv("TOYMODEL_DISABLE", "dask")
    with pytest.raises(ImportError, match=r"toymodel\[dist\]"):
        scan(ALPHAS, ELRS[:2], client="tcp://127.0.0.1:1", **KW)


def test_import_toymodel_never_imports_dask():
    code = ("import sys, toymodel, toymodel.scan, toymodel.distributed, toymodel._cli_scan; "
            "bad = [m for m in ('dask', 'distributed', 'xarray', 'zarr') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
