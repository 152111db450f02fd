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

import posixpath
import urllib.parse

from oslo_vmware import service


class ParsedOnceSudsClient(service.CompatibilitySudsClient):
    """oslo.vmware's suds client, asking suds to cache the parsed WSDL (see module doc)."""

    def __init__(self, url, *args, **kwargs) -> None:
        if not _is_pbm(url):
            kwargs.setdefault("cachingpolicy", 1)
        super().__init__(url, *args, **kwargs)


def _is_pbm(url: str) -> bool:
    """A storage-policy (PBM) WSDL, e.g. .../pbmService.wsdl (see module doc)."""
    return posixpath.basename(urllib.parse.urlparse(str(url)).path).lower().startswith("pbm")


def install() -> None:
    """Make every oslo.vmware session of this process build its client with the cache."""
    if not issubclass(service.CompatibilitySudsClient, ParsedOnceSudsClient):
        service.CompatibilitySudsClient = ParsedOnceSudsClient
