"""Progress display: tqdm when installed, else a plain line on stderr; silent when disabled."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class _Plain:
    def __init__(self, total, desc):
        self.total, self.desc, self.n, self._last = total, desc, 0, 0.0

    def update(self, k=1):
        self.n += k
        now = time.monotonic()
        if now - self._last > 1.0 or self.n >= self.total:
            self._last = now
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total}")
            if self.n >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class _Null:
    n = 0

    def update(self, k=1):
        self.n += k


@contextmanager
def progress(total: int, desc: str = "", disable: bool = False):
    """Yield an object with ``update(k)``; shows progress on stderr unless ``disable``."""
    if disable:
        yield _Null()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _Plain(total, desc)
        return
    with tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
