"""Reliability of the toy, the theory and their commands: each test pins one input that used to
misbehave (wrong label, traceback, silent lie) to the behaviour docs/reliability.md promises."""
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from toymodel import cli, dynamics, regimes, solvers, theory
from toymodel.dynamics import simulate
from toymodel.problems import SphereToy

A = [1.0, 2.0, 4.0]


def run(*args):
    return subprocess.run([sys.executable, "-m", "toymodel", *args], capture_output=True, text=True)


def one_line_error(r, word):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and word in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- the "unresolved" label ------------------------------------------------------------------------
def test_unresolved_label_contract():
    assert regimes.UNRESOLVED == "unresolved" and regimes.UNRESOLVED in regimes.LABELS
    # saved figures index into LABELS: the old codes keep their places
    assert regimes.LABELS[:4] == regimes.REGIMES + (regimes.INVALID,)
    assert regimes.MIN_TAIL_ROTATION == 1.0


def test_classify_summary_unresolved_when_the_tail_barely_turned():
    # tail of 2000 steps: 1e-5 rad/step turns 0.02 rad in all (unresolved), 1e-3 turns 2 rad (fine)
    loss = np.array([0.5, 0.5, 3.4, 1e-6, np.nan])
    labels, reasons = regimes.classify_summary(loss, 3.5, tail_angle=[1e-5, 1e-3, 1e-5, 1e-9, 1e-5],
                                               tail_steps=2000)
    assert list(labels) == ["unresolved", "chaotic_equilibrium", "unresolved", "convergence", "invalid"]
    assert "per step in the tail" in reasons[0] and "run longer or raise the ELR" in reasons[0]
    assert reasons[1] == reasons[3] == "" and reasons[4] == "non-finite tail loss"
    # without the angle the old labels stand, for every existing caller
    assert list(regimes.classify_summary(loss, 3.5)[0]) == [
        "chaotic_equilibrium", "chaotic_equilibrium", "divergence", "convergence", "invalid"]


def test_classify_summary_wants_angle_and_steps_together():
    with pytest.raises(ValueError, match="together"):
        regimes.classify_summary(0.5, 3.5, tail_angle=0.1)
    with pytest.raises(ValueError, match="tail_steps"):
        regimes.classify_summary(0.5, 3.5, tail_angle=0.1, tail_steps=0)


def test_negative_toy_loss_is_invalid_with_the_value():
    labels, reasons = regimes.classify_summary([-1.0, -1e-9, 0.5], 3.5)
    assert list(labels) == ["invalid", "convergence", "chaotic_equilibrium"]  # -1e-9: rounding of 0
    assert "negative tail loss -1" in reasons[0]

    class Run:
        loss = np.full(100, -0.5)
    assert regimes.classify(Run(), SphereToy(A)) == "invalid"
    assert "negative tail loss -0.5" in regimes.explain(Run(), SphereToy(A))["reason"]


def test_bad_random_level_is_invalid_not_a_nan_label():
    labels, reasons = regimes.classify_summary([0.5, 0.5], [0.0, -2.0])
    assert list(labels) == ["invalid", "invalid"] and "random level" in reasons[1]


def test_tiny_elr_run_is_unresolved_not_a_regime():
    # 200 steps at elr 1e-4: the loss has barely left its start; it was labelled a regime before
    p = SphereToy(A)
    info = regimes.explain(simulate(p, 1e-4, 200), p)
    assert info["regime"] == "unresolved" and "per step" in info["reason"]
    assert regimes.classify(simulate(p, 1e-4, 200), p) == "unresolved"


def test_trend_rule_on_a_loss_still_moving():
    class Run:
        loss = np.linspace(2.0, 1.0, 400)   # falling by half through the tail
    info = regimes.explain(Run(), SphereToy(A), tail=400)
    assert info["regime"] == "unresolved" and "still falling" in info["reason"]
    Run.loss = np.linspace(1.0, 1.5, 400)
    assert "still rising" in regimes.explain(Run(), SphereToy(A), tail=400)["reason"]
    # a stationary noisy plateau and a 2-cycle are settled
    Run.loss = 1.75 + 0.5 * np.random.default_rng(0).standard_normal(400)
    assert regimes.classify(Run(), SphereToy(A), tail=400) == "chaotic_equilibrium"
    Run.loss = np.tile([1.0, 2.0], 200)
    assert regimes.classify(Run(), SphereToy(A), tail=400) == "chaotic_equilibrium"


def test_settled_runs_stay_labelled():
    p = SphereToy(A)
    for elr, want in ((1.3 / 7, "chaotic_equilibrium"), (3.0, "divergence")):
        info = regimes.explain(simulate(p, elr, 4000), p)
        assert (info["regime"], info["reason"]) == (want, "")


