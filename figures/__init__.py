"""The paper's theory figures, one script per figure (``figNN_<name>.py``, each with ``main(out_dir, quick=False)``).

Run them all with ``toymodel figures [--quick] [--out DIR]`` (or ``make figures``); each writes a
PNG, a PDF and the data behind it (``.npz`` with its parameters) so a figure can be redrawn
without recomputation. Shared helpers live in `figures._common`.
"""
import re as _re
from pathlib import Path as _Path

#: figure module names in order, discovered from the files next to this one.
FIGURES = tuple(sorted(p.stem for p in _Path(__file__).parent.glob("fig[0-9][0-9]_*.py")
                       if _re.fullmatch(r"fig\d\d_[a-z0-9_]+", p.stem)))

__all__ = ["FIGURES"]
