"""Run a flow by factory name with its store, on a persistence backend, with live handles.

Why this shape: a flow that must survive a restart is rebuilt from its factory name and JSON
arguments (saved in the flow detail by TaskFlow's load_from_factory), reads its facts from the
store, and gets live objects (vSphere session, image service, policy) injected as transient
values, which TaskFlow keeps in memory only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import Any

import taskflow.engines
from oslo_vmware import exceptions as vexc
from taskflow import exceptions as tf_exc
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

from vsan_flows import exceptions

LOG = logging.getLogger(__name__)


def memory_backend():
    backend = tf_backends.fetch({"connection": "memory://"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def new_book(backend, name: str, meta: Mapping[str, Any]) -> models.LogBook:
    book = models.LogBook(name)
    book.meta = {"host": socket.gethostname(), **meta}
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return book


def run(factory: str, factory_kwargs: Mapping[str, Any], store: Mapping[str, Any],
        transients: Mapping[str, Any], *, backend=None, book_name: str | None = None,
        book_meta: Mapping[str, Any] | None = None, engine: str = "serial",
        listeners: tuple = ()) -> dict:
    """Run the flow to the end; returns its results, or raises one of our errors."""
    backend = backend or memory_backend()
    book = new_book(backend, book_name or factory, book_meta or {})
    eng = taskflow.engines.load_from_factory(
        factory, factory_kwargs=dict(factory_kwargs), store=dict(store), book=book,
        backend=backend, engine=engine)
    eng.storage.inject(dict(transients), transient=True)
    return _run(eng, listeners)


def _run(eng, listeners: tuple = ()) -> dict:
    with contextlib.ExitStack() as stack:
        for make in listeners:
            stack.enter_context(make(eng))
        try:
            eng.run()
        except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
            raise translate(exc) from None
    return dict(eng.storage.fetch_all())


def translate(exc: BaseException) -> Exception:
    """Our error for whatever a flow raised; a WrappedFailure yields its first cause."""
    if isinstance(exc, tf_exc.WrappedFailure):
        for failure in exc:
            if failure.exception is not None:
                return translate(failure.exception)
        return exceptions.FlowError("run", f"failed: {exc}")
    if isinstance(exc, exceptions.VsanFlowsError):
        return exc
    if isinstance(exc, vexc.VimFaultException):
        faults = ", ".join(exc.fault_list or []) or "unknown fault"
        return exceptions.VSphereError(f"vCenter reported {faults}: {exc.msg}")
    if isinstance(exc, vexc.VimConnectionException):
        return exceptions.VSphereError(f"lost the connection to vCenter: {exc.msg}")
    if isinstance(exc, vexc.VimException):
        return exceptions.VSphereError(f"vCenter call failed: {exc.msg}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