def test_figures_have_a_colour_for_every_label():
    from toymodel.figures import _common as C
    assert set(regimes.LABELS) <= set(C.REGIME_COLORS) and set(regimes.LABELS) <= set(C.REGIME_TITLES)


# -- one group (T13) ----------------------------------------------------------------------------
def test_theory_and_classifier_share_the_divergence_convention():
    assert theory.DIV_FRAC == regimes.DIV_FRAC


@pytest.mark.parametrize("k, want", [(0.9, "convergence"), (1.3, "chaotic_equilibrium"),
                                     (3.0, "chaotic_equilibrium"), (9.5, "chaotic_equilibrium"),
                                     (10.5, "divergence"), (30.0, "divergence")])
def test_one_group_prediction_follows_the_two_cycle_T13(k, want):
    for alpha in (1.0, 4.0):
        elr = k / alpha
        for constraint in ("total", "individual"):
            assert theory.predict_regime(elr, [alpha], constraint) == want
        # the prediction is the classifier's label of the 2-cycle's closed-form loss (T11)
        label, _ = regimes.classify_summary(theory.two_cycle_loss(elr, alpha), alpha / 2)
        assert str(label) == want
    assert theory.equilibrium_divergence_elr([4.0]) == pytest.approx(10 / 4)


@pytest.mark.parametrize("k", [1.3, 3.0, 30.0])
def test_one_group_simulation_agrees_with_the_prediction(k):
    p = SphereToy([2.0])
    elr = k / 2.0
    tr = simulate(p, elr, 3000)
    info = regimes.explain(tr, p)
    assert info["regime"] == theory.predict_regime(elr, [2.0])
    assert info["loss_ratio"] == pytest.approx(1 - 1 / k, rel=1e-6)


@pytest.mark.parametrize("k", [1.5, 3.0, 30.0])
def test_one_group_two_cycle_never_turns_chaotic(k):
    lyap = solvers.largest_lyapunov(SphereToy([1.0]), k, steps=4000, tail=2000)
    assert lyap < 0 and lyap == pytest.approx(math.log(abs(1 - 2 / k**2)), rel=1e-3)


