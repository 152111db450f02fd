"""nova's spawn on vSAN: ensure the image is cached on the VM's datastore, link a root disk.

nova has built the VM (flavor, NICs, folder, identity) and will power it on; this flow does
only what lives between: the image-cache entry (the same import subflow as our own spawn) and
the instance's root disk, a delta of the cached base disk of the flavor's size.
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.imagecache import cached_and_linked
from vsan_flows.tasks.image import ValidateStreamOptimizedImage
from vsan_flows.tasks.root_disk import AttachLinkedRootDisk, LocateInstanceVM

#: The facts it starts with: the same as our spawn's (instance_name is nova's instance uuid).
STORE_KEYS = (names.INSTANCE_NAME, names.IMAGE_ID, names.FLOW_TOKEN, names.IMPORT_VM_NAME)


def make_root_disk_flow(retries: int = 3, root_bytes: int = 0) -> linear_flow.Flow:
    """Build it; importable by name (vsan_flows.flows.root_disk.make_root_disk_flow)."""
    flow = linear_flow.Flow(names.NOVA_ROOT_DISK_FLOW)
    flow.add(ValidateStreamOptimizedImage(name=names.VALIDATE_IMAGE),
             LocateInstanceVM(name=names.LOCATE_INSTANCE_VM),
             cached_and_linked(retries, AttachLinkedRootDisk(
                 root_bytes=root_bytes, name=names.ATTACH_LINKED_ROOT_DISK)))
    return flow
