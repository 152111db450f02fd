"""HttpNfcLease life cycle by persisted id, for imports and exports alike.

A lease is created by ImportVApp or ExportVm (see imports/exports), then either completed after
a verified transfer or aborted by a revert. A lease that never became ready is aborted right
where it was created: its id never reaches a task result, so no revert could find it.
"""

from __future__ import annotations

from vsan_flows.vsphere import transfer
from vsan_flows.vsphere.session import VSphere, ref, ref_value


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


def complete(ctx: VSphere, lease_id: str) -> None:
    transfer.complete(ctx.session, ref(lease_id, "HttpNfcLease"))
