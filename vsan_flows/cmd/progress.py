"""Show transfer progress on a terminal while a flow runs (a TaskFlow listener)."""

from __future__ import annotations

import contextlib
import sys
import time

from taskflow import task as tf_task


@contextlib.contextmanager
def terminal_progress(engine, stream=None):
    """Draw a one-line bar for every task that reports progress; silent when not a tty."""
    out = stream or sys.stderr
    if not getattr(out, "isatty", lambda: False)():
        yield
        return
    started: dict[str, float] = {}

    def on_progress(event_type, details):
        name = details.get("task_name", "?").rsplit(".", 1)[-1]
        frac = float(details.get("progress") or 0.0)
        started.setdefault(name, time.monotonic())
        bar = "#" * int(frac * 30)
        out.write(f"\r  {name:<22} [{bar:<30}] {frac * 100:5.1f}% "
                  f"{time.monotonic() - started[name]:5.1f}s")
        if frac >= 1.0:
            out.write("\n")
        out.flush()

    tasks = [a for a in engine.compilation.execution_graph.nodes
             if isinstance(a, tf_task.Task)] if engine.compilation else []
    for t in tasks:
        t.notifier.register(tf_task.EVENT_UPDATE_PROGRESS, on_progress)
    try:
        yield
    finally:
        for t in tasks:
            t.notifier.deregister(tf_task.EVENT_UPDATE_PROGRESS, on_progress)
