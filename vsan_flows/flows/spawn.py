"""The spawn flow: validate, place, import (unless cached), link the instance disk.

Only composition lives here. The import part sits in a linear subflow under a Retry. On an
image-cache hit its tasks see ``cached_shadow`` and do nothing. (A TaskFlow graph decider
would show them IGNORED instead, but in taskflow 6.5 a decided subflow with more than one
incoming edge leaves its Retry pending and the engine stalls in RUNNING -> SUSPENDED.)
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.retry import TransferRetry
from vsan_flows.tasks.datastore import PickVsanDatastore
from vsan_flows.tasks.disk import CloneLinkedDisk, PowerOnInstance
from vsan_flows.tasks.image import ValidateStreamOptimizedImage
from vsan_flows.tasks.lease import CompleteLease, CreateImportLease
from vsan_flows.tasks.shadow_vm import LookupImageCache, RegisterShadowVM
from vsan_flows.tasks.stream import StreamDiskToLease

#: The facts a spawn starts with (its store); everything else is provided by its atoms.
STORE_KEYS = (names.INSTANCE_NAME, names.IMAGE_ID, names.FLOW_TOKEN, names.IMPORT_VM_NAME)


def make_spawn_flow(retries: int = 3, power_on: bool = False) -> linear_flow.Flow:
    """Build the spawn flow; importable by name (vsan_flows.flows.spawn.make_spawn_flow).

    Needs STORE_KEYS in its store and names.TRANSIENTS injected.
    """
    importing = linear_flow.Flow(names.IMPORT_SUBFLOW,
                                 retry=TransferRetry(attempts=retries + 1,
                                                     name=names.IMPORT_RETRY,
                                                     revert_all=True))
    importing.add(CreateImportLease(name=names.CREATE_IMPORT_LEASE),
                  StreamDiskToLease(name=names.STREAM_DISK_TO_LEASE),
                  CompleteLease(name=names.COMPLETE_IMPORT_LEASE,
                                rebind={"lease": "import_lease"}))
    flow = linear_flow.Flow(names.SPAWN_FLOW)
    flow.add(ValidateStreamOptimizedImage(name=names.VALIDATE_IMAGE),
             PickVsanDatastore(name=names.PICK_DATASTORE),
             LookupImageCache(name=names.LOOKUP_IMAGE_CACHE),
             importing,
             RegisterShadowVM(name=names.REGISTER_SHADOW_VM),
             CloneLinkedDisk(name=names.CLONE_LINKED_DISK))
    if power_on:
        flow.add(PowerOnInstance(name=names.POWER_ON_INSTANCE))
    return flow
