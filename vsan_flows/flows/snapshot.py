"""The snapshot flow: freeze the instance, clone it, export the clone into a new image.

Only composition lives here; the export part sits in a linear subflow under a Retry, so a
lease that dies or a cut stream is aborted and tried again with a new lease.
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.retry import TransferRetry
from vsan_flows.tasks.cleanup import Cleanup
from vsan_flows.tasks.lease import CompleteLease, CreateExportLease
from vsan_flows.tasks.snapshot import (
    CloneFromSnapshot,
    CreateVmSnapshot,
    ReadInstance,
    ReserveImage,
)
from vsan_flows.tasks.stream import StreamDiskToImage

#: The facts a snapshot starts with (its store); everything else is provided by its atoms.
STORE_KEYS = (names.INSTANCE_NAME, names.IMAGE_ID, names.FLOW_TOKEN, names.SNAPSHOT_NAME,
              names.CLONE_VM_NAME)


def make_snapshot_flow(retries: int = 3) -> linear_flow.Flow:
    """Build the snapshot flow; importable by name (vsan_flows.flows.snapshot....).

    Needs STORE_KEYS in its store and names.TRANSIENTS injected.
    """
    exporting = linear_flow.Flow(names.EXPORT_SUBFLOW,
                                 retry=TransferRetry(attempts=retries + 1,
                                                     name=names.EXPORT_RETRY,
                                                     revert_all=True))
    exporting.add(CreateExportLease(name=names.CREATE_EXPORT_LEASE),
                  StreamDiskToImage(name=names.STREAM_DISK_TO_IMAGE),
                  CompleteLease(name=names.COMPLETE_EXPORT_LEASE,
                                rebind={"lease": "export_lease"}))
    flow = linear_flow.Flow(names.SNAPSHOT_FLOW)
    flow.add(ReserveImage(name=names.RESERVE_IMAGE),
             ReadInstance(name=names.READ_INSTANCE),
             CreateVmSnapshot(name=names.CREATE_VM_SNAPSHOT),
             CloneFromSnapshot(name=names.CLONE_FROM_SNAPSHOT),
             exporting,
             Cleanup(name=names.CLEANUP))
    return flow
