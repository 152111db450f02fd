"""Telling "it is already gone" apart from real failures, whichever way oslo.vmware says it.

Reverts must be safe to run twice, so a missing VM, lease or file is success for them. oslo
reports that as a dedicated exception class for some faults and as a VimFaultException with
the fault name in ``fault_list`` for others (and for a task that failed on the server).
"""

from __future__ import annotations

from oslo_vmware import exceptions as vexc

from vsan_flows import exceptions

GONE_FAULTS = ("ManagedObjectNotFound", "FileNotFound")


def is_gone(exc: BaseException) -> bool:
    if isinstance(exc, vexc.ManagedObjectNotFoundException | vexc.FileNotFoundException):
        return True
    return any(f in GONE_FAULTS for f in (getattr(exc, "fault_list", None) or []))


def to_error(exc: BaseException) -> Exception | None:
    """Our error for an oslo.vmware exception, or None when ``exc`` is not one.

    Callers above this layer (the runtime translating a flow's failure) see our exception
    classes only; the Vim fault names survive in the message, which an operator can search.
    """
    if isinstance(exc, vexc.VimFaultException):
        faults = ", ".join(exc.fault_list or []) or "unknown fault"
        return exceptions.VSphereError(f"vCenter reported {faults}: {exc.msg}")
    if isinstance(exc, vexc.VimConnectionException):
        return exceptions.VSphereError(f"lost the connection to vCenter: {exc.msg}")
    if isinstance(exc, vexc.VimException):
        return exceptions.VSphereError(f"vCenter call failed: {exc.msg}")
    return None
