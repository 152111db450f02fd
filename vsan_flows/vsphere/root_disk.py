"""A root disk for a VM someone else built (nova): a linked child of a cached base disk.

nova creates the VM (flavor, NICs, folder, identity); this module gives it its root disk the way
the image cache wants on vSAN: a new delta disk whose parent is the cache entry's base disk, so
no image byte is copied per instance. The disk is found again by its parent (the only fact that
survives a crash), which makes attach and detach safe to run twice.
"""

from __future__ import annotations

from oslo_vmware import vim_util

from vsan_flows import exceptions
from vsan_flows.vsphere import faults, vm
from vsan_flows.vsphere.session import VSphere, ref

_SCSI_RESERVED_UNIT = 7  # the controller's own unit on a SCSI bus
_SCSI_UNITS = 16


def _devices(session, vm_ref) -> list:
    devices = session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                                 "config.hardware.device")
    return list(getattr(devices, "VirtualDevice", None) or [])


def linked_disk(ctx: VSphere, vm_id: str, parent_path: str):
    """The VM's disk whose immediate parent is ``parent_path``, or None."""
    for d in _devices(ctx.session, ref(vm_id, "VirtualMachine")):
        parent = getattr(getattr(d, "backing", None), "parent", None)
        if d.__class__.__name__ == "VirtualDisk" and parent is not None \
                and parent.fileName == parent_path:
            return d
    return None


def _slot(cf, devices: list, adapter_type: str) -> tuple[int, int, list]:
    """(controller key, unit number, device changes that add a controller if one is needed)."""
    kind = vm.CONTROLLERS.get(adapter_type, vm.CONTROLLERS[vm.DEFAULT_ADAPTER])
    used: dict[int, set[int]] = {}
    for d in devices:
        if getattr(d, "controllerKey", None) is not None:
            used.setdefault(d.controllerKey, set()).add(getattr(d, "unitNumber", None))
    buses = []
    for d in devices:
        if d.__class__.__name__ in vm.CONTROLLERS.values():
            buses.append(d.busNumber)
            if d.__class__.__name__ != kind:
                continue
            taken = used.get(d.key, set()) | {_SCSI_RESERVED_UNIT}
            free = [u for u in range(_SCSI_UNITS) if u not in taken]
            if free:
                return d.key, free[0], []
    controller = cf.create("ns0:" + kind)
    controller.key = -100
    controller.busNumber = max(buses) + 1 if buses else 0
    controller.sharedBus = "noSharing"
    change = cf.create("ns0:VirtualDeviceConfigSpec")
    change.operation = "add"
    change.device = controller
    return controller.key, 0, [change]


def attach_linked(ctx: VSphere, vm_id: str, *, parent_path: str, capacity_kb: int,
                  datastore_name: str, adapter_type: str | None) -> str:
    """Add a thin delta disk of ``parent_path`` to the VM; returns the new disk's path."""
    session = ctx.session
    vm_ref = ref(vm_id, "VirtualMachine")
    cf = session.vim.client.factory
    key, unit, changes = _slot(cf, _devices(session, vm_ref), adapter_type or vm.DEFAULT_ADAPTER)
    parent = cf.create("ns0:VirtualDiskFlatVer2BackingInfo")
    parent.fileName = parent_path
    parent.diskMode = "persistent"
    backing = cf.create("ns0:VirtualDiskFlatVer2BackingInfo")
    backing.fileName = f"[{datastore_name}]"
    backing.diskMode = "persistent"
    backing.thinProvisioned = True
    backing.parent = parent
    disk = cf.create("ns0:VirtualDisk")
    disk.key = -101
    disk.controllerKey = key
    disk.unitNumber = unit
    disk.capacityInKB = int(capacity_kb)
    disk.backing = backing
    change = cf.create("ns0:VirtualDeviceConfigSpec")
    change.operation = "add"
    change.fileOperation = "create"
    change.device = disk
    spec = cf.create("ns0:VirtualMachineConfigSpec")
    spec.deviceChange = [*changes, change]
    session.wait_for_task(session.invoke_api(session.vim, "ReconfigVM_Task", vm_ref,
                                             spec=spec))
    made = linked_disk(ctx, vm_id, parent_path)
    if made is None:
        raise exceptions.VSphereError(
            f"vCenter accepted the root disk for VM {vm_id} but the VM shows no disk linked "
            f"to {parent_path}")
    return made.backing.fileName


def _datacenter(ctx: VSphere):
    if "datacenter" not in ctx.cache:
        from vsan_flows.vsphere import inventory

        obj = inventory.cluster_by_name(ctx.session, ctx.cluster_name)
        while vim_util.get_moref_type(obj) != "Datacenter":
            obj = ctx.session.invoke_api(vim_util, "get_object_property", ctx.session.vim,
                                         obj, "parent")
        ctx.cache["datacenter"] = obj
    return ctx.cache["datacenter"]


def grow(ctx: VSphere, disk_path: str, capacity_kb: int) -> None:
    """ExtendVirtualDisk_Task, as nova grows a root disk to its flavor's size."""
    session = ctx.session
    manager = session.vim.service_content.virtualDiskManager
    task = session.invoke_api(session.vim, "ExtendVirtualDisk_Task", manager, name=disk_path,
                              datacenter=_datacenter(ctx), newCapacityKb=int(capacity_kb),
                              eagerZero=False)
    session.wait_for_task(task)


def detach_linked(ctx: VSphere, vm_id: str, parent_path: str) -> bool:
    """Remove and delete the VM's delta disk of ``parent_path``; False when there is none
    (already removed, or the VM is gone)."""
    session = ctx.session
    try:
        disk = linked_disk(ctx, vm_id, parent_path)
    except Exception as exc:  # noqa: BLE001 - judged by the fault, re-raised otherwise
        if faults.is_gone(exc):
            return False
        raise
    if disk is None:
        return False
    vm_ref = ref(vm_id, "VirtualMachine")
    cf = session.vim.client.factory
    change = cf.create("ns0:VirtualDeviceConfigSpec")
    change.operation = "remove"
    change.fileOperation = "destroy"
    change.device = disk
    spec = cf.create("ns0:VirtualMachineConfigSpec")
    spec.deviceChange = [change]
    session.wait_for_task(session.invoke_api(session.vim, "ReconfigVM_Task", vm_ref,
                                             spec=spec))
    return True
