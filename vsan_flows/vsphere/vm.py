"""Virtual machines: the shadow-VM import spec, lookup, destroy, snapshots and linked clones.

The shadow VM only holds an image's base disk; it is never powered on. Its spec is the smallest
one vCenter accepts for ImportVApp: one SCSI controller and one thin disk on the target
datastore, no NICs.
"""

from __future__ import annotations

from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from vsan_flows.vsphere import faults

# The disk controller device for each vmware_adaptertype an image may carry.
CONTROLLERS = {
    "lsiLogic": "VirtualLsiLogicController",
    "lsiLogicsas": "VirtualLsiLogicSASController",
    "paraVirtual": "ParaVirtualSCSIController",
    "busLogic": "VirtualBusLogicController",
}
DEFAULT_ADAPTER = "lsiLogic"


def _vm_config(cf, *, name: str, datastore_name: str, capacity_kb: int, adapter_type: str,
               guest_id: str, parent_file: str | None = None, memory_mb: int = 128,
               vcpus: int = 1, annotation: str | None = None):
    """A config spec for a VM with one SCSI controller and one new thin disk on the datastore
    (a child of ``parent_file`` when given: a linked clone of that disk)."""
    controller = cf.create("ns0:" + CONTROLLERS.get(adapter_type, CONTROLLERS[DEFAULT_ADAPTER]))
    controller.key = -100
    controller.busNumber = 0
    controller.sharedBus = "noSharing"
    ctl_change = cf.create("ns0:VirtualDeviceConfigSpec")
    ctl_change.operation = "add"
    ctl_change.device = controller

    backing = cf.create("ns0:VirtualDiskFlatVer2BackingInfo")
    backing.fileName = f"[{datastore_name}]"
    backing.diskMode = "persistent"
    backing.thinProvisioned = True
    if parent_file:
        parent = cf.create("ns0:VirtualDiskFlatVer2BackingInfo")
        parent.fileName = parent_file
        parent.diskMode = "persistent"
        backing.parent = parent
    disk = cf.create("ns0:VirtualDisk")
    disk.key = -101
    disk.controllerKey = -100
    disk.unitNumber = 0
    disk.capacityInKB = int(capacity_kb)
    disk.backing = backing
    disk_change = cf.create("ns0:VirtualDeviceConfigSpec")
    disk_change.operation = "add"
    disk_change.fileOperation = "create"
    disk_change.device = disk

    files = cf.create("ns0:VirtualMachineFileInfo")
    files.vmPathName = f"[{datastore_name}]"
    config = cf.create("ns0:VirtualMachineConfigSpec")
    config.name = name
    config.guestId = guest_id
    config.numCPUs = vcpus
    config.memoryMB = memory_mb
    if annotation is not None:
        config.annotation = annotation
    config.files = files
    config.deviceChange = [ctl_change, disk_change]
    return config


def import_spec(cf, name: str, datastore_name: str, capacity_kb: int,
                adapter_type: str = DEFAULT_ADAPTER, guest_id: str = "otherGuest"):
    """A VirtualMachineImportSpec for a disk-only VM on ``datastore_name``."""
    spec = cf.create("ns0:VirtualMachineImportSpec")
    spec.configSpec = _vm_config(cf, name=name, datastore_name=datastore_name,
                                 capacity_kb=capacity_kb, adapter_type=adapter_type,
                                 guest_id=guest_id)
    return spec


def find_child(session, folder, name: str):
    """The VM called ``name`` directly in ``folder``, or None: one SearchIndex call instead
    of reading every VM's name (which grows with the inventory)."""
    index = session.vim.service_content.searchIndex
    return session.invoke_api(session.vim, "FindChild", index, entity=folder, name=name)


def all_names(session) -> list[str]:
    names = []
    retrieve = session.invoke_api(vim_util, "get_objects", session.vim, "VirtualMachine", 100,
                                  ["name"])
    with vim_util.WithRetrieval(session.vim, retrieve) as objects:
        for obj in objects:
            for prop in getattr(obj, "propSet", []) or []:
                names.append(prop.val)
    return names


def exists(session, vm_ref) -> bool:
    try:
        session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref, "name")
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return False
        raise
    return True


def name_of(session, vm_ref) -> str | None:
    """The VM's name now, or None when it no longer exists."""
    try:
        return session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref, "name")
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return None
        raise


def destroy(session, vm_ref) -> bool:
    """Destroy a VM and its files; False when it was already gone (safe to run twice)."""
    if not exists(session, vm_ref):
        return False
    try:
        power_off(session, vm_ref)  # vCenter refuses to destroy a running VM
        task = session.invoke_api(session.vim, "Destroy_Task", vm_ref)
        session.wait_for_task(task)
    except vexc.ManagedObjectNotFoundException:
        return False
    return True


def disks(session, vm_ref) -> list:
    """The VM's VirtualDisk devices (backing.fileName, backing.parent chain)."""
    devices = session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                                 "config.hardware.device")
    items = getattr(devices, "VirtualDevice", None) or []
    return [d for d in items if d.__class__.__name__ == "VirtualDisk"]


def annotation(session, vm_ref) -> str:
    return session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                              "config.annotation") or ""


