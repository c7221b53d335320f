"""Pause Python's cyclic garbage collector while building large acyclic structures.

Flattening a datastore or diffing 100,000 rows allocates millions of lists, dicts and strings and no cycles;
the cyclic GC would rescan that whole live graph again and again (seconds at datastore scale). Pausing it
for the duration is safe: reference counting still frees everything, and any cycle made meanwhile is
collected after the GC is re-enabled.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic GC inside the block (re-enabled after, if it was enabled)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
