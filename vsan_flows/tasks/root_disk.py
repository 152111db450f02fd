"""The root disk of a VM nova built: find that VM, give it a linked root disk of flavor size."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions
from vsan_flows.tasks.shadow_vm import raise_if_gone
from vsan_flows.vsphere import identity, root_disk

LOG = logging.getLogger(__name__)

KiB = 1024


class LocateInstanceVM(task.Task):
    """The instance's VM (by nova's config.instanceUuid) and the datastore nova put it on.

    The image cache goes to that datastore: a linked disk's parent must sit beside it. It must
    be a datastore type the policy allows, or the flow stops before any vCenter object exists.
    """

    default_provides = ("instance_vm", "datastore")

    def execute(self, vsphere, policy, instance_name: str) -> tuple[dict, dict]:
        vm_id = identity.find_instance(vsphere, instance_name)
        if vm_id is None:
            raise exceptions.InstanceNotFound(instance_name)
        datastore = identity.datastore_of(vsphere, vm_id)
        allowed = {t.casefold() for t in policy.datastore_types}
        if (datastore["type"] or "").casefold() not in allowed:
            raise exceptions.VSphereError(
                f"instance {instance_name} is on datastore {datastore['name']} of type "
                f"{datastore['type']}, not one of {', '.join(policy.datastore_types)}")
        return {"vm": vm_id, "name": instance_name}, datastore


class AttachLinkedRootDisk(task.Task):
    """A delta disk of the cached base disk, grown to the flavor's root size when larger.

    A root size smaller than the image is refused (a disk cannot shrink); 0 means "the image's
    size", as in nova. Revert removes and deletes the delta disk (never the cached base).
    """

    default_provides = "root_disk"

    def __init__(self, root_bytes: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root_bytes = int(root_bytes)

    def execute(self, vsphere, image: dict, datastore: dict, shadow_vm: dict,
                instance_vm: dict) -> dict:
        virtual = int(image["virtual_size"])
        if self.root_bytes and self.root_bytes < virtual:
            raise exceptions.InvalidImage(
                "the image's disk is larger than the flavor's root disk",
                image_id=image["id"],
                found=f"virtual size {virtual} bytes, root disk {self.root_bytes} bytes")
        existing = root_disk.linked_disk(vsphere, instance_vm["vm"], shadow_vm["disk"])
        if existing is not None:  # attached by this flow before a crash lost the result
            path = existing.backing.fileName
            capacity_kb = int(existing.capacityInKB)
        else:
            capacity_kb = (virtual + KiB - 1) // KiB
            try:
                path = root_disk.attach_linked(vsphere, instance_vm["vm"],
                                               parent_path=shadow_vm["disk"],
                                               capacity_kb=capacity_kb,
                                               datastore_name=datastore["name"],
                                               adapter_type=image.get("adapter_type"))
            except Exception as exc:
                raise_if_gone(vsphere, image, shadow_vm, exc)  # evicted: looked up again
                raise
        # As in CloneLinkedDisk: an entry renamed or destroyed meanwhile fails this step, its
        # revert removes the disk, and the flow's CacheEntryRetry looks the cache up again.
        raise_if_gone(vsphere, image, shadow_vm)
        want_kb = (self.root_bytes + KiB - 1) // KiB
        if want_kb > capacity_kb:
            root_disk.grow(vsphere, path, want_kb)
            capacity_kb = want_kb
        return {"path": path, "parent": shadow_vm["disk"], "capacity_kb": capacity_kb}

    def revert(self, vsphere, shadow_vm: dict, instance_vm: dict, **kwargs) -> None:
        if root_disk.detach_linked(vsphere, instance_vm["vm"], shadow_vm["disk"]):
            LOG.info("undo: removed the root disk linked to %s from instance VM %s",
                     shadow_vm["disk"], instance_vm["name"])
