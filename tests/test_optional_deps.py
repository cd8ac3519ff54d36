"""The core install runs the toy commands; optional extras fail with an install hint, never a traceback."""
import os
import subprocess
import sys

_BLOCK = ("torch", "xarray", "zarr", "numba", "dask", "distributed", "cupy", "netCDF4")


def _run_without_extras(argv, env=None):
    # sys.modules[name] = None makes every `import name` raise ImportError, as on a core install
    code = ("import sys\n"
            f"for m in {_BLOCK!r}: sys.modules[m] = None\n"
            "from toymodel.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_demo_and_theory_run_on_the_core_install():
    for argv in (["demo"], ["theory", "--alphas", "1,2,4", "--elr", "0.2"]):
        r = _run_without_extras(argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def test_train_without_torch_says_how_to_install_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "toymodel", "train", "--elr", "0.1", "--epochs", "1",
                        "--out", str(tmp_path / "a.nc")], capture_output=True, text=True,
                       env={**os.environ, "TOYMODEL_DISABLE": "torch"}, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "toymodel[torch]" in r.stderr and "train" in r.stderr
    assert not (tmp_path / "a.nc").exists()
