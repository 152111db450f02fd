"""The image cache: one never-powered-on shadow VM per image per datastore."""

from __future__ import annotations

import logging

from taskflow import task

from vsan_flows import exceptions, imagecache
from vsan_flows.tasks.datastore import NO_ENTRY_UNDER_LOCK
from vsan_flows.vsphere import instances

LOG = logging.getLogger(__name__)


def _entry(vsphere, vm_id: str, name: str, created: bool) -> dict:
    """A cache entry as the flow records it: the shadow VM and its base disk (path and
    capacity, which CloneLinkedDisk needs and then does not read again)."""
    disk = instances.first_disk(vsphere, vm_id)
    return {"vm": vm_id, "name": name, "disk": disk["path"], "capacity_kb": disk["capacity_kb"],
            "created": created}


def _lookup(vsphere, image: dict, datastore: dict) -> dict | None:
    name = imagecache.vm_name(image["id"], datastore["moref"])
    vm_id = instances.find(vsphere, name)
    if vm_id is None:
        return None
    try:
        if not imagecache.is_entry_for(instances.annotation(vsphere, vm_id), image["id"]):
            return None
        return _entry(vsphere, vm_id, name, created=False)
    except Exception:
        # Evicted (or deleted) between the name lookup and reading it: a miss, not a failure.
        if instances.current_name(vsphere, vm_id) != name:
            return None
        raise


def raise_if_gone(vsphere, image: dict, shadow_vm: dict,
                  failure: BaseException | None = None) -> None:
    """Raise CacheEntryGone when ``shadow_vm`` (as the flow recorded it) is no longer the
    image's cache entry: destroyed, renamed (eviction renames it ``vsanflows-evicting-...``
    before destroying it), or, when linking to it just failed with ``failure`` saying a file
    is missing, without its base disk.

    The link steps call it after a failed link (is the entry why?) and after a successful one
    (did the entry go while we linked? eviction renames first and then checks for readers, so
    a link that sees the entry's name unchanged afterwards is one that eviction will see).
    """
    name = instances.current_name(vsphere, shadow_vm["vm"])
    if name is None:
        what = "was destroyed"
    elif name != shadow_vm["name"]:
        what = f"was renamed {name}"
    elif failure is not None and instances.is_missing_file(failure):
        what = f"lost its base disk {shadow_vm['disk']}"
    else:
        return
    LOG.warning("image cache entry %s %s under this flow; it will look the cache up again",
                shadow_vm["name"], what)
    raise exceptions.CacheEntryGone(shadow_vm["name"], image["id"], what) from failure


class LookupImageCache(task.Task):
    """Find a complete cache entry for this image on this datastore, or None.

    Only a VM carrying our cache note counts: a half-import never gets the note, so it can
    never be mistaken for a cached image. On a miss this flow holds the image's import lock
    (taken in PickVsanDatastore, or here if the entry vanished since) until its import is the
    cache entry (RegisterShadowVM): other spawns of the image wait, then find that entry and
    link to it. On a hit it needs no lock.
    """

    default_provides = "cached_shadow"

    def execute(self, vsphere, image_locks, image: dict, datastore: dict,
                flow_token: str) -> dict | None:
        if datastore.get(NO_ENTRY_UNDER_LOCK) and image_locks.holds(image["id"], flow_token):
            # PickVsanDatastore read the entries under the lock this run still holds: a miss
            # then is a miss now (a resumed run holds no lock yet, and looks).
            return None
        found = _lookup(vsphere, image, datastore)
        if found is not None:
            image_locks.release(image["id"], flow_token)
            return found
        if not image_locks.holds(image["id"], flow_token):
            image_locks.hold(image["id"], flow_token)
            found = _lookup(vsphere, image, datastore)  # cached while we waited?
            if found is not None:
                image_locks.release(image["id"], flow_token)
        return found

    def revert(self, image_locks, image: dict, flow_token: str, **kwargs) -> None:
        image_locks.release(image["id"], flow_token)


class RegisterShadowVM(task.Task):
    """Turn the freshly imported VM into the cache entry (rename + note), or reuse the cache.

    Revert removes an entry this flow created, unless an instance already links to it.
    """

    default_provides = "shadow_vm"

    def execute(self, vsphere, image_locks, image: dict, datastore: dict, flow_token: str,
                import_vm_name: str, cached_shadow: dict | None) -> dict:
        if cached_shadow:
            return cached_shadow
        # Find-then-rename under the import lock: two entries with one name cannot happen.
        image_locks.hold(image["id"], flow_token)
        try:
            return self._register(vsphere, image, datastore, flow_token, import_vm_name)
        finally:
            image_locks.release(image["id"], flow_token)

    def _register(self, vsphere, image: dict, datastore: dict, flow_token: str,
                  import_vm_name: str) -> dict:
        # The imported VM is found by its persisted name, not through the import subflow's
        # results: on a cache hit that subflow is skipped and has no results to read.
        name = imagecache.vm_name(image["id"], datastore["moref"])
        existing = instances.find(vsphere, name)
        if existing is not None and imagecache.made_by(instances.annotation(vsphere, existing),
                                                       flow_token):
            # We renamed it already and crashed before our result was saved.
            return _entry(vsphere, existing, name, created=True)
        imported = instances.find(vsphere, import_vm_name)
        if imported is None:
            raise exceptions.VSphereError(
                f"the imported VM {import_vm_name} disappeared before it could be cached; "
                "retry the spawn")
        if existing is not None:
            # Another flow cached the same image meanwhile: keep theirs, drop ours.
            instances.destroy(vsphere, imported)
            return _entry(vsphere, existing, name, created=False)
        instances.rename(vsphere, imported, name, imagecache.note(image, flow_token))
        return _entry(vsphere, imported, name, created=True)

    def revert(self, vsphere, image_locks, image: dict, datastore: dict, flow_token: str,
               result=None, **kwargs) -> None:
        image_locks.release(image["id"], flow_token)
        name = imagecache.vm_name(image["id"], datastore["moref"])
        vm_id = instances.find(vsphere, name)
        if vm_id is None or not imagecache.made_by(instances.annotation(vsphere, vm_id),
                                                   flow_token):
            return  # not ours (or already gone): nothing this flow did to undo
        disk = instances.first_disk(vsphere, vm_id)
        children = instances.linked_children(vsphere, disk["path"])
        if children:
            LOG.info("kept image cache entry %s: %d instance(s) link to it", name,
                     len(children))
            return
        instances.destroy(vsphere, vm_id)
        LOG.info("removed image cache entry %s (created by this flow)", name)
