"""Import leases: created in one task, completed in another, aborted by revert."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows.vsphere import exports, imports, instances, leases

LOG = logging.getLogger(__name__)


class CreateImportLease(task.Task):
    """ImportVApp a disk-only shadow VM on the chosen datastore and wait for its lease.

    The VM's name is fixed before execute (``import_vm_name``, from the flow's store), so a
    revert after a crash that lost this task's result still finds and destroys it.
    """

    default_provides = "import_lease"

    def execute(self, vsphere, image_locks, fence, image: dict, datastore: dict,
                flow_token: str, import_vm_name: str, cached_shadow: dict | None) -> dict | None:
        if cached_shadow:
            return None  # the image cache already holds this image: import nothing
        # Held since placement; taken again here when this run is a resume or a retry
        # in another process (a lock is never assumed to survive a crash).
        image_locks.hold(image["id"], flow_token)
        # The import VM's name carries the flow token, so every engine that ever ran this
        # flow names its import the same: a leftover may be what the flow's live owner is
        # streaming into right now. Only the live owner may destroy it or import again; an
        # engine that lost its claim refuses here (fencing) instead of destroying it.
        fence.verify()
        leftover = instances.find(vsphere, import_vm_name)
        if leftover is not None:
            # A crashed earlier attempt of this same flow; its lease is dead with it.
            LOG.info("destroying leftover half-import %s before importing again",
                     import_vm_name)
            instances.destroy(vsphere, leftover)
        result = imports.begin_import(
            vsphere, vm_name=import_vm_name, datastore_name=datastore["name"],
            capacity_bytes=image["virtual_size"], adapter_type=image["adapter_type"],
            guest_id=image["os_type"])
        return {**result, "vm_name": import_vm_name}

    def revert(self, vsphere, import_vm_name: str, result=None, **kwargs) -> None:
        if isinstance(result, dict) and result.get("lease") and \
                leases.abort(vsphere, result["lease"]):
            LOG.info("undo: aborted import lease %s", result["lease"])
        # By name, not by id: the id is lost when we crashed inside execute.
        if instances.destroy_by_name(vsphere, import_vm_name):
            LOG.info("undo: destroyed half-imported VM %s and its files", import_vm_name)


class CreateExportLease(task.Task):
    """ExportVm on the temporary clone; revert aborts the lease (safe if already gone)."""

    default_provides = "export_lease"

    def execute(self, vsphere, fence, snapshot_clone: dict) -> dict:
        fence.verify()  # only the flow's live owner starts an export (see CreateImportLease)
        return {"lease": exports.begin_export(vsphere, snapshot_clone["vm"])}

    def revert(self, vsphere, result=None, **kwargs) -> None:
        if isinstance(result, dict) and result.get("lease") and \
                leases.abort(vsphere, result["lease"]):
            LOG.info("undo: aborted export lease %s", result["lease"])


class CompleteLease(task.Task):
    """Tell vCenter the transfer is done; only after the stream was verified end to end.

    Used by both flows: bind ``lease`` to ``import_lease`` or ``export_lease``.
    """

    def execute(self, vsphere, lease: dict | None) -> None:
        if lease is None:
            return  # spawn with a cache hit: no lease was made
        leases.complete(vsphere, lease["lease"])
