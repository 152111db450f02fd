"""Choosing where the image cache and the instance disk live."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions, imagecache
from vsan_flows.vsphere import imports, instances, placement

LOG = logging.getLogger(__name__)

#: In PickVsanDatastore's result: it found no cache entry on the datastore, under the lock.
NO_ENTRY_UNDER_LOCK = "no_entry_under_lock"


class PickVsanDatastore(task.Task):
    """Pick an allowed, accessible datastore with room for the image's virtual size.

    A datastore that already caches this image wins when it qualifies: the spawn then imports
    nothing. Otherwise the one with the most free space. Nothing is created; the choice is
    persisted, so a resumed flow keeps it.

    When no datastore caches the image this flow may import it, so it takes the image's import
    lock (held until the import is the cache entry) and chooses again under it: a spawn that
    held the lock may just have cached the image. When another flow holds the lock, this one
    waits for it to be free *without taking it* and then chooses: every spawn queued behind
    one import of a new image looks at the cache at once and links to that import (a burst of
    N spawns passed the lock one at a time before), and only a flow that still finds no entry
    (the import failed) takes the lock to import.
    """

    default_provides = "datastore"

    def execute(self, vsphere, policy, image_locks, image: dict, flow_token: str) -> dict:
        candidates = imports.list_datastores(vsphere)
        chosen, warm = self._choose(vsphere, policy, image, candidates)
        if not warm:
            chosen, warm = self._choose_locked(vsphere, policy, image_locks, image, flow_token,
                                               candidates)
        LOG.info("image %s goes to datastore %s (%s)%s", image["id"], chosen.name, chosen.type,
                 " where it is cached" if warm else "")
        result = {"name": chosen.name, "moref": chosen.moref, "type": chosen.type}
        if not warm:
            # The cache entries were just read under the image lock, which this flow keeps
            # until its import is the entry: none is on this datastore, and none can appear
            # while the lock is held (only RegisterShadowVM makes one, under it).
            # LookupImageCache trusts this only while this very run holds the lock.
            result[NO_ENTRY_UNDER_LOCK] = True
        return result

    def _choose_locked(self, vsphere, policy, image_locks, image: dict, flow_token: str,
                       candidates: list):
        image_id = image["id"]
        if not image_locks.hold(image_id, flow_token, blocking=False):
            image_locks.wait_free(image_id, flow_token)
            # What we waited for was most likely an import: free space has moved since.
            candidates = imports.list_datastores(vsphere)
            chosen, warm = self._choose(vsphere, policy, image, candidates)
            if warm:
                return chosen, warm
            image_locks.hold(image_id, flow_token)
        # A flow may have cached the image between our look and the lock. In that instant
        # only the cache entries can have changed (an import takes seconds): their names are
        # read again, not the datastores (three vCenter reads fewer per cold spawn).
        chosen, warm = self._choose(vsphere, policy, image, candidates)
        if warm:  # cached meanwhile: nothing to import, nothing to hold
            image_locks.release(image_id, flow_token)
        return chosen, warm

    def revert(self, image_locks, image: dict, flow_token: str, **kwargs) -> None:
        image_locks.release(image["id"], flow_token)

    @staticmethod
    def _choose(vsphere, policy, image: dict, candidates: list):
        """The datastore among ``candidates`` (with what vCenter said of them), and whether it
        caches the image (cache entries looked up now)."""
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
