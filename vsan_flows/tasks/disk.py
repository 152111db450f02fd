"""The instance's root disk: a linked child of the cached base disk."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions
from vsan_flows.ownership import instance_note
from vsan_flows.tasks.shadow_vm import raise_if_gone
from vsan_flows.vsphere import instances

LOG = logging.getLogger(__name__)


class CloneLinkedDisk(task.Task):
    """Create the instance VM with a root disk that is a delta of the shadow VM's base disk.

    When the cache entry went away under it (evicted or deleted after LookupImageCache found
    it), it fails with CacheEntryGone, its revert removes what it made, and the flow's
    CacheEntryRetry runs the lookup (and the import, if needed) and this step again.

    The VM note carries this flow's token: a re-run after a crash adopts the VM it already
    made instead of failing or making a second one, and revert never destroys a VM that some
    other flow (or a person) created under the same name.
    """

    default_provides = "instance_vm"

    def execute(self, vsphere, instance_name: str, image: dict, datastore: dict,
                shadow_vm: dict, flow_token: str) -> dict:
        existing = instances.find(vsphere, instance_name)
        if existing is not None:
            if instance_note(flow_token) not in instances.annotation(vsphere, existing):
                raise exceptions.VSphereError(
                    f"a VM named {instance_name!r} already exists in vCenter and was not "
                    "created by this spawn; delete it or choose another instance name")
            vm_id = existing
        else:
            try:
                vm_id = instances.create_linked(
                    vsphere, name=instance_name, datastore_name=datastore["name"],
                    parent_vm_id=shadow_vm["vm"], adapter_type=image["adapter_type"],
                    guest_id=image["os_type"], note=instance_note(flow_token),
                    # The shadow's disk as RegisterShadowVM/LookupImageCache just read it
                    # (flows stored before it was recorded have no capacity: read again then).
                    parent_disk={"path": shadow_vm["disk"],
                                 "capacity_kb": shadow_vm.get("capacity_kb")})
            except Exception as exc:
                # The cache entry evicted under us fails the link (FileNotFound): say so, and
                # the flow's CacheEntryRetry looks the cache up again. Any other failure (no
                # space, a bad spec) is raised as it is and is not retried.
                raise_if_gone(vsphere, image, shadow_vm, exc)
                raise
        # Linked (now or before a crash): the entry must still be the entry, or an eviction
        # renamed it before it could see this link and will destroy it. Revert removes the VM.
        raise_if_gone(vsphere, image, shadow_vm)
        disk = instances.first_disk(vsphere, vm_id)
        return {"vm": vm_id, "name": instance_name, "disk": disk["path"],
                "parent": disk["parent"]}

    def revert(self, vsphere, instance_name: str, flow_token: str, **kwargs) -> None:
        if instances.destroy_by_name(vsphere, instance_name,
                                     only_if_note_has=instance_note(flow_token)):
            LOG.info("undo: destroyed instance VM %s and its linked disk", instance_name)


class PowerOnInstance(task.Task):
    """Start the instance, as nova's spawn does when power_on is true; revert stops it."""

    def execute(self, vsphere, instance_vm: dict) -> None:
        instances.power_on(vsphere, instance_vm["vm"])

    def revert(self, vsphere, instance_name: str, **kwargs) -> None:
        vm_id = instances.find(vsphere, instance_name)
        if vm_id is not None:
            instances.power_off(vsphere, vm_id)
            LOG.info("undo: powered off instance VM %s", instance_name)
