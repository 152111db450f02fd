"""Finding a VM by the identity nova manages, and where its files live.

nova keys a VM by ``config.instanceUuid`` (and ``extraConfig["nvp.vm-uuid"]``), not by name: it
renames VMs ``name (uuid)`` and files them under ``OpenStack/Project (...)/Instances``. A lookup
by instance uuid is one SearchIndex call wherever the VM sits.
"""

from __future__ import annotations

from oslo_vmware import vim_util

from vsan_flows import exceptions
from vsan_flows.vsphere import inventory
from vsan_flows.vsphere.session import VSphere, ref, ref_value


def find_instance(ctx: VSphere, instance_uuid: str) -> str | None:
    """The id of the VM whose config.instanceUuid is ``instance_uuid``, or None.

    Two VMs claiming one instance is an inconsistency nobody should act on blindly.
    """
    session = ctx.session
    index = session.vim.service_content.searchIndex
    found = session.invoke_api(session.vim, "FindAllByUuid", index, uuid=instance_uuid,
                               vmSearch=True, instanceUuid=True) or []
    if len(found) > 1:
        raise exceptions.VSphereError(
            f"{len(found)} VMs claim instance {instance_uuid} (config.instanceUuid); "
            "remove the stray one before acting on it")
    return ref_value(found[0]) if found else None


def datastore_of(ctx: VSphere, vm_id: str) -> dict:
    """The datastore holding the VM's configuration (where nova placed it)."""
    session = ctx.session
    refs = session.invoke_api(vim_util, "get_object_property", session.vim,
                              ref(vm_id, "VirtualMachine"), "datastore")
    values = [vim_util.get_moref_value(r)
              for r in getattr(refs, "ManagedObjectReference", None) or []]
    if not values:
        raise exceptions.VSphereError(f"VM {vm_id} is on no datastore")
    for ds in inventory.datastores(session):
        if ds.moref == values[0]:
            return {"name": ds.name, "moref": ds.moref, "type": ds.type}
    raise exceptions.VSphereError(f"datastore {values[0]} of VM {vm_id} is not in the inventory")


def datastore_type(ctx: VSphere, datastore) -> str | None:
    """summary.type of a datastore given as a reference (as nova holds it) or its id."""
    moref = datastore if isinstance(datastore, str) else ref_value(datastore)
    for ds in inventory.datastores(ctx.session):
        if ds.moref == moref:
            return ds.type
    return None
