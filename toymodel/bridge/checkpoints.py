r"""Checkpoints of a network run: save it, resume it bit for bit, start a new run from its weights.

A checkpoint is one file ``DIR/epoch_<e>.pt`` (``torch.save``, written to a temporary sibling and
renamed, so a file with that name is always complete) holding everything the rest of the run
depends on:

* ``model`` and ``optimizer``: the state dicts (BN statistics and momentum buffers included);
* ``rng``: the data-order generator of the run (and its augmentation generator, when it has one),
  torch's global generator (and CUDA's), NumPy's and Python's global ones;
* ``metrics``: the metric arrays of the epochs done, the random level, the initial SI vector
  (``cosine_to_init``), the reason of an invalid run and the training time so far;
* ``spec`` and ``setup``: the `RunSpec` fields and the network/data names, checked on resume.

Resuming (`toymodel.bridge.training.train` with ``resume=True``) builds the network and the
optimiser exactly as a fresh run does, then loads the states: so $\rho$ and the learning rate are
the saved ones, not re-measured from the trained weights (which differ from $\rho$ by rounding),
and ``e`` epochs + the rest equal the straight run bit for bit on the same machine and threads
(tested in float64). A resumed run may be longer than the first (``epochs`` and ``tail`` may
change); every other field must match. An epoch evaluated because it was the last of the first
part keeps its test metrics (a straight run with ``eval_every > 1`` has NaN there).

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
only, so a checkpoint cannot run code. `load_weights` (``init_from=``) also reads a bare
``state_dict`` and the official code's ``{"state_dict": ...}`` checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import random
import re
import uuid

import numpy as np
import torch

from .._validate import positive_int

__all__ = ["Checkpoints", "RunState", "load", "load_weights", "open_run"]

FORMAT = 1
_NAME = re.compile(r"epoch_(\d+)\.pt$")


@dataclasses.dataclass
class RunState:
    """What a run carries from epoch to epoch besides the model and the optimiser."""

    ep: dict
    st: dict
    theta0: torch.Tensor
    random_loss: float
    init_loss: float
    gen: torch.Generator
    steps_per_epoch: int
    epoch: int = 0
    invalid: str = ""
    seconds: float = 0.0
    #: the augmentation generator (`toymodel.bridge.data.Augment.generator`), or ``None``
    aug_gen: torch.Generator | None = None


class Checkpoints:
    """The checkpoints of one run in ``folder``, one every ``every`` epochs and one at the last."""

    def __init__(self, folder, every=None):
        self.folder = os.fspath(folder)
        if os.path.lexists(self.folder) and not os.path.isdir(self.folder):
            raise ValueError(f"checkpoint_dir {self.folder!r} exists and is not a folder")
        self.every = every

    def path(self, epoch: int) -> str:
        return os.path.join(self.folder, f"epoch_{int(epoch):05d}.pt")

    def found(self) -> list:
        """``(epoch, path)`` of every checkpoint in the folder, by epoch."""
        paths = glob.glob(os.path.join(glob.escape(self.folder), "epoch_*.pt"))
        return sorted((int(m.group(1)), p) for p in paths if (m := _NAME.search(p)))

    def latest(self):
        """The path of the last checkpoint, or ``None``."""
        found = self.found()
        return found[-1][1] if found else None

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch == epochs or (self.every is not None and epoch % self.every == 0)

    def save(self, *, spec, setup, model, opt, state: RunState) -> str:
        os.makedirs(self.folder, exist_ok=True)
        n_steps = -(-state.epoch * state.steps_per_epoch // spec.record_every)  # steps kept so far
        blob = {"format": FORMAT, "epoch": state.epoch, "spec": dataclasses.asdict(spec),
                "setup": dict(setup or {}), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "optimizer_class": type(opt).__name__,
                "rng": capture_rng(state.gen, state.aug_gen), "metrics": _metrics(state, n_steps)}
        path = self.path(state.epoch)
        tmp = os.path.join(self.folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return path


def _metrics(state: RunState, n_steps: int) -> dict:
    e = state.epoch
    return {"epoch": {k: torch.from_numpy(v[:e].copy()) for k, v in state.ep.items()},
            "step": {k: torch.from_numpy(v[:n_steps].copy()) for k, v in state.st.items()},
            "theta0": state.theta0.detach().cpu().clone(), "random_loss": float(state.random_loss),
            "init_loss": float(state.init_loss), "invalid": state.invalid,
            "seconds": float(state.seconds)}


def open_run(folder, every, resume):
    """``(Checkpoints or None, the checkpoint to resume or None)`` of `train`'s options, checked:
    ``every`` and ``resume`` need a ``folder``; a folder holding checkpoints needs ``resume``."""
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if folder is None:
        given = [f"{k}={v!r}" for k, v in (("checkpoint_every", every), ("resume", resume))
                 if v not in (None, False)]
        if given:
            raise ValueError(f"{' and '.join(given)} need(s) a checkpoint_dir (--checkpoint DIR)")
        return None, None
    saver = Checkpoints(folder, None if every is None
                        else positive_int("checkpoint_every", every, 1))
    last = saver.latest()
    if last is not None and not resume:
        raise ValueError(f"checkpoint_dir {saver.folder!r} already holds checkpoints (last: "
                         f"{os.path.basename(last)}); pass resume=True (--resume) to continue "
                         "that run, or choose another folder")
    return saver, (load(last) if last is not None else None)


def capture_rng(gen: torch.Generator, aug_gen: torch.Generator | None = None) -> dict:
    """The states of the run's data-order generator (and augmentation generator, if any) and of
    the global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"data_order": gen.get_state(), "torch": torch.get_rng_state(),
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                     float(cached)],
           "python": dict(zip(("version", "state", "gauss"), random.getstate()))}
    if aug_gen is not None:
        out["augment"] = aug_gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(rng: dict, gen: torch.Generator, aug_gen: torch.Generator | None = None) -> None:
    """Put back what `capture_rng` saved (the global generators too: documented in `train`)."""
    gen.set_state(rng["data_order"])
    if aug_gen is not None:
        if "augment" not in rng:
            raise ValueError("the checkpoint holds no augmentation generator, but this run "
                             "augments its training set; resume with the same parameters")
        aug_gen.set_state(rng["augment"])
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load(path) -> dict:
    """Read a checkpoint written by `Checkpoints.save` (``ValueError`` naming the file if it is
    not one)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a foreign or torn file
        raise ValueError(f"cannot read the checkpoint {path!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a toymodel checkpoint (format {FORMAT})")
    return blob


def check_compatible(blob: dict, spec, setup: dict, path) -> None:
    """Refuse to resume a run whose saved fields (all but ``epochs`` and ``tail``) or network
    differ from this call's, naming what differs; and a checkpoint past the requested end."""
    now = dataclasses.asdict(spec)
    # a field added after the checkpoint was written holds its default there (the run had it)
    was = {**{f.name: f.default for f in dataclasses.fields(spec)
              if f.default is not dataclasses.MISSING}, **blob["spec"]}
    if isinstance(was.get("betas"), list):  # a tuple may come back as a list
        was["betas"] = tuple(was["betas"])
    diff = [k for k in sorted(set(now) | set(was)) if k not in ("epochs", "tail")
            and was.get(k) != now.get(k)]
    diff += [k for k in sorted(set(setup) | set(blob["setup"]))
             if k != "device" and blob["setup"].get(k) != setup.get(k)]
    if diff:
        saved = {**was, **blob["setup"]}
        this = {**now, **setup}
        raise ValueError(f"the checkpoint {os.fspath(path)!r} was made with "
                         + ", ".join(f"{k}={saved.get(k)!r}" for k in diff) + "; this call has "
                         + ", ".join(f"{k}={this.get(k)!r}" for k in diff)
                         + "; resume with the same parameters, or use another checkpoint_dir")
    if blob["epoch"] > spec.epochs:
        raise ValueError(f"the checkpoint {os.fspath(path)!r} is at epoch {blob['epoch']}, past "
                         f"epochs={spec.epochs}; ask for at least {blob['epoch']} epochs")


