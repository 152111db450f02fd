"""Task-level operations of a snapshot export: ids and names in, ids out."""

from __future__ import annotations

from vsan_flows import exceptions
from vsan_flows.vsphere import home, identity, instances, leases, transfer, vm
from vsan_flows.vsphere.session import VSphere, ref, ref_value


def describe_instance(ctx: VSphere, name: str) -> dict:
    """What a snapshot image's metadata needs from the instance, or InstanceNotFound.

    ``name`` is our VM's name or nova's instance uuid (nova files its VMs in its own folders,
    named ``name (uuid)``, and finds them by config.instanceUuid).
    """
    vm_id = instances.find(ctx, name) or identity.find_instance(ctx, name)
    if vm_id is None:
        raise exceptions.InstanceNotFound(name)
    vm_ref = ref(vm_id, "VirtualMachine")
    disks = vm.disks(ctx.session, vm_ref)
    if not disks:
        raise exceptions.VSphereError(
            f"instance {name} has no virtual disk to snapshot; attach a root disk first")
    controllers = vm.controller_types(ctx.session, vm_ref)
    return {
        "vm": ref_value(vm_ref),
        "name": name,
        "guest_id": vm.guest_id(ctx.session, vm_ref),
        "adapter_type": controllers.get(disks[0].controllerKey, vm.DEFAULT_ADAPTER),
        "capacity_bytes": int(disks[0].capacityInKB) * 1024,
    }


def find_snapshot(ctx: VSphere, vm_id: str, name: str) -> str | None:
    for snap_name, snap in vm.snapshots(ctx.session, ref(vm_id, "VirtualMachine")):
        if snap_name == name:
            return ref_value(snap)
    return None


def create_snapshot(ctx: VSphere, vm_id: str, name: str) -> str:
    snap = vm.create_snapshot(ctx.session, ref(vm_id, "VirtualMachine"), name,
                              "vsan_flows snapshot export")
    return ref_value(snap)


def remove_snapshot(ctx: VSphere, vm_id: str, name: str) -> bool:
    snap_id = find_snapshot(ctx, vm_id, name)
    if snap_id is None:
        return False
    vm.remove_snapshot(ctx.session, ref(snap_id, "VirtualMachineSnapshot"))
    return True


def clone_at_snapshot(ctx: VSphere, vm_id: str, snapshot_id: str, name: str, note: str) -> str:
    pool, folder = home.pool_and_folder(ctx)
    clone = vm.clone_linked(ctx.session, ref(vm_id, "VirtualMachine"),
                            ref(snapshot_id, "VirtualMachineSnapshot"), name=name,
                            folder=folder, pool=pool, annotation=note)
    return ref_value(clone)


def begin_export(ctx: VSphere, vm_id: str) -> str:
    """ExportVm and wait for the lease; a lease that never got ready is aborted here."""
    lease = transfer.create_export_lease(ctx.session, ref(vm_id, "VirtualMachine"))
    return leases.ready_or_aborted(ctx, lease)


def open_export(ctx: VSphere, lease_id: str) -> transfer.ReadAhead:
    """The lease's disk as a read handle that reads ahead in a thread of its own, so the image
    service stores one chunk while the next ones come off the wire; the caller closes it."""
    lease = ref(lease_id, "HttpNfcLease")
    device = transfer.disk_device(ctx.session, lease, ctx.host, ctx.port)
    handle = transfer.LeaseDownloadHandle(ctx.session, lease, device, cacerts=ctx.cacerts)
    return transfer.ReadAhead(handle, what="The disk export")
