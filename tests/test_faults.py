"""Fault injection on `toymodel scan` into a zarr store: every fault is survived or refused.

Faults: SIGKILL of a real ``toymodel scan`` process at seeded random times (whatever it was doing:
importing, creating the store, writing a chunk, finishing), SIGKILL inside a chunk's write at
seeded random (chunk, variable) points, SIGINT, a deleted chunk file, a truncated chunk file, a
second writer running at the same time. Oracle: after each fault, running the same command again
gives a store equal to an uninterrupted run bit for bit (every variable, coordinate and attribute
but the creation time), with no stray temporary left; or the command refuses with exit status 2
and a one-line message. Never a NaN cell in a store marked complete.
"""
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

from toymodel.cli import main as cli_main  # noqa: E402

scan_mod = importlib.import_module("toymodel._scan_run")  # open_scan, and the planner _plan

# 12 chunks of 2 cells: chunk k is the k-th ELR, its files are NAME/c/k/0/0
ARGS = ["--alphas", "1,2,4", "--elrs", "0.05:5:12", "--seeds", "2", "--steps", "300", "--tail", "60",
        "--backend", "numpy", "--chunk-size", "2", "--no-progress"]
N_CHUNKS = 12
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
# the same scan through the API, with fault hooks (argv: path, mode, arg)
CHILD = textwrap.dedent("""
    import os, signal, sys, time, importlib
    S = importlib.import_module("toymodel.scan")
    path, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    hooks = {}
    if mode == "write":   # SIGKILL right after variable `name` of chunk `c` is written
        c, name = arg.split(":")
        def hook(chunk_id, var):
            if chunk_id == int(c) and var == name:
                os.kill(os.getpid(), signal.SIGKILL)
        hooks["_after_write"] = hook
    elif mode == "slow":  # a slow writer, so that another can try the same store meanwhile
        hooks["_after_chunk"] = lambda c, n: time.sleep(float(arg))
    S.scan("1,2,4", "0.05:5:12", seeds=2, steps=300, tail=60, backend="numpy", chunk_size=2,
           progress_bar=False, store=path, **hooks)
""")


def _cli(out):
    return [sys.executable, "-m", "toymodel", "scan", *ARGS, "--out", str(out)]


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_same_scan(a, b):
    a, b = a.load(), b.load()
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert _equal(a[name].values, b[name].values), name
    strip = lambda d: {k: v for k, v in d.items() if k != "created"}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


def assert_clean(path):
    """No temporary beside the store or inside its bookkeeping."""
    path = Path(path)
    assert not [n for n in os.listdir(path.parent) if ".tmp-" in n], os.listdir(path.parent)
    for d in (path / ".toymodel", path / ".toymodel" / "done"):
        assert not [n for n in os.listdir(d) if ".tmp-" in n]


def rerun(path, capsys):
    """The same command again, in this process: it must finish the store."""
    assert cli_main(["scan", *ARGS, "--out", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    ds = scan_mod.open_scan(path)
    assert ds.attrs["complete"] == 1
    assert_clean(path)
    return ds


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert cli_main(["scan", *ARGS, "--out", str(path)]) == 0
    return scan_mod.open_scan(path).load()


def test_reference_is_complete_and_finite(ref):
    assert ref.sizes["elr"] == N_CHUNKS and np.isfinite(ref["final_loss"].values).all()


def _kill_when(proc, path, markers, delay):
    """SIGKILL ``proc`` ``delay`` s after the store has ``markers`` completion markers (0: after
    ``delay`` s from the start, whatever it is doing: importing, creating the store)."""
    done = path / ".toymodel" / "done"
    deadline = time.monotonic() + 60
    while markers and time.monotonic() < deadline and proc.poll() is None:
        if done.exists() and len(os.listdir(done)) >= markers:
            break
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkill_at_seeded_random_points(tmp_path, ref, capsys):
    rng = np.random.default_rng(20240611)
    points = [(0, rng.uniform(1.0, 3.0))]  # early: imports or the store's creation
    points += [(int(rng.integers(1, N_CHUNKS)), rng.uniform(0.0, 0.08)) for _ in range(3)]
    for k, (markers, delay) in enumerate(points):
        path = tmp_path / f"k{k}.zarr"
        proc = subprocess.Popen(_cli(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        _kill_when(proc, path, markers, delay)
        assert_same_scan(ref, rerun(path, capsys))


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_inside_a_chunk_write_at_seeded_random_points(tmp_path, ref, capsys, seed):
    plan = scan_mod._plan("1,2,4", "0.05:5:12", 2, 300, 60, "total", "numpy", "float64", False, 2, 2)
    names = list(plan.cell_vars())
    rng = np.random.default_rng(seed)
    path = tmp_path / "w.zarr"
    points = [(int(rng.integers(N_CHUNKS)), names[int(rng.integers(len(names)))]) for _ in range(2)]
    for c, name in points:  # two kills in a row on the same store, then one rerun
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), "write", f"{c}:{name}"],
                              capture_output=True, env=ENV, timeout=120)
        done = len(os.listdir(path / ".toymodel" / "done"))
        assert proc.returncode == -signal.SIGKILL or done == N_CHUNKS, proc.stderr.decode()[-2000:]
    assert_same_scan(ref, rerun(path, capsys))


def test_sigint_exits_130_and_says_how_to_resume(tmp_path, ref, capsys):
    path = tmp_path / "i.zarr"
    proc = subprocess.Popen(_cli(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    done = path / ".toymodel" / "done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if done.exists() and len(os.listdir(done)) >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    if proc.returncode == 0:  # finished before the signal: nothing to resume
        pytest.skip("the scan finished before SIGINT arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command to resume" in err, err
    assert_same_scan(ref, rerun(path, capsys))


def test_deleted_chunk_is_recomputed(tmp_path, ref, capsys):
    path = tmp_path / "d.zarr"
    assert cli_main(["scan", *ARGS, "--out", str(path)]) == 0
    (path / "final_loss" / "c" / "11" / "0" / "0").unlink()
    with pytest.raises(ValueError, match="chunk 11"):  # never NaN cells from a 'complete' store
        scan_mod.open_scan(path)
    assert cli_main(["scan", "--verify", str(path)]) == 2
    assert "chunk 11" in capsys.readouterr().err
    assert_same_scan(ref, rerun(path, capsys))
    assert cli_main(["scan", "--verify", str(path)]) == 0


def test_truncated_chunk_is_recomputed_and_plots(tmp_path, ref, capsys):
    path = tmp_path / "t.zarr"
    assert cli_main(["scan", *ARGS, "--out", str(path)]) == 0
    f = path / "tail_loss" / "c" / "5" / "0" / "0"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert cli_main(["plot-scan", str(path), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "chunk 5" in err and "Traceback" not in err and "Zstd" not in err
    assert_same_scan(ref, rerun(path, capsys))
    assert cli_main(["plot-scan", str(path), "--out", str(tmp_path / "p.png")]) == 0


def test_second_concurrent_writer_is_refused_then_a_killed_writer_is_taken_over(tmp_path, ref, capsys):
    path = tmp_path / "c.zarr"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "slow", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    done = path / ".toymodel" / "done"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if done.exists() and len(os.listdir(done)) >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert cli_main(["scan", *ARGS, "--out", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"being written by process {proc.pid}" in err and len(err.strip().splitlines()) == 1
        assert int((path / ".toymodel" / "lock").read_text()) == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert_same_scan(ref, rerun(path, capsys))  # the dead writer's lock is taken over
