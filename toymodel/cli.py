"""The ``toymodel`` command line.

Subcommands defined here: ``theory``, ``simulate``, ``demo``. Other modules register theirs
through a ``register(subparsers)`` function (listed in ``_COMMAND_MODULES``); each subcommand sets
``func(args) -> int``. Bad input (``ValueError``, ``ImportError``, ``OSError``, a
``MemoryError`` that slipped past the up-front size checks, or an argparse error) prints one line
on stderr and exits 2; Ctrl-C at any point after the package is imported prints
``toymodel <command>: interrupted`` and exits 130. Output files are checked before any work
(`check_out_path`).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import numpy as np

_COMMAND_MODULES = ("toymodel._cli_scan", "toymodel._cli_figures", "toymodel._cli_bridge",
                    "toymodel._cli_finetune")


def _alphas(text: str) -> np.ndarray:
    from ._validate import alphas_array
    return alphas_array(text)


#: ``toymodel theory`` rows: key of `theory.predictions`, readable label, and whether the value
#: is an angle (radians in the JSON, degrees on screen, as ``demo`` prints them).
_THEORY_ROWS = (
    ("elr", "total ELR", False),
    ("alphas", "curvatures alpha_i", False),
    ("criticality", "c = elr * sum(alpha)  (T12)", False),
    ("group_thresholds", "group thresholds 1/alpha_i  (ELR, T11)", False),
    ("total_threshold", "total threshold 1/sum(alpha)  (ELR, T10)", False),
    ("divergence_threshold", "all groups above threshold 1/min(alpha)  (ELR, T10)", False),
    ("equilibrium_divergence_elr", "loss reaches 0.9 x random at  (ELR, T12/T13)", False),
    ("random_loss", "random level sum(alpha)/2", False),
    ("equilibrium_loss", "equilibrium loss  (T12)", False),
    ("equilibrium_shares", "equilibrium shares alpha_i/sum(alpha)", False),
    ("equilibrium_individual_elr", "equilibrium individual ELRs", False),
    ("equilibrium_grad_norm", "equilibrium effective gradient norm", False),
    ("equilibrium_angle", "equilibrium group angle phi  (deg)", True),
    ("equilibrium_step_angle", "equilibrium angle per step  (deg)", True),
    ("two_cycle_angle", "2-cycle angle phi* of each group alone  (deg, T11)", True),
    ("individual_constraint_thresholds", "individual-constraint thresholds 1/(n alpha_i)", False),
    ("predict_regime", "predicted regime, total constraint", False),
    ("predict_regime_individual", "predicted regime, individual constraint", False),
)


def _fmt(value, angle=False):
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, angle) for v in value) + "]"
    if isinstance(value, float):
        return f"{np.degrees(value):.6g}" if angle else f"{value:.6g}"
    return str(value)


def _cmd_theory(args) -> int:
    from .theory import predictions
    pred = predictions(args.elr, _alphas(args.alphas))
    if args.json:  # keys are the theory functions' names, angles in radians
        print(json.dumps(pred, indent=2))
        return 0
    rows = {key: (label, angle) for key, label, angle in _THEORY_ROWS}
    width = max(len(label) for label, _ in rows.values())
    for key, value in pred.items():
        label, angle = rows.get(key, (key, False))
        print(f"{label:{width}s}  {_fmt(value, angle)}")
    return 0


#: defaults of options whose value enters a message: they are parsed as None, so a message can
#: say "the default" for values the user never typed.
_DEFAULTS = {"steps": 20000, "record_every": 1}


def _fill_defaults(args) -> None:
    args.given = {k for k in _DEFAULTS if getattr(args, k, None) is not None}
    for key, value in _DEFAULTS.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)


def _opt(args, name) -> str:
    """``--steps 100`` as the user typed it, or ``--steps 20000 (the default)``."""
    text = f"--{name.replace('_', '-')} {getattr(args, name)}"
    return text if name in args.given else text + " (the default)"


def check_out_path(path, overwrite=False, suffixes=(".npz", ".nc")):
    """Validate ``--out`` before any work (`toymodel._validate.output_path`, shared with the scan
    and train commands): a known suffix, an existing writable folder, no silent overwrite.
    Returns the absolute path; raises ``ValueError`` naming the option and the value."""
    from ._validate import output_path
    return output_path("--out", path, suffixes, overwrite=overwrite, overwrite_hint="--overwrite")


def _cmd_simulate(args) -> int:
    from . import regimes, theory
    from ._validate import positive_int
    from .dynamics import simulate
    from .problems import SphereToy
    _fill_defaults(args)
    problem = SphereToy(_alphas(args.alphas), dim=args.dim)
    steps = positive_int("steps", args.steps)
    every = positive_int("record_every", args.record_every)
    records = (steps + every - 1) // every
    if args.tail is not None:
        tail = positive_int("tail", args.tail)
        if tail > records:
            raise ValueError(f"--tail {tail} is more than the {records} records of this run "
                             f"({_opt(args, 'steps')}, {_opt(args, 'record_every')}); lower "
                             "--tail or raise --steps")
    else:
        tail = max(1, records // 10)
    out = check_out_path(args.out, args.overwrite) if args.out else None
    traj = simulate(problem, args.elr, steps, seed=args.seed, constraint=args.constraint,
                    radius=args.radius, record_every=every,
                    progress_bar=None if args.progress is None else args.progress)
    info = regimes.explain(traj, problem, tail=tail)
    pred = theory.predict_regime(args.elr, problem.alphas, args.constraint)
    observed = info["regime"] + (f"   ({info['reason']})" if info["reason"] else "")
    print(f"regime (observed)   {observed}")
    print(f"regime (predicted)  {pred}")
    print(f"tail loss           {info['tail_loss']:.6g}   (random level {info['random_level']:.6g})")
    if args.constraint == "total":
        print(f"equilibrium loss    {theory.equilibrium_loss(args.elr, problem.alphas):.6g}   (theory, T12)")
    print(f"tail eff. gradient  {info['tail_grad_norm']:.6g}")
    print(f"tail angle/step     {np.degrees(info['tail_angle']):.4g} deg")
    print(f"min share (tail)    {info['min_share']:.4g}")
    if out:
        print(f"saved {traj.save(out)}")
    return 0


def demo_elrs(alphas):
    """The demo's three ELRs: c = 0.9 and 1.3 (T12), and one well inside divergence: 3/min(alpha)
    (T10), or for one group, whose 2-cycle reaches 0.9 of random only at 10/alpha, 30/alpha (T13)."""
    from . import theory
    top = theory.equilibrium_divergence_elr(alphas) if alphas.size == 1 else theory.divergence_threshold(alphas)
    return [0.9 / alphas.sum(), 1.3 / alphas.sum(), 3.0 * top]


def _cmd_demo(args) -> int:
    from . import regimes, theory
    from ._validate import positive_int
    from .dynamics import simulate
    from .problems import SphereToy
    _fill_defaults(args)
    alphas = _alphas(args.alphas)
    steps = positive_int("steps", args.steps)
    seed = positive_int("seed", args.seed, minimum=0)
    problem = SphereToy(alphas)
    print(f"Canonical toy F = sum_i alpha_i sin^2(phi_i), alphas = {alphas.tolist()}  (docs/theory.md §4)")
    print(f"  total threshold 1/sum(alpha) = {theory.total_threshold(alphas):.4g}   "
          f"divergence threshold 1/min(alpha) = {theory.divergence_threshold(alphas):.4g}   "
          f"random level sum(alpha)/2 = {theory.random_loss(alphas):.4g}")
    if alphas.size == 1:
        print(f"  one group (T13): a stable 2-cycle above 1/alpha, loss 0.9 x random from "
              f"10/alpha = {theory.equilibrium_divergence_elr(alphas):.4g}")
    print(f"\nSimulating {steps} steps of projected GD at fixed ELR (seed {seed}):")
    tail = max(1, steps // 10)
    for elr in demo_elrs(alphas):
        traj = simulate(problem, elr, steps, seed=seed)
        info = regimes.explain(traj, problem, tail=tail)
        got = info["regime"]
        want = theory.predict_regime(elr, alphas)
        if got == regimes.UNRESOLVED:
            verdict = f"unresolved ({info['reason']})"
        else:
            verdict = "agrees" if got == want else "DISAGREES"
        print(f"  elr={elr:<8.4g} observed {got:<20s} predicted {want:<20s} {verdict}: "
              f"tail loss {info['tail_loss']:.4g} vs theory {theory.equilibrium_loss(elr, alphas):.4g}, "
              f"angle/step {np.degrees(info['tail_angle']):.3g} deg")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): every CLI error is one line and exit 2.
    Subcommand parsers inherit it (``add_subparsers`` uses the parent's class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="toymodel", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"toymodel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("theory", help="closed-form predictions for a toy (T3-T12)")
    p.add_argument("--alphas", required=True, help="group curvatures, e.g. 1,2,4")
    p.add_argument("--elr", type=float, required=True, help="total effective learning rate")
    p.add_argument("--json", action="store_true",
                   help="print JSON keyed by theory function names (angles in radians)")
    p.set_defaults(func=_cmd_theory)

    p = sub.add_parser("simulate", help="simulate projected GD with fixed ELR on the toy")
    p.add_argument("--alphas", required=True)
    p.add_argument("--elr", type=float, required=True)
    p.add_argument("--steps", type=int, default=None, help="number of steps (default: 20000)")
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--constraint", choices=("total", "individual"), default="total")
    p.add_argument("--radius", type=float, default=1.0)
    p.add_argument("--record-every", type=int, default=None,
                   help="keep every k-th step's metrics (default: 1)")
    p.add_argument("--tail", type=int, default=None,
                   help="tail window in records (default: the last 10%%)")
    p.add_argument("--out", default=None,
                   help="save the trajectory; the suffix picks the format: .npz or .nc")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="theory and one simulation per regime, with verdicts")
    p.add_argument("--alphas", default="1,2,4")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # the module is not written yet / not shipped
                continue
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    # Ctrl-C anywhere (building the parser imports every command module, which takes a moment)
    # gives one line and the shell's status for SIGINT, never a traceback; a command that has
    # something to say on interruption (a scan's resume hint) prints it before re-raising.
    name = "toymodel"
    try:
        args = build_parser().parse_args(argv)
        name = f"toymodel {args.command}"
        try:
            return int(args.func(args) or 0)
        except (ValueError, ImportError, OSError, FloatingPointError) as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            return 2
        except MemoryError as err:
            print(f"{name}: error: out of memory{': ' + str(err) if str(err) else ''}; "
                  "ask for fewer steps, records or dimensions", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