def reconfigure(session, vm_ref, *, name: str | None = None,
                annotation: str | None = None) -> None:
    """Rename and/or annotate a VM in one ReconfigVM_Task."""
    spec = session.vim.client.factory.create("ns0:VirtualMachineConfigSpec")
    if name is not None:
        spec.name = name
    if annotation is not None:
        spec.annotation = annotation
    task = session.invoke_api(session.vim, "ReconfigVM_Task", vm_ref, spec=spec)
    session.wait_for_task(task)


def create_linked(session, folder, pool, *, name: str, datastore_name: str, parent_file: str,
                  capacity_kb: int, adapter_type: str = DEFAULT_ADAPTER,
                  guest_id: str = "otherGuest", annotation: str = "", memory_mb: int = 128,
                  vcpus: int = 1):
    """Create a VM whose only disk is a new child (delta) of the disk ``parent_file``.

    This is what makes a spawn cheap on vSAN: the instance shares the cached base disk and
    writes only its own differences.
    """
    config = _vm_config(session.vim.client.factory, name=name, datastore_name=datastore_name,
                        capacity_kb=capacity_kb, adapter_type=adapter_type,
                        guest_id=guest_id, parent_file=parent_file,
                        memory_mb=memory_mb, vcpus=vcpus, annotation=annotation)
    task = session.invoke_api(session.vim, "CreateVM_Task", folder, config=config, pool=pool)
    info = session.wait_for_task(task)
    return info.result


def all_disks(session) -> dict[str, list]:
    """Every VM's name -> its VirtualDisk devices, in one property-collector pass."""
    result: dict[str, list] = {}
    retrieve = session.invoke_api(vim_util, "get_objects", session.vim, "VirtualMachine", 100,
                                  ["name", "config.hardware.device"])
    with vim_util.WithRetrieval(session.vim, retrieve) as objects:
        for obj in objects:
            props = {p.name: p.val for p in getattr(obj, "propSet", []) or []}
            devices = getattr(props.get("config.hardware.device"), "VirtualDevice", None) or []
            result[props.get("name")] = [d for d in devices
                                         if d.__class__.__name__ == "VirtualDisk"]
    return result


def snapshots(session, vm_ref) -> list[tuple[str, object]]:
    """(name, snapshot ref) of every snapshot in the VM's tree, depth first."""
    info = session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref, "snapshot")
    found = []
    stack = list(getattr(info, "rootSnapshotList", None) or [])
    while stack:
        node = stack.pop()
        found.append((node.name, node.snapshot))
        stack.extend(getattr(node, "childSnapshotList", None) or [])
    return found


def create_snapshot(session, vm_ref, name: str, description: str = ""):
    task = session.invoke_api(session.vim, "CreateSnapshot_Task", vm_ref, name=name,
                              description=description, memory=False, quiesce=False)
    return session.wait_for_task(task).result


def remove_snapshot(session, snapshot_ref) -> None:
    task = session.invoke_api(session.vim, "RemoveSnapshot_Task", snapshot_ref,
                              removeChildren=False)
    session.wait_for_task(task)


def clone_linked(session, vm_ref, snapshot_ref, *, name: str, folder, pool,
                 annotation: str = ""):
    """A linked clone of ``vm_ref`` at ``snapshot_ref``: its disk is a child of that state."""
    cf = session.vim.client.factory
    relocate = cf.create("ns0:VirtualMachineRelocateSpec")
    relocate.diskMoveType = "createNewChildDiskBacking"
    relocate.pool = pool
    config = cf.create("ns0:VirtualMachineConfigSpec")
    config.annotation = annotation
    spec = cf.create("ns0:VirtualMachineCloneSpec")
    spec.location = relocate
    spec.snapshot = snapshot_ref
    spec.powerOn = False
    spec.template = False
    spec.config = config
    task = session.invoke_api(session.vim, "CloneVM_Task", vm_ref, folder=folder, name=name,
                              spec=spec)
    return session.wait_for_task(task).result


def power_state(session, vm_ref) -> str:
    return session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                              "runtime.powerState")


def guest_id(session, vm_ref) -> str:
    return session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                              "config.guestId") or "otherGuest"


def controller_types(session, vm_ref) -> dict[int, str]:
    """Device key -> vmware_adaptertype of the VM's disk controllers."""
    devices = session.invoke_api(vim_util, "get_object_property", session.vim, vm_ref,
                                 "config.hardware.device")
    by_class = {v: k for k, v in CONTROLLERS.items()}
    found = {}
    for d in getattr(devices, "VirtualDevice", None) or []:
        kind = by_class.get(d.__class__.__name__)
        if kind:
            found[d.key] = kind
        elif d.__class__.__name__ == "VirtualIDEController":
            found[d.key] = "ide"
    return found


def power_on(session, vm_ref) -> None:
    if power_state(session, vm_ref) != "poweredOn":
        session.wait_for_task(session.invoke_api(session.vim, "PowerOnVM_Task", vm_ref))


def power_off(session, vm_ref) -> None:
    if power_state(session, vm_ref) == "poweredOn":
        session.wait_for_task(session.invoke_api(session.vim, "PowerOffVM_Task", vm_ref))
