"""Keep the vim WSDL's objects out of the garbage collector's way, once per process.

suds turns the vim WSDL into about 830,000 Python objects (its schema tree), which then live as
long as the process. Every full collection walks all of them: 0.55 s with the GIL held on the
2-core benchmark machine, during which no flow of the process runs. Resuming 100 flows 32 at a
time under the ``vcenter`` latency profile met 10-17 full collections (2-3 s of such pauses,
``benchmarks/flow_overhead.py --sections resume``), and single flows now and then took 0.5 s
longer for one of them.

``gc.freeze()`` moves every object alive at that moment into a permanent generation that
collections skip; nothing is freed or changed, and objects created later are collected as
before. A collection first clears what is already garbage, so nothing that is garbage now is
kept for ever. It is done once, after the first login of the process (the WSDL is parsed by
then and shared by later sessions, see wsdlcache), and only when nobody froze before us.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

LOG = logging.getLogger(__name__)

_done = False
_lock = threading.Lock()


def freeze_long_lived() -> bool:
    """Freeze what is alive now (the parsed WSDL among it); True the one time it does."""
    global _done
    with _lock:
        if _done or gc.get_freeze_count() or not gc.isenabled():
            _done = True
            return False
        _done = True
        t = time.monotonic()
        gc.collect()
        gc.freeze()
        LOG.debug("froze %d long-lived objects out of the collector's walks in %.2f s",
                  gc.get_freeze_count(), time.monotonic() - t)
        return True
