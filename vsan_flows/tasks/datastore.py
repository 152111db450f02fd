"""Choosing where the image cache and the instance disk live."""

from __future__ import annotations

from taskflow import task

from vsan_flows import exceptions
from vsan_flows.tasks.shadow_vm import cache_vm_name
from vsan_flows.vsphere import imports, instances, placement


class PickVsanDatastore(task.Task):
    """Pick an allowed, accessible datastore with room for the image's virtual size.

    A datastore that already caches this image wins when it qualifies: the spawn then imports
    nothing. Otherwise the one with the most free space. Nothing is created, so there is
    nothing to revert; the choice is persisted, so a resumed flow keeps it.
    """

    default_provides = "datastore"

    def execute(self, vsphere, policy, image: dict) -> dict:
        candidates = imports.list_datastores(vsphere)
        rules = {"allowed_types": policy.datastore_types,
                 "name_regex": policy.datastore_regex,
                 "required_bytes": image["virtual_size"]}
        cached = set(instances.names_with_prefix(vsphere, cache_vm_name(image["id"], "")))
        warm = [d for d in candidates if cache_vm_name(image["id"], d.moref) in cached]
        chosen = None
        if warm:
            try:
                chosen, _ = placement.choose_datastore(warm, **rules)
            except exceptions.NoSuitableDatastore:
                chosen = None
        if chosen is None:
            chosen, _ = placement.choose_datastore(candidates, **rules)
        return {"name": chosen.name, "moref": chosen.moref, "type": chosen.type}
