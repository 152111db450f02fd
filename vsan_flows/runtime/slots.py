"""A bound on how many flows one process runs at once.

Why: a flow spends most of its time waiting on vCenter (tasks, lease initialisation, NFC), so
independent flows should overlap; but each one holds a vCenter session slot, a database
connection and a thread, so an unbounded burst (a nova host asked for fifty instances) must
queue instead of overwhelming vCenter and the database. A waiting flow has saved nothing yet:
a crash while it waits leaves nothing to resume.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class FlowSlots:
    """At most ``limit`` holders at once; the others wait in :meth:`hold`."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a flow limit must be at least 1, not {limit}")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._sem:
            yield
