"""Telling "it is already gone" apart from real failures, whichever way oslo.vmware says it.

Reverts must be safe to run twice, so a missing VM, lease or file is success for them. oslo
reports that as a dedicated exception class for some faults and as a VimFaultException with
the fault name in ``fault_list`` for others (and for a task that failed on the server).
"""

from __future__ import annotations

from oslo_vmware import exceptions as vexc

GONE_FAULTS = ("ManagedObjectNotFound", "FileNotFound")


def is_gone(exc: BaseException) -> bool:
    if isinstance(exc, vexc.ManagedObjectNotFoundException | vexc.FileNotFoundException):
        return True
    return any(f in GONE_FAULTS for f in (getattr(exc, "fault_list", None) or []))
