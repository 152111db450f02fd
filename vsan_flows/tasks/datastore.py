"""Choosing where the image cache and the instance disk live."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions, imagecache
from vsan_flows.vsphere import imports, instances, placement

LOG = logging.getLogger(__name__)


class PickVsanDatastore(task.Task):
    """Pick an allowed, accessible datastore with room for the image's virtual size.

    A datastore that already caches this image wins when it qualifies: the spawn then imports
    nothing. Otherwise the one with the most free space. Nothing is created; the choice is
    persisted, so a resumed flow keeps it.

    When no datastore caches the image this flow may import it, so it takes the image's import
    lock (held until the import is the cache entry, or released by LookupImageCache on a hit)
    and chooses again: a spawn that held the lock may just have cached the image, and every
    spawn waiting here then links to that one import instead of importing on the datastore
    with the most free space.
    """

    default_provides = "datastore"

    def execute(self, vsphere, policy, image_locks, image: dict, flow_token: str) -> dict:
        chosen, warm = self._choose(vsphere, policy, image)
        if not warm:
            image_locks.hold(image["id"], flow_token)
            chosen, warm = self._choose(vsphere, policy, image)
        LOG.info("image %s goes to datastore %s (%s)%s", image["id"], chosen.name, chosen.type,
                 " where it is cached" if warm else "")
        return {"name": chosen.name, "moref": chosen.moref, "type": chosen.type}

    def revert(self, image_locks, image: dict, flow_token: str, **kwargs) -> None:
        image_locks.release(image["id"], flow_token)

    @staticmethod
    def _choose(vsphere, policy, image: dict):
        candidates = imports.list_datastores(vsphere)
        rules = {"allowed_types": policy.datastore_types,
                 "name_regex": policy.datastore_regex,
                 "required_bytes": image["virtual_size"]}
        cached = set(instances.names_with_prefix(vsphere, imagecache.name_prefix(image["id"])))
        warm = [d for d in candidates if imagecache.vm_name(image["id"], d.moref) in cached]
        chosen = None
        if warm:
            try:
                chosen, _ = placement.choose_datastore(warm, **rules)
            except exceptions.NoSuitableDatastore:
                chosen = None
        if chosen is None:
            chosen, rejected = placement.choose_datastore(candidates, **rules)
            for name, reasons in rejected:
                LOG.info("image %s: datastore %s not used: %s", image["id"], name, reasons)
        return chosen, chosen in warm
