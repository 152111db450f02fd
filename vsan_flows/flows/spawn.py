"""The spawn flow: validate, place, import (unless cached), link the instance disk.

Only composition lives here. The import part sits in a linear subflow under a Retry. On an
image-cache hit its tasks see ``cached_shadow`` and do nothing. (A TaskFlow graph decider
would show them IGNORED instead, but in taskflow 6.5 a decided subflow with more than one
incoming edge leaves its Retry pending and the engine stalls in RUNNING -> SUSPENDED.)
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows.flows.retry import TransferRetry
from vsan_flows.tasks.datastore import PickVsanDatastore
from vsan_flows.tasks.disk import CloneLinkedDisk, PowerOnInstance
from vsan_flows.tasks.image import ValidateStreamOptimizedImage
from vsan_flows.tasks.lease import CompleteLease, CreateImportLease
from vsan_flows.tasks.shadow_vm import LookupImageCache, RegisterShadowVM
from vsan_flows.tasks.stream import StreamDiskToLease

NAME = "spawn"


def make_spawn_flow(retries: int = 3, power_on: bool = False) -> linear_flow.Flow:
    """Build the spawn flow; importable by name (vsan_flows.flows.spawn.make_spawn_flow).

    Store inputs: instance_name, image_id, flow_token, import_vm_name.
    Transient injections: vsphere, images, policy.
    """
    importing = linear_flow.Flow("import-image",
                                 retry=TransferRetry(attempts=retries + 1, name="import-retry",
                                                     revert_all=True))
    importing.add(CreateImportLease(), StreamDiskToLease(),
                  CompleteLease(rebind={"lease": "import_lease"}))
    flow = linear_flow.Flow(NAME)
    flow.add(ValidateStreamOptimizedImage(), PickVsanDatastore(), LookupImageCache(),
             importing, RegisterShadowVM(), CloneLinkedDisk())
    if power_on:
        flow.add(PowerOnInstance())
    return flow
