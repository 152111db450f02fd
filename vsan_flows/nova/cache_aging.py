"""nova's ``manage_image_cache`` for our image cache: evict shadow VMs nobody uses any more.

nova's own VMware image cache ages ``vmware_base`` folders; ours is one shadow VM per image per
datastore (:mod:`vsan_flows.imagecache`), which nova's pass never sees. The rules, nova's:

* An entry is *in use* while any VM's disk chain reaches its base disk (an instance linked to
  it, on whatever host) or a live instance nova hands us was built from its image (a build that
  has looked the entry up but not linked to it yet). An entry in use is never touched; a mark
  it carried is cleared.
* An unused entry is marked ``unused-since=<epoch>`` in its note on the first pass that sees it
  unused (as nova's VMware cache makes a timestamp folder), and evicted once it stayed unused
  for ``[image_cache] remove_unused_original_minimum_age_seconds``. Nothing is evicted while
  ``[image_cache] remove_unused_base_images`` is off.
* Eviction is two steps, each safe to crash after: the entry is first renamed
  ``vsanflows-evicting-...`` under the image's import lock (spawns no longer find it), its
  readers are looked at again (a spawn that found it before the rename and linked since keeps
  it), then it is destroyed. A spawn that found the entry before the rename and links after
  it sees the entry renamed or gone when it checks its link, undoes the link and looks the
  cache up again (flows/retry.CacheEntryRetry). A pass that finds an ``evicting`` VM (a crash
  between the two) destroys it if still nothing links to it, else gives it its name back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from vsan_flows import imagecache
from vsan_flows.vsphere import instances, vm
from vsan_flows.vsphere.session import VSphere

LOG = logging.getLogger(__name__)

CACHE_PREFIX = "vsanflows-image-"  # imagecache.vm_name's
EVICTING_PREFIX = "vsanflows-evicting-"
_MARK = re.compile(r" unused-since=(\d+(?:\.\d+)?)$")
_IMAGE = re.compile(r"image=(\S+) ")


def unused_since(note: str) -> float | None:
    found = _MARK.search(note)
    return float(found.group(1)) if found else None


def _without_mark(note: str) -> str:
    return _MARK.sub("", note)


def _chain(disk) -> Iterable[str]:
    """Every file a virtual disk reads: its own and its parents', nearest first."""
    backing = getattr(disk, "backing", None)
    while backing is not None:
        name = getattr(backing, "fileName", None)
        if name:
            yield name
        backing = getattr(backing, "parent", None)


def _readers(vsphere: VSphere) -> dict[str, set[str]]:
    """disk file -> the names of the VMs whose disk chains read it."""
    readers: dict[str, set[str]] = {}
    for name, disks in vm.all_disks(vsphere.session).items():
        for disk in disks:
            for path in _chain(disk):
                readers.setdefault(path, set()).add(name)
    return readers


def _in_use(vsphere: VSphere, readers: dict[str, set[str]], entry_name: str,
            vm_id: str, note: str, live_images: set[str]) -> bool:
    found = _IMAGE.search(note)
    if found and found.group(1) in live_images:
        return True
    disk = instances.first_disk(vsphere, vm_id)
    return bool(readers.get(disk["path"], set()) - {entry_name})


