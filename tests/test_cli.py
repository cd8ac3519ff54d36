"""The command line: JSON keys named as the theory functions, bad input -> one line + exit 2."""
import json
import subprocess
import sys

import numpy as np
import pytest

from toymodel import cli, theory


def run(*args):
    return subprocess.run([sys.executable, "-m", "toymodel", *args], capture_output=True, text=True)


def test_theory_json_matches_theory_functions(capsys):
    assert cli.main(["theory", "--alphas", "1,2,4", "--elr", "0.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # exact: the same functions on the same inputs, and JSON writes floats by repr (round-trips)
    assert out["total_threshold"] == theory.total_threshold([1, 2, 4])
    assert out["equilibrium_loss"] == theory.equilibrium_loss(0.2, [1, 2, 4])
    assert out["predict_regime"] == "chaotic_equilibrium"
    for key in ("group_thresholds", "divergence_threshold", "random_loss", "equilibrium_shares",
                "equilibrium_grad_norm", "two_cycle_angle", "individual_constraint_thresholds"):
        assert key in out and hasattr(theory, key)


def test_simulate_writes_a_trajectory(tmp_path, capsys):
    out = tmp_path / "traj.npz"
    assert cli.main(["simulate", "--alphas", "1,2,4", "--elr", "0.1", "--steps", "3000",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "regime (observed)   convergence" in text
    with np.load(out) as f:
        assert f["loss"].shape == (3000,) and json.loads(str(f["params"]))["elr"] == 0.1


@pytest.mark.parametrize("args, word", [
    (["theory", "--alphas", "1,-2", "--elr", "0.1"], "alphas"),
    (["theory", "--alphas", "1,x", "--elr", "0.1"], "alphas"),
    (["theory", "--alphas", "1,2", "--elr", "nan"], "elr"),
    (["simulate", "--alphas", "1,2", "--elr", "0.1", "--steps", "0"], "steps"),
    (["simulate", "--alphas", "1,2", "--elr", "-1"], "elr"),
])
def test_bad_input_exits_2_with_one_line(args, word):
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and word in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_demo_prints_one_verdict_per_regime():
    r = run("demo", "--steps", "4000")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "observed" in ln]
    assert len(lines) == 3 and all("agrees" in ln for ln in lines)
