"""Reads of the vCenter inventory through the property collector (no writes here)."""

from __future__ import annotations

from oslo_vmware import vim_util

from vsan_flows import exceptions
from vsan_flows.vsphere.placement import DatastoreInfo

_DS_PROPS = ["summary.name", "summary.type", "summary.freeSpace", "summary.capacity",
             "summary.accessible", "summary.maintenanceMode"]


def _collect(session, type_: str, props: list[str], root=None) -> list[tuple[object, dict]]:
    result = []
    retrieve = session.invoke_api(vim_util, "get_objects", session.vim, type_, 100, props)
    with vim_util.WithRetrieval(session.vim, retrieve) as objects:
        for obj in objects:
            values = {p.name: p.val for p in getattr(obj, "propSet", []) or []}
            result.append((obj.obj, values))
    return result


def datastores(session, cluster=None) -> list[DatastoreInfo]:
    """Every datastore (of ``cluster`` when given) with what placement needs to judge it."""
    allowed = None
    if cluster is not None:
        refs = session.invoke_api(vim_util, "get_object_property", session.vim, cluster,
                                  "datastore")
        allowed = {vim_util.get_moref_value(r) for r in getattr(refs, "ManagedObjectReference",
                                                                 []) or []}
    found = []
    for ref, v in _collect(session, "Datastore", _DS_PROPS):
        moref = vim_util.get_moref_value(ref)
        if allowed is not None and moref not in allowed:
            continue
        found.append(DatastoreInfo(
            name=v.get("summary.name"), moref=moref, type=v.get("summary.type"),
            free_space=int(v.get("summary.freeSpace") or 0),
            capacity=int(v.get("summary.capacity") or 0),
            accessible=bool(v.get("summary.accessible")),
            maintenance_mode=v.get("summary.maintenanceMode") or "normal",
        ))
    return sorted(found, key=lambda d: d.name)


def cluster_by_name(session, name: str | None):
    """The named cluster, or the only one when no name is configured.

    Guessing among several clusters would place disks somewhere the operator did not choose,
    so that is a configuration error naming the candidates.
    """
    clusters = _collect(session, "ClusterComputeResource", ["name"])
    names = sorted(str(c[1].get("name")) for c in clusters)
    if name:
        clusters = [c for c in clusters if c[1].get("name") == name]
        if not clusters:
            raise exceptions.ConfigError(
                "[vmware] cluster_name", f"vCenter has no cluster called {name!r}",
                f"Set it to one of: {', '.join(names) or '(none)'}.")
    elif len(clusters) > 1:
        raise exceptions.ConfigError(
            "[vmware] cluster_name", "is not set and vCenter has several clusters",
            f"Set it to one of: {', '.join(names)}.")
    if not clusters:
        raise exceptions.ConfigError("[vmware] cluster_name", "vCenter has no cluster",
                                     "Add the compute hosts to a cluster.")
    return clusters[0][0]


def resource_pool(session, cluster):
    return session.invoke_api(vim_util, "get_object_property", session.vim, cluster,
                              "resourcePool")


def vm_folder(session, cluster):
    """The VM folder of the datacenter that holds ``cluster``."""
    ref = cluster
    while vim_util.get_moref_type(ref) != "Datacenter":
        ref = session.invoke_api(vim_util, "get_object_property", session.vim, ref, "parent")
    return session.invoke_api(vim_util, "get_object_property", session.vim, ref, "vmFolder")