def restore(blob: dict, model, opt, state: RunState) -> RunState:
    """Load ``blob`` into the freshly built ``model`` and ``opt`` and into ``state`` (whose
    arrays, allocated for this call's epochs, receive the saved prefix)."""
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    m = blob["metrics"]
    for name, saved in (("ep", m["epoch"]), ("st", m["step"])):
        arrays = getattr(state, name)
        for k, v in saved.items():
            if k in arrays:
                arrays[k][:len(v)] = v.numpy()
    restore_rng(blob["rng"], state.gen, state.aug_gen)
    return dataclasses.replace(state, theta0=m["theta0"].to(state.theta0), epoch=blob["epoch"],
                               random_loss=m["random_loss"], init_loss=m["init_loss"],
                               invalid=m["invalid"], seconds=m["seconds"])


def load_weights(model, path) -> None:
    """Copy the weights (and BN statistics) saved in ``path`` into ``model``: a toymodel
    checkpoint, a bare ``state_dict``, or an official ``{"state_dict": ...}`` checkpoint.
    ``ValueError`` when they do not fit the model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"init_from {path!r} does not exist or is not a file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read init_from {path!r} ({type(err).__name__})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        blob = blob["model"]
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict):
        raise ValueError(f"init_from {path!r} holds no state dict")
    try:
        model.load_state_dict(blob)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # torch's message spans lines: one line, shortened
        raise ValueError(f"init_from {path!r} does not fit {type(model).__name__} (same model "
                         f"and width?): {detail[:300]}") from None