def age(vsphere: VSphere, image_locks, instances_live: Iterable, *, enabled: bool,
        min_age_s: float, now: float | None = None) -> dict[str, list[str]]:
    """One pass over the cache entries on this vCenter; returns what it did, by entry name.

    ``instances_live`` are nova's instance objects (``all_instances`` of nova's pass): their
    ``image_ref`` keeps an entry of that image in use while they build.
    """
    now = time.time() if now is None else now
    done: dict[str, list[str]] = {"evicted": [], "marked": [], "kept": [], "restored": []}
    live_images = {str(i.image_ref) for i in instances_live if getattr(i, "image_ref", None)}
    readers = _readers(vsphere)
    for name in instances.names_with_prefix(vsphere, EVICTING_PREFIX):
        _finish_eviction(vsphere, readers, name, done)
    for name in instances.names_with_prefix(vsphere, CACHE_PREFIX):
        vm_id = instances.find(vsphere, name)
        if vm_id is None:
            continue
        note = instances.annotation(vsphere, vm_id)
        if not note.startswith(imagecache.NOTE_PREFIX):
            continue  # a VM with our prefix but not our note: not an entry, not ours to age
        if _in_use(vsphere, readers, name, vm_id, note, live_images):
            if unused_since(note) is not None:
                instances.rename(vsphere, vm_id, name, _without_mark(note))
            done["kept"].append(name)
            continue
        if not enabled:
            continue
        since = unused_since(note)
        if since is None:
            since = now
            # Not rounded: a mark rounded up lies in the future, and an entry marked then aged in
            # the same second with a minimum age of 0 was kept (a flaky test found it).
            instances.rename(vsphere, vm_id, name, f"{note} unused-since={since:.3f}")
            done["marked"].append(name)
        if now - since >= min_age_s:
            if _evict(vsphere, image_locks, name, live_images):
                done["evicted"].append(name)
    return done


def _image_of(name: str, note: str) -> str:
    found = _IMAGE.search(note)
    return found.group(1) if found else name


def _evict(vsphere: VSphere, image_locks, name: str, live_images: set[str]) -> bool:
    vm_id = instances.find(vsphere, name)
    if vm_id is None:
        return False
    note = instances.annotation(vsphere, vm_id)
    image_id = _image_of(name, note)
    owner = f"evict-{name}"
    # Under the import lock: no flow of this host registers a new entry of this image while
    # the old one is renamed, and the usage is read again (a spawn may have linked meanwhile).
    image_locks.hold(image_id, owner)
    try:
        if _in_use(vsphere, _readers(vsphere), name, vm_id, note, live_images):
            return False
        gone = EVICTING_PREFIX + name[len(CACHE_PREFIX):]
        instances.rename(vsphere, vm_id, gone, note)
        # A spawn of another host (the lock is this host's) that found the entry before the
        # rename may have linked to it since the look above. Looked at again after the rename:
        # a link made before it is seen here (the entry is kept), and a spawn linking after it
        # sees the new name when it checks its link, undoes it and looks the cache up again.
        if _in_use(vsphere, _readers(vsphere), gone, vm_id, note, live_images):
            # Back to its name, unless another host's spawn made a new entry meanwhile
            # (then it stays ``evicting`` until its readers go: _finish_eviction).
            if instances.find(vsphere, name) is None:
                instances.rename(vsphere, vm_id, name, note)
            LOG.info("kept image cache entry %s: linked to while it was being evicted", name)
            return False
    finally:
        image_locks.release(image_id, owner)
    instances.destroy(vsphere, vm_id)
    LOG.info("evicted image cache entry %s (unused since %s)", name, unused_since(note))
    return True


def _finish_eviction(vsphere: VSphere, readers: dict[str, set[str]], name: str,
                     done: dict[str, list[str]]) -> None:
    vm_id = instances.find(vsphere, name)
    if vm_id is None:
        return
    note = instances.annotation(vsphere, vm_id)
    if not note.startswith(imagecache.NOTE_PREFIX):
        return
    disk = instances.first_disk(vsphere, vm_id)
    if readers.get(disk["path"], set()) - {name}:
        # Something links to it after all: it is not garbage. It becomes the cache entry
        # again unless a newer entry took the name meanwhile (then it waits for its readers).
        back = CACHE_PREFIX + name[len(EVICTING_PREFIX):]
        if instances.find(vsphere, back) is None:
            instances.rename(vsphere, vm_id, back, _without_mark(note))
            done["restored"].append(name)
        return
    instances.destroy(vsphere, vm_id)
    done["evicted"].append(name)
