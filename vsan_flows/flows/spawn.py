"""The spawn flow: validate, place, import (unless cached), link the instance disk.

Only composition lives here. The import part sits in a linear subflow under a Retry. On an
image-cache hit its tasks see ``cached_shadow`` and do nothing. Lookup, import and the link sit
in a subflow under a second Retry, which runs them again when the cache entry was evicted
between the lookup and the link (flows/imagecache.cached_and_linked). (A TaskFlow graph decider
would show them IGNORED instead, but in taskflow 6.5 a decided subflow with more than one
incoming edge leaves its Retry pending and the engine stalls in RUNNING -> SUSPENDED.)
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.imagecache import cached_and_linked
from vsan_flows.tasks.datastore import PickVsanDatastore
from vsan_flows.tasks.disk import CloneLinkedDisk, PowerOnInstance
from vsan_flows.tasks.image import ValidateStreamOptimizedImage

#: The facts a spawn starts with (its store); everything else is provided by its atoms.
STORE_KEYS = (names.INSTANCE_NAME, names.IMAGE_ID, names.FLOW_TOKEN, names.IMPORT_VM_NAME)


def make_spawn_flow(retries: int = 3, power_on: bool = False) -> linear_flow.Flow:
    """Build the spawn flow; importable by name (vsan_flows.flows.spawn.make_spawn_flow).

    Needs STORE_KEYS in its store and names.TRANSIENTS injected.
    """
    flow = linear_flow.Flow(names.SPAWN_FLOW)
    flow.add(ValidateStreamOptimizedImage(name=names.VALIDATE_IMAGE),
             PickVsanDatastore(name=names.PICK_DATASTORE),
             cached_and_linked(retries, CloneLinkedDisk(name=names.CLONE_LINKED_DISK)))
    if power_on:
        flow.add(PowerOnInstance(name=names.POWER_ON_INSTANCE))
    return flow
