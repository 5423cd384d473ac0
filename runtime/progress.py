"""Progress lines on stderr for steps that take more than a moment."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print ``what ...`` before and ``done in N s`` after, on stderr."""
    print(f"  {what} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"  {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise
    (logs, CI). ``update(n, note)`` after each unit of work."""

    def __init__(self, what: str, total: int, done: int = 0):
        self.what, self.total, self.done = what, max(1, total), done
        self.start, self.first = time.perf_counter(), done
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        elapsed = time.perf_counter() - self.start
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(24 * done / self.total)
        line = f"  {self.what} {done}/{self.total} [{'#' * filled}{'.' * (24 - filled)}] {note} eta {eta:.0f} s"
        if self.tty:
            print("\r" + line, end="\n" if done >= self.total else "", file=sys.stderr, flush=True)
        elif done * 10 // self.total != self._last_decile or done >= self.total:
            self._last_decile = done * 10 // self.total
            print(line, file=sys.stderr, flush=True)
