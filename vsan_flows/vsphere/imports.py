"""Task-level operations of an image import: ids in, ids out, nothing live persisted.

Tasks call these with the run-time :class:`~vsan_flows.vsphere.session.VSphere` and the
identities they persisted (managed-object ids, VM names); this module turns them back into
references and drives the lower-level modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from vsan_flows import exceptions
from vsan_flows.vsphere import disk, home, inventory, leases, transfer, vm
from vsan_flows.vsphere.session import VSphere, ref, ref_value


def list_datastores(ctx: VSphere) -> list:
    cluster = inventory.cluster_by_name(ctx.session, ctx.cluster_name)
    return inventory.datastores(ctx.session, cluster)


def begin_import(ctx: VSphere, *, vm_name: str, datastore_name: str, capacity_bytes: int,
                 adapter_type: str | None, guest_id: str | None) -> dict:
    """ImportVApp a disk-only VM and wait for its lease; returns the lease and VM ids."""
    pool, folder = home.pool_and_folder(ctx)
    spec = vm.import_spec(ctx.vim.client.factory, vm_name, datastore_name,
                          (capacity_bytes + 1023) // 1024,
                          adapter_type or vm.DEFAULT_ADAPTER, guest_id or "otherGuest")
    lease = transfer.create_import_lease(ctx.session, pool, folder, spec)
    try:
        # State and info in one read: a lease that is ready at once (the usual case when
        # ImportVApp answers) needs no second round trip for its VM.
        props = transfer.lease_properties(ctx.session, lease, "state", "info")
    except Exception:
        # The caller never learns this lease id, so it is released here, not by a revert.
        transfer.abort(ctx.session, lease)
        raise
    if props.get("state") == "ready":
        entity = getattr(props.get("info"), "entity", None)
        return {"lease": ref_value(lease),
                "vm": ref_value(entity) if entity is not None else None}
    lease_id = leases.ready_or_aborted(ctx, lease)
    try:
        entity = transfer.lease_entity(ctx.session, lease)
    except Exception:
        transfer.abort(ctx.session, lease)
        raise
    return {"lease": lease_id, "vm": ref_value(entity) if entity is not None else None}


def upload(ctx: VSphere, lease_id: str, source: BinaryIO, size: int,
           on_progress: Callable[[int], None] | None = None,
           while_storing: Callable[[], None] | None = None) -> int:
    """Stream ``size`` bytes to the lease's disk URL and insist every byte was accepted.

    ``while_storing``: a check run while the host stores the last bytes (see
    :class:`~vsan_flows.vsphere.transfer.LeaseUploadHandle`); its failure fails the upload.
    """
    lease = ref(lease_id, "HttpNfcLease")
    device = transfer.disk_device(ctx.session, lease, ctx.host, ctx.port)
    reader = transfer.ImageStreamReader(source)
    writer = transfer.LeaseUploadHandle(ctx.session, lease, device, size, on_progress,
                                        ctx.transfer_timeout, cacerts=ctx.cacerts,
                                        while_storing=while_storing)
    transfer.copy(reader, writer, ctx.transfer_timeout, "The image upload", size)
    if reader.bytes_read != size:
        raise exceptions.IncompleteTransfer("The image upload", bytes_sent=reader.bytes_read,
                                            bytes_expected=size)
    if writer.response_status is None or not 200 <= writer.response_status < 300:
        raise exceptions.IncompleteTransfer(
            f"The image upload (vCenter answered {writer.response_status or 'nothing'})",
            bytes_sent=reader.bytes_read, bytes_expected=size)
    return reader.bytes_read


def check_imported_disk(ctx: VSphere, lease_id: str, vm_id: str, datastore_name: str,
                        capacity_bytes: int) -> None:
    """Insist on the evidence vSAN offers that an import landed, or raise.

    vSAN keeps disk data in objects that only NFC reaches: no datastore file holds the
    bytes, so nothing can tell how many were stored. What it does offer: the host answers the
    PUT only after writing (checked by :func:`upload`), it fails the lease when writing the
    disk fails (the lease must still be ready), and the VM's own disk device names the disk
    on the chosen datastore with the capacity the image needs.
    """
    check_lease_ready(ctx, lease_id)
    check_imported_vm_disk(ctx, vm_id, datastore_name, capacity_bytes)


def check_lease_ready(ctx: VSphere, lease_id: str) -> None:
    """The host fails the lease when writing the disk fails: after the upload it must still
    be ready. (One property read: read it after vCenter answered the PUT.)"""
    lease = ref(lease_id, "HttpNfcLease")
    state = transfer.lease_state(ctx.session, lease)
    if state != "ready":
        raise exceptions.LeaseError(
            f"import lease {lease_id} went to state {state} after the upload: "
            f"{transfer.lease_error(ctx.session, lease)}")


def check_imported_vm_disk(ctx: VSphere, vm_id: str, datastore_name: str,
                           capacity_bytes: int) -> None:
    """The imported VM's own disk device names a disk on the chosen datastore with the
    capacity the image needs. ImportVApp fixes both and the upload does not change them, so
    this may run while the host stores the last bytes (``upload(while_storing=...)``)."""
    disks = vm.disks(ctx.session, ref(vm_id, "VirtualMachine"))
    if not disks:
        raise exceptions.VSphereError(f"the imported VM {vm_id} has no virtual disk")
    path = disks[0].backing.fileName
    ds_name, _rel = disk.split_path(path)
    if ds_name != datastore_name:
        raise exceptions.VSphereError(
            f"the imported disk {path} is not on the chosen datastore {datastore_name}")
    capacity = int(disks[0].capacityInKB) * 1024
    if capacity < capacity_bytes:
        raise exceptions.VSphereError(
            f"the imported disk {path} has {capacity} bytes of capacity; the image needs "
            f"{capacity_bytes}")
