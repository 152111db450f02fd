"""Import leases: created in one task, completed in another, aborted by revert."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions
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
            # A crashed earlier attempt of this same flow. Its lease may still be ready (the
            # process died before saving its id); destroy ends it first.
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
        # By name, not by id: the id is lost when we crashed inside execute. Destroying it
        # ends a lease whose id was lost with it.
        if instances.destroy_by_name(vsphere, import_vm_name):
            LOG.info("undo: destroyed half-imported VM %s and its files", import_vm_name)


class CreateExportLease(task.Task):
    """ExportVm on the temporary clone; revert aborts the lease (safe if already gone).

    The clone is this flow's own, so a lease found on it before ExportVm (or in a revert that
    has no result) is an earlier attempt's whose process died before saving its id: it is
    ended, or it would stay ready until vCenter timed it out and block the clone's removal.
    """

    default_provides = "export_lease"

    def execute(self, vsphere, fence, snapshot_clone: dict) -> dict:
        fence.verify()  # only the flow's live owner starts an export (see CreateImportLease)
        if leases.release_held(vsphere, snapshot_clone["vm"]):
            LOG.info("ended an earlier export lease on %s before exporting again",
                     snapshot_clone["vm"])
        return {"lease": exports.begin_export(vsphere, snapshot_clone["vm"])}

    def revert(self, vsphere, snapshot_clone: dict | None = None, result=None,
               **kwargs) -> None:
        if isinstance(result, dict) and result.get("lease") and \
                leases.abort(vsphere, result["lease"]):
            LOG.info("undo: aborted export lease %s", result["lease"])
        if isinstance(snapshot_clone, dict) and snapshot_clone.get("vm") and \
                leases.release_held(vsphere, snapshot_clone["vm"]):
            LOG.info("undo: ended an export lease on %s whose id was lost in a crash",
                     snapshot_clone["vm"])


class CompleteLease(task.Task):
    """Tell vCenter the transfer is done; only after the stream was verified end to end.

    Used by both flows: bind ``lease`` to ``import_lease`` or ``export_lease``.
    """

    def execute(self, vsphere, lease: dict | None) -> None:
        if lease is None:
            return  # spawn with a cache hit: no lease was made
        if leases.complete(vsphere, lease["lease"]):
            return
        # No longer open: an earlier attempt died right after completing it, or it expired or
        # was aborted. vCenter removes the VM of an import that did not complete, so an
        # import VM still there means the import stands; an export's bytes were verified
        # and stored before this step (no lease is needed to keep them).
        if lease.get("vm") and not instances.exists(vsphere, lease["vm"]):
            raise exceptions.LeaseError(
                f"import lease {lease['lease']} ended before it was completed and vCenter "
                "removed the imported VM; the import starts over")
        LOG.info("lease %s was already completed (by an attempt that died before saving "
                 "that)", lease["lease"])
