"""The snapshot flow: freeze the instance, clone it, export the clone into a new image.

Only composition lives here; the export part sits in a linear subflow under a Retry, so a
lease that dies or a cut stream is aborted and tried again with a new lease.
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

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

NAME = "snapshot"


def make_snapshot_flow(retries: int = 3) -> linear_flow.Flow:
    """Build the snapshot flow; importable by name (vsan_flows.flows.snapshot....).

    Store inputs: instance_name, image_id, flow_token, snapshot_name, clone_vm_name.
    Transient injections: vsphere, images, policy.
    """
    exporting = linear_flow.Flow("export-disk",
                                 retry=TransferRetry(attempts=retries + 1, name="export-retry",
                                                     revert_all=True))
    exporting.add(CreateExportLease(), StreamDiskToImage(),
                  CompleteLease(rebind={"lease": "export_lease"}))
    flow = linear_flow.Flow(NAME)
    flow.add(ReserveImage(), ReadInstance(), CreateVmSnapshot(), CloneFromSnapshot(),
             exporting, Cleanup())
    return flow
