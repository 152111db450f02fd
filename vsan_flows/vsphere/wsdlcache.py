"""Parse vCenter's WSDL once per process, not once per login.

oslo.vmware builds a new suds client for every session (every login, every re-login of a
session vCenter dropped, every PBM session) and hands suds a memory cache, but with suds'
default ``cachingpolicy=0`` that cache keeps only the XML *documents*: each client parses
the vim25 schema again, about 2-3 s of CPU per login on our machines, under the GIL, for
the same file. ``cachingpolicy=1`` caches the parsed WSDL definitions instead (in the same
oslo.vmware memory cache, expiring with it), so a second client reuses them.

Why this is safe for the vim WSDL: suds re-points the cached definitions' options at the
newest client's options; the bindings read only per-process constants from them (prefixes,
xstq, wsse) and the SOAP headers oslo.vmware sets before each call: for vim only an operation
id for vCenter's logs (which at worst names another session's call; threads of one session
already race for it). Each client keeps its own transport, cookies and factory. PBM clients
are left alone: oslo.vmware puts the vCenter session cookie in their SOAP headers, which must
never be read by another session's call. One place, so nothing else has to know: oslo.vmware
looks the client class up in its module at every session.
"""

from __future__ import annotations

import contextlib
import gc
import posixpath
import threading
import urllib.parse
from collections.abc import Iterator

from oslo_vmware import service

_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a client is built (counted across threads).

    Parsing the vim schema creates ~830,000 objects, nearly all of them for good; the growing
    heap triggers full collections that walk all of them again and again. Measured on the
    2-core machine (a fresh process logging in, 4 runs each): 2.1-2.5 s of CPU with the
    collector on, 1.8-1.9 s with it paused. Nothing is garbage here that could not wait the
    two seconds; the collector is back on (if it was on) when the last builder is done.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


class ParsedOnceSudsClient(service.CompatibilitySudsClient):
    """oslo.vmware's suds client, asking suds to cache the parsed WSDL (see module doc)."""

    def __init__(self, url, *args, **kwargs) -> None:
        if not _is_pbm(url):
            kwargs.setdefault("cachingpolicy", 1)
        with _collector_paused():
            super().__init__(url, *args, **kwargs)


def _is_pbm(url: str) -> bool:
    """A storage-policy (PBM) WSDL, e.g. .../pbmService.wsdl (see module doc)."""
    return posixpath.basename(urllib.parse.urlparse(str(url)).path).lower().startswith("pbm")


def install() -> None:
    """Make every oslo.vmware session of this process build its client with the cache."""
    if not issubclass(service.CompatibilitySudsClient, ParsedOnceSudsClient):
        service.CompatibilitySudsClient = ParsedOnceSudsClient
