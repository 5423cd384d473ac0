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
