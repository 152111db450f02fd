"""Snapshot side: the instance, the target image record, the VM snapshot and its clone."""

from __future__ import annotations

import logging

from taskflow import task
from taskflow.types import failure

from vsan_flows import exceptions
from vsan_flows.ownership import clone_note
from vsan_flows.vsphere import exports, instances

LOG = logging.getLogger(__name__)


class ReadInstance(task.Task):
    """The instance VM and what the new image's metadata must say about it."""

    default_provides = "instance"

    def execute(self, vsphere, instance_name: str) -> dict:
        return exports.describe_instance(vsphere, instance_name)


class ReserveImage(task.Task):
    """The target image must exist and be empty; if the whole flow fails, it is killed.

    This is the first task that touches the image, so its revert runs only when the flow
    as a whole gives up: the record is marked killed (or deleted, if it had gone active), so
    no half or orphaned image is ever left looking usable.
    """

    def execute(self, images, image_id: str) -> None:
        meta = images.show(image_id)
        if meta.status in ("active", "killed") or meta.size:
            raise exceptions.ImageAlreadyHasData(image_id, meta.status)

    def revert(self, images, image_id: str, flow_token: str, result=None, **kwargs) -> None:
        if isinstance(result, failure.Failure):
            return  # execute refused the image: it is not ours to kill
        try:
            meta = images.show(image_id)
        except exceptions.ImageNotFound:
            return
        if meta.status == "active":
            if meta.properties.get("vsan_flows_flow") != flow_token:
                # Someone else's upload made it active (nova retried, a second snapshot
                # raced us): a good image that is not ours to delete.
                LOG.warning("undo: image %s is active with data this flow did not write; "
                            "left as it is", image_id)
                return
            images.delete(image_id)
            LOG.info("undo: deleted image %s (the snapshot flow was rolled back)", image_id)
        elif meta.status != "killed":
            try:
                images.mark_killed(image_id, "the snapshot flow failed and was rolled back")
            except exceptions.ImageServiceRefused as err:
                if err.status != 403:
                    raise  # 401: other credentials (a resume's service user) may succeed
                # Not ours to discard (an image of another project: these credentials may
                # read it, not delete it): it holds none of our data, and a retry of this
                # undo with the same credentials cannot succeed, so the rollback goes on.
                LOG.warning("undo: image %s (%s, no data from this flow) left as it is: %s",
                            image_id, meta.status, err)
                return
            LOG.info("undo: marked image %s killed (the snapshot flow was rolled back)",
                     image_id)


class CreateVmSnapshot(task.Task):
    """Snapshot the instance so the export reads a frozen state, not a running disk."""

    default_provides = "vm_snapshot"

    def execute(self, vsphere, instance: dict, snapshot_name: str) -> dict:
        snap_id = exports.find_snapshot(vsphere, instance["vm"], snapshot_name)
        if snap_id is None:
            snap_id = exports.create_snapshot(vsphere, instance["vm"], snapshot_name)
        return {"snapshot": snap_id, "name": snapshot_name}

    def revert(self, vsphere, instance: dict, snapshot_name: str, **kwargs) -> None:
        if exports.remove_snapshot(vsphere, instance["vm"], snapshot_name):
            LOG.info("undo: removed VM snapshot %s of %s", snapshot_name, instance["name"])


class CloneFromSnapshot(task.Task):
    """A temporary linked clone at the snapshot: the export never touches the instance."""

    default_provides = "snapshot_clone"

    def execute(self, vsphere, instance: dict, vm_snapshot: dict, clone_vm_name: str,
                flow_token: str) -> dict:
        # The clone's name carries this flow's token, so a VM by that name is ours: made by
        # this task before a crash lost its result.
        existing = instances.find(vsphere, clone_vm_name)
        if existing is not None:
            return {"vm": existing, "name": clone_vm_name}
        vm_id = exports.clone_at_snapshot(vsphere, instance["vm"], vm_snapshot["snapshot"],
                                          clone_vm_name, clone_note(flow_token))
        return {"vm": vm_id, "name": clone_vm_name}

    def revert(self, vsphere, clone_vm_name: str, **kwargs) -> None:
        if instances.destroy_by_name(vsphere, clone_vm_name):
            LOG.info("undo: destroyed export clone %s", clone_vm_name)
