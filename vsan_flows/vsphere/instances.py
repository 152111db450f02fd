"""Task-level VM operations by persisted identity (VM id or name); see imports.py."""

from __future__ import annotations

from vsan_flows import exceptions
from vsan_flows.vsphere import faults, home, leases, vm
from vsan_flows.vsphere.session import VSphere, ref, ref_value


def find(ctx: VSphere, name: str) -> str | None:
    """Our VMs (and nova's instances) live in the cluster's datacenter VM folder."""
    _pool, folder = home.pool_and_folder(ctx)
    found = vm.find_child(ctx.session, folder, name)
    return ref_value(found) if found is not None else None


def annotation(ctx: VSphere, vm_id: str) -> str:
    return vm.annotation(ctx.session, ref(vm_id, "VirtualMachine"))


def rename(ctx: VSphere, vm_id: str, name: str, note: str) -> None:
    vm.reconfigure(ctx.session, ref(vm_id, "VirtualMachine"), name=name, annotation=note)


def exists(ctx: VSphere, vm_id: str) -> bool:
    return vm.exists(ctx.session, ref(vm_id, "VirtualMachine"))


def current_name(ctx: VSphere, vm_id: str) -> str | None:
    """What the VM ``vm_id`` is called now; None when it no longer exists."""
    return vm.name_of(ctx.session, ref(vm_id, "VirtualMachine"))


def is_missing_file(exc: BaseException) -> bool:
    """Whether a failed call said a file or object it needed does not exist (the Vim faults
    FileNotFound / ManagedObjectNotFound, however oslo.vmware reported them)."""
    return faults.is_gone(exc)


def destroy(ctx: VSphere, vm_id: str) -> bool:
    """Destroy our VM; a lease a dead process left on it is ended first (it blocks Destroy)."""
    leases.release_held(ctx, vm_id)
    return vm.destroy(ctx.session, ref(vm_id, "VirtualMachine"))


def destroy_by_name(ctx: VSphere, name: str, *, only_if_note_has: str | None = None) -> bool:
    """Destroy the VM called ``name``; with ``only_if_note_has``, only when it is ours."""
    vm_id = find(ctx, name)
    if vm_id is None:
        return False
    if only_if_note_has is not None and only_if_note_has not in annotation(ctx, vm_id):
        return False
    return destroy(ctx, vm_id)


def first_disk(ctx: VSphere, vm_id: str) -> dict:
    disks = vm.disks(ctx.session, ref(vm_id, "VirtualMachine"))
    if not disks:
        raise exceptions.VSphereError(f"VM {vm_id} has no virtual disk")
    d = disks[0]
    parent = getattr(d.backing, "parent", None)
    return {"path": d.backing.fileName, "capacity_kb": int(d.capacityInKB),
            "parent": getattr(parent, "fileName", None)}


def linked_children(ctx: VSphere, disk_path: str) -> list[str]:
    """Names of VMs with a disk whose parent chain starts at ``disk_path``."""
    children = []
    for name, disks in vm.all_disks(ctx.session).items():
        for d in disks:
            parent = getattr(d.backing, "parent", None)
            if parent is not None and parent.fileName == disk_path:
                children.append(name)
    return children


def create_linked(ctx: VSphere, *, name: str, datastore_name: str, parent_vm_id: str,
                  adapter_type: str | None, guest_id: str | None, note: str,
                  parent_disk: dict | None = None) -> str:
    """``parent_disk``: the parent VM's first disk as :func:`first_disk` gave it moments ago
    in the same flow (path, capacity_kb); without it, it is read here. vCenter refuses the
    clone if that disk is gone."""
    pool, folder = home.pool_and_folder(ctx)
    if not (parent_disk and parent_disk.get("path") and parent_disk.get("capacity_kb")):
        parent_disks = vm.disks(ctx.session, ref(parent_vm_id, "VirtualMachine"))
        if not parent_disks:
            raise exceptions.VSphereError(
                f"image cache VM {parent_vm_id} has no disk to link to")
        parent_disk = {"path": parent_disks[0].backing.fileName,
                       "capacity_kb": int(parent_disks[0].capacityInKB)}
    new = vm.create_linked(ctx.session, folder, pool, name=name, datastore_name=datastore_name,
                           parent_file=parent_disk["path"],
                           capacity_kb=parent_disk["capacity_kb"],
                           adapter_type=adapter_type or vm.DEFAULT_ADAPTER,
                           guest_id=guest_id or "otherGuest", annotation=note)
    return ref_value(new)


def names_with_prefix(ctx: VSphere, prefix: str) -> list[str]:
    return sorted(n for n in vm.all_names(ctx.session) if n and n.startswith(prefix))


def power_on(ctx: VSphere, vm_id: str) -> None:
    vm.power_on(ctx.session, ref(vm_id, "VirtualMachine"))


def power_off(ctx: VSphere, vm_id: str) -> None:
    vm.power_off(ctx.session, ref(vm_id, "VirtualMachine"))
