"""Which concurrency model runs oslo.vmware's retry and task-polling loops.

oslo.vmware retries every ``invoke_api`` and polls every task and lease through oslo.service's
looping calls. oslo.service picks a backend once, at its first import, and defaults to
eventlet even when nothing is monkey-patched. Then every native thread that calls vCenter
gets an eventlet hub of its own: the call runs in a greenthread of that thread, and the hub
(with its epoll file descriptor) is never freed when the thread ends. Measured here: 100
short-lived threads making 5 calls each left 109 more open file descriptors behind, for the
life of the process (``tests/functional/test_stress.py`` checks it). A compute service that
starts threads for its builds runs out of descriptors, slowly.

So: when eventlet has not monkey-patched ``thread``, oslo.service's threading backend
(native threads, released when the loop ends); when it has (nova-compute in eventlet mode),
the eventlet backend, as before. This is only a default: a process that chose a backend
itself (nova does, with ``oslo_service.backend.init_backend``) keeps its choice.
"""

from __future__ import annotations

import sys

from oslo_service import backend


def eventlet_patched() -> bool:
    """True when eventlet has monkey-patched ``thread`` (greenthreads are the threads).

    Never imports eventlet: nova-compute in native-thread mode refuses a late import.
    """
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


def _default_backend() -> backend.BackendType:
    if eventlet_patched():
        return backend.BackendType.EVENTLET
    return backend.BackendType.THREADING


def install_default() -> None:
    """Make oslo.service choose its backend by the rule above, unless one is chosen already.

    Must run before ``oslo_service.loopingcall`` is first imported (oslo.vmware imports it at
    module level), which is why ``vsan_flows.vsphere`` calls it on import.
    """
    if backend.get_backend_type() is None:
        backend.register_backend_default_hook(_default_backend)


def active_backend() -> str | None:
    """The backend oslo.service uses in this process (``eventlet``/``threading``), if chosen."""
    chosen = backend.get_backend_type()
    return chosen.value if chosen is not None else None
