"""HttpNfcLease life cycle by persisted id, for imports and exports alike.

A lease is created by ImportVApp or ExportVm (see imports/exports), then either completed after
a verified transfer or aborted by a revert. A lease that never became ready is aborted right
where it was created: its id never reaches a task result, so no revert could find it.

A process killed after vCenter created a lease but before the lease id was saved leaves a lease
nobody knows the id of. vCenter keeps it ready until it times out (``info.leaseTimeout``, 300 s,
without HttpNfcLeaseProgress), and while it is held it blocks Destroy and PowerOn of its VM. What
another session can see is the lease's import/export task, running in the VM's ``recentTask``;
cancelling that task ends the lease (an import's VM is removed with it). Our VMs carry the flow
token in their names, so :func:`release_held` finds them by name and ends what they hold.
"""

from __future__ import annotations

import logging
import time

from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from vsan_flows import exceptions
from vsan_flows.vsphere import faults, transfer
from vsan_flows.vsphere.session import VSphere, ref, ref_value

LOG = logging.getLogger(__name__)

# How long a cancelled lease task may take to end before we call it a failure.
CANCEL_WAIT_SECS = 60.0
UNFINISHED = ("queued", "running")


def ready_or_aborted(ctx: VSphere, lease) -> str:
    """Wait for ``lease`` to become ready and return its id; abort it on any failure."""
    try:
        transfer.wait_ready(ctx.session, lease)
    except Exception:
        transfer.abort(ctx.session, lease)
        raise
    return ref_value(lease)


def abort(ctx: VSphere, lease_id: str) -> bool:
    """Abort a lease; False when it was already gone (done, aborted, or timed out)."""
    return transfer.abort(ctx.session, ref(lease_id, "HttpNfcLease"))


def complete(ctx: VSphere, lease_id: str) -> bool:
    """Complete a lease; False when it was no longer open (completed, aborted or expired).

    A process killed right after vCenter completed the lease, before it saved that, runs this
    again on resume: the lease is then done or gone, and the caller decides from what the lease
    left behind whether the transfer stands (it must not complete, fail and start over).
    """
    lease = ref(lease_id, "HttpNfcLease")
    try:
        state = transfer.lease_state(ctx.session, lease)
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return False
        raise
    if state == "done":
        return False
    try:
        transfer.complete(ctx.session, lease, state)
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return False
        raise
    return True


def release_held(ctx: VSphere, vm_id: str) -> int:
    """End every lease a dead process left on our VM ``vm_id``; how many were ended.

    By cancelling the VM's unfinished tasks: the import/export task of a lease is the only
    handle on it another session has. Only for VMs this flow owns (named by its token), where
    no live process can be running anything. A VM already gone holds nothing.
    """
    session = ctx.session
    vm_ref = ref(vm_id, "VirtualMachine")
    try:
        recent = session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                                    "recentTask")
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return 0
        raise
    ended = 0
    for task in getattr(recent, "ManagedObjectReference", None) or []:
        info = _task_info(ctx, task)
        if info is None or info.state not in UNFINISHED or not getattr(info, "cancelable",
                                                                          False):
            continue
        try:
            session.invoke_api(session.vim, "CancelTask", task)
        except vexc.VimException as exc:
            if faults.is_gone(exc) or "InvalidState" in (getattr(exc, "fault_list", None)
                                                         or []):
                continue  # it ended by itself meanwhile
            raise
        _wait_ended(ctx, task)
        LOG.info("ended %s (task %s) left on VM %s by a process that died",
                 getattr(info, "descriptionId", None) or "a task", ref_value(task), vm_id)
        ended += 1
    return ended


def _task_info(ctx: VSphere, task):
    try:
        return ctx.session.invoke_api(vim_util, "get_object_property", ctx.session.vim, task,
                                      "info")
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return None
        raise


def _wait_ended(ctx: VSphere, task) -> None:
    deadline = time.monotonic() + CANCEL_WAIT_SECS
    while True:
        info = _task_info(ctx, task)
        if info is None or info.state not in UNFINISHED:
            return
        if time.monotonic() > deadline:
            raise exceptions.LeaseError(
                f"task {ref_value(task)} did not end within {CANCEL_WAIT_SECS:.0f} s of being "
                "cancelled; its lease still holds the VM")
        time.sleep(0.2)