def test_demo_one_group_agrees(capsys):
    assert cli.main(["demo", "--alphas", "1", "--steps", "3000"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "observed" in ln]
    assert len(lines) == 3 and all("agrees" in ln for ln in lines), lines
    assert "observed divergence" in lines[2]


# -- overflow ----------------------------------------------------------------------------------
def test_theory_huge_elr_is_stable_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = theory.predictions(1e300, A)
        assert pred["equilibrium_grad_norm"] == 7.0
        assert pred["equilibrium_step_angle"] == pytest.approx(math.pi / 2)
        assert pred["equilibrium_angle"] == pytest.approx(math.pi / 4)
        assert theory.predictions(1e300, [1e10])["criticality"] == math.inf
    assert theory.equilibrium_grad_norm(1e300, A) == 7.0
    assert theory.equilibrium_step_angle(1e300, A) == pytest.approx(math.pi / 2)
    assert theory.two_cycle_multiplier(1e300, 1.0) == 1.0
    assert theory.sq_norm_after_step(1.0, 1e200, 1.0) == math.inf
    assert np.all(np.isfinite(theory.share_update([0.5, 0.5], 1e200, [1.0, 1.0])))
    # the stable forms are no less accurate in the ordinary range
    assert theory.equilibrium_step_angle(0.2, A) == pytest.approx(math.atan(math.sqrt(1.4**2 - 1)), rel=1e-14)
    assert theory.two_cycle_angle(3.0, 1.0) == pytest.approx(0.5 * math.acos(1 / 3), rel=1e-14)


def test_cli_theory_huge_elr_is_clean():
    r = run("theory", "--alphas", "1,2,4", "--elr", "1e300")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run("theory", "--alphas", "1e10", "--elr", "1e300", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["equilibrium_step_angle"] == pytest.approx(math.pi / 2)


# -- sizes ----------------------------------------------------------------------------------------
def test_simulate_refuses_huge_sizes_up_front():
    with pytest.raises(ValueError, match="would need about .* of memory"):
        simulate(SphereToy(A, dim=10**10), 0.1, 10)
    with pytest.raises(ValueError, match="record_every"):
        simulate(SphereToy(A), 0.1, 1e12)
    with pytest.raises(ValueError, match="lower the dimension"):
        dynamics.initial_state(SphereToy(A, dim=10**11))


def test_cli_simulate_huge_dim_exits_2():
    one_line_error(run("simulate", "--alphas", "1,2,4", "--elr", "0.1", "--dim", "10000000000"),
                   "would need about")


# -- --out ----------------------------------------------------------------------------------------
def test_simulate_out_is_checked_before_computing(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("simulate ran before --out was checked")
    monkeypatch.setattr(dynamics, "simulate", boom)
    base = ["simulate", "--alphas", "1,2,4", "--elr", "0.1", "--steps", "50"]
    txt = tmp_path / "traj.txt"
    assert cli.main(base + ["--out", str(txt)]) == 2
    assert "must end in .npz or .nc" in capsys.readouterr().err and not txt.exists()
    assert not (tmp_path / "traj.txt.npz").exists()
    existing = tmp_path / "old.npz"
    existing.write_bytes(b"keep")
    assert cli.main(base + ["--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep"
    assert cli.main(base + ["--out", str(tmp_path / "missing" / "t.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(tmp_path)]) == 2


def test_simulate_out_reports_the_real_path(tmp_path, capsys):
    base = ["simulate", "--alphas", "1,2,4", "--elr", "0.1", "--steps", "50"]
    existing = tmp_path / "t.npz"
    existing.write_bytes(b"old")
    assert cli.main(base + ["--out", str(existing), "--overwrite"]) == 0
    assert f"saved {existing}" in capsys.readouterr().out
    with np.load(existing) as f:
        assert f["loss"].shape == (50,)
    # the Python API says where NumPy really wrote
    tr = simulate(SphereToy(A), 0.1, 5)
    assert tr.save(tmp_path / "plain") == str(tmp_path / "plain") + ".npz"
    assert (tmp_path / "plain.npz").exists()


# -- figures, Ctrl-C, labels, defaults ----------------------------------------------------------------
def test_figures_gallery_file_is_refused(tmp_path, capsys):
    f = tmp_path / "gallery.png"
    f.write_bytes(b"")
    assert cli.main(["figures", "--quick", "--out", str(tmp_path / "out"), "--gallery", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--gallery" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert cli.main(["figures", "--quick", "--out", str(f / "sub")]) == 2
    assert "lies under the file" in capsys.readouterr().err


def test_ctrl_c_anywhere_is_one_line_and_130(capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupt)   # start-up: building the parser
    assert cli.main(["theory"]) == 130
    assert capsys.readouterr().err == "toymodel: interrupted\n"
    monkeypatch.undo()
    monkeypatch.setattr(cli, "_cmd_theory", interrupt)    # while a command runs
    assert cli.main(["theory", "--alphas", "1", "--elr", "1"]) == 130
    assert capsys.readouterr().err == "toymodel theory: interrupted\n"


def test_cli_theory_prints_labels_and_degrees(capsys):
    assert cli.main(["theory", "--alphas", "1,2,4", "--elr", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "equilibrium_step_angle" not in out and "predict_regime" not in out
    deg = np.degrees(theory.equilibrium_step_angle(0.2, A))
    line = next(ln for ln in out.splitlines() if ln.startswith("equilibrium angle per step"))
    assert "(deg)" in line and line.split()[-1] == f"{deg:.6g}"


def test_defaults_are_named_as_defaults(capsys):
    assert cli.main(["simulate", "--alphas", "1,2,4", "--elr", "0.1", "--record-every", "100",
                     "--tail", "500"]) == 2
    err = capsys.readouterr().err
    assert "--steps 20000 (the default)" in err and "--record-every 100)" in err
    assert cli.main(["demo", "--steps", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "steps" in err   # refused before anything is printed or run


def test_argparse_errors_are_one_line_too():
    one_line_error(run("simulate", "--alphas", "1", "--elr", "1", "--steps", "1e12"), "--steps")


def test_alphas_whose_sum_overflows_are_refused():
    with pytest.raises(ValueError, match="sum to a finite number"):
        theory.predictions(1.0, [1e308, 1e308])
    one_line_error(run("theory", "--alphas", "1e308,1e308", "--elr", "1"), "alphas")


def test_trend_rule_is_silent_on_huge_losses():
    class Run:
        loss = np.linspace(2e299, 1e299, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert regimes.classify(Run(), random_level=3e299, tail=400) == "unresolved"


def test_ctrl_c_while_the_command_imports_is_one_line_and_130():
    # a KeyboardInterrupt raised while `import toymodel` runs (before cli.main exists): the
    # command prints the one line cli.main prints; a plain library import re-raises it
    import subprocess
    import sys
    code = ("import sys\n"
            "class Stop:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'toymodel.theory': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            f"sys.argv[0] = {'{}'!r}\n"
            "import toymodel\n")
    cmd = subprocess.run([sys.executable, "-c", code.format("/usr/bin/toymodel")],
                         capture_output=True, text=True, timeout=120)
    assert cmd.returncode == 130 and cmd.stderr.strip() == "toymodel: interrupted", cmd.stderr
    lib = subprocess.run([sys.executable, "-c", code.format("script.py")], capture_output=True,
                         text=True, timeout=120)
    assert lib.returncode != 130 and "KeyboardInterrupt" in lib.stderr
