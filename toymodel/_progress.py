"""Progress display: tqdm when installed, else a plain line on stderr; silent when disabled.

A resumed scan starts its bar at the work already done (``initial``) and measures the rate, and
so the remaining time, on the new work only: the clock starts when the bar is made, after the
store was opened and checked.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class _Plain:
    def __init__(self, total, desc, initial=0):
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self._start = self._last = time.monotonic()

    def eta(self) -> float | None:
        """Seconds left at the rate measured on the new work (``None`` before any)."""
        new, elapsed = self.n - self.initial, time.monotonic() - self._start
        if new <= 0 or elapsed <= 0:
            return None
        return (self.total - self.n) * elapsed / new

    def update(self, k=1):
        self.n += k
        now = time.monotonic()
        if now - self._last > 1.0 or self.n >= self.total:
            self._last = now
            eta = self.eta()
            left = "" if eta is None else f", {eta:.0f} s left"
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total}{left}")
            if self.n >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class _Null:
    def __init__(self, initial=0):
        self.n = self.initial = initial

    def update(self, k=1):
        self.n += k


@contextmanager
def progress(total: int, desc: str = "", disable: bool = False, initial: int = 0):
    """Yield an object with ``update(k)``, starting at ``initial`` of ``total`` (a resumed run);
    shows progress on stderr unless ``disable``."""
    if disable:
        yield _Null(initial)
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _Plain(total, desc, initial)
        return
    # tqdm's rate (and ETA) divides (n - initial) by the time since the bar was made
    with tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
