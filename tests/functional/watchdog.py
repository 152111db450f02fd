"""Bounded waits for stress tests: a hang becomes a failure that shows every thread's stack.

Two layers, because a hang can take the GIL with it:

* :func:`join_all` waits for worker threads with a deadline and raises :class:`Hang` with the
  stacks of every thread (and, under eventlet, every greenthread) when one is still running.
* :func:`backstop` arms faulthandler's C watchdog: if even the waiting thread cannot run (a
  thread blocked while holding the GIL, as in CPython gh-106883), faulthandler writes every
  thread's stack to stderr and exits the process, so the parent test reports it instead of
  waiting forever. Stress tests therefore run in a child process.

Stacks come from faulthandler, never ``sys._current_frames()``: on CPython <= 3.11 that call
can itself deadlock (see docs/concurrency.md).
"""

from __future__ import annotations

import faulthandler
import gc
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable


class Hang(AssertionError):
    """Threads did not finish in time; the message carries every stack."""


def _greenthread_stacks() -> str:
    """Stacks of suspended greenlets (under eventlet every Thread is one), if greenlet is used."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return ""
    out = []
    # Objects frozen out of the collector (vsan_flows.vsphere.heap) are not in get_objects():
    # thaw them for this look, then freeze them again.
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        objects = gc.get_objects()
    finally:
        if frozen:
            gc.freeze()
    for obj in objects:
        if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
            out.append(f"Greenlet {obj!r}:\n" + "".join(traceback.format_stack(obj.gr_frame)))
    return "\n".join(out)


def stacks() -> str:
    """Every native thread's Python stack (faulthandler's format), then every greenlet's."""
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        native = f.read()
    green = _greenthread_stacks()
    return native + (f"\n--- greenlets ---\n{green}" if green else "")


def join_all(threads: Iterable[threading.Thread], seconds: float, what: str) -> None:
    """Join ``threads`` within ``seconds`` in all; :class:`Hang` with every stack otherwise."""
    threads = list(threads)
    end = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        raise Hang(f"{what}: {len(alive)} of {len(threads)} threads still running after "
                   f"{seconds:g} s ({', '.join(alive[:8])}); every stack follows\n{stacks()}")


def backstop(seconds: float) -> None:
    """After ``seconds``, dump every thread's stack to stderr and exit(1), GIL or not."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
