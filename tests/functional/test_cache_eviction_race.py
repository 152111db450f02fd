"""A spawn whose image-cache entry is evicted between its lookup and its link still succeeds.

Another host's image-cache pass (vsan_flows.nova.cache_aging, the code nova's periodic task
runs, with that host's own import locks) may evict an entry that a spawn here has just found:
the spawn is parked right after LookupImageCache found the entry, the entry is evicted for
real, and the spawn goes on. It must undo its failed link, look the cache up again, import
the image anew and link to the new entry, leaving nothing behind. A link that fails for any
other reason must fail as before, without importing again. Simulator call counts (ImportVApp,
CreateVM_Task) prove what ran.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import pytest

from tests.functional import watchdog
from vsan_flows import api, exceptions, imagecache
from vsan_flows.imagelocks import ImageLocks
from vsan_flows.nova import cache_aging
from vsan_flows.simulator import disks

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "evict.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=4)
    return path


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _vms(control) -> dict[str, dict]:
    return {vm["name"]: vm for vm in control.status()["vms"]}


def _cached_then_idle(sim_conf, vsphere, images, small_vmdk, destroy_after):
    """An image with a cache entry that no instance uses any more (evictable at once)."""
    image_id = images.add_file(small_vmdk, name=small_vmdk.name)
    first = _name("evict-first")
    destroy_after.append(first)
    result = api.spawn(sim_conf, first, image_id, vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])
    from vsan_flows.vsphere import instances

    assert instances.destroy_by_name(vsphere, first)
    return image_id, result["shadow_vm"]


def _park_after(atom: str, parked: threading.Event, go_on: threading.Event):
    """A listener factory: the flow's engine blocks once when ``atom`` has succeeded (so the
    next step has not started), says so, and goes on when the test lets it."""
    from taskflow import states

    seen: list[str] = []

    @contextmanager
    def listener(engine):
        def on_event(state, details):
            if state == states.SUCCESS and details.get("task_name") == atom and not seen:
                seen.append(atom)
                parked.set()
                go_on.wait()

        engine.atom_notifier.register("*", on_event)
        try:
            yield
        finally:
            engine.atom_notifier.deregister("*", on_event)

    return listener


def test_spawn_whose_entry_is_evicted_before_the_link_imports_again_and_succeeds(
        sim_conf, vsphere, images, control, small_vmdk, destroy_after, tmp_path):
    imports_before = control.calls("ImportVApp")
    image_id, old_entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk,
                                            destroy_after)
    name = _name("evict-inst")
    destroy_after.insert(0, name)
    parked, go_on = threading.Event(), threading.Event()
    outcome: dict = {}

    def spawn():
        try:
            outcome["result"] = api.spawn(
                sim_conf, name, image_id, vsphere=vsphere, images=images,
                listeners=(_park_after("LookupImageCache", parked, go_on),))
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc

    spawning = threading.Thread(target=spawn, name="spawn-evicted", daemon=True)
    spawning.start()
    try:
        while not parked.wait(0.1):
            assert spawning.is_alive(), f"the spawn ended before it parked: {outcome}"
        # The spawn has found the entry and not linked yet. Another host (its own import
        # locks) runs its image-cache pass with aging on and no minimum age: the entry is
        # unused (no disk links to it, that host builds nothing from the image) and goes.
        other_host = ImageLocks(str(tmp_path / "other-host-locks"))
        done = cache_aging.age(vsphere, other_host, [], enabled=True, min_age_s=0)
        assert old_entry["name"] in done["evicted"], done
        assert old_entry["name"] not in _vms(control)
    finally:
        go_on.set()
    watchdog.join_all([spawning], 300, "the spawn whose cache entry was evicted")

    assert "error" not in outcome, f"the spawn failed: {outcome['error']!r}"
    result = outcome["result"]
    # It found no entry on its second look, imported the image again and linked to that.
    assert control.calls("ImportVApp") - imports_before == 2
    new_entry = result["shadow_vm"]
    assert new_entry["name"] == old_entry["name"] == imagecache.vm_name(
        image_id, result["datastore"]["moref"])
    assert new_entry["vm"] != old_entry["vm"]
    vms = _vms(control)
    assert vms[name]["disks"][0]["parent"] == vms[new_entry["name"]]["disks"][0]["file"]
    # A working linked clone: the instance reads the image's data through the new entry.
    seen = tmp_path / "instance.raw"
    seen.write_bytes(control.guest_read(name))
    assert disks.images_identical(seen, small_vmdk)
    # Nothing of the failed attempt or the eviction is left (the leak check adds files).
    assert not [n for n in vms if n.startswith((cache_aging.EVICTING_PREFIX,
                                                "vsanflows-import-"))]
    assert [n for n in vms if n.startswith(imagecache.name_prefix(image_id))] == \
        [new_entry["name"]]
    assert not [le for le in control.status()["leases"]
                if le["state"] in ("initializing", "ready")]


def test_spawn_whose_entry_was_renamed_evicting_before_the_link_does_not_keep_that_link(
        sim_conf, vsphere, images, control, small_vmdk, destroy_after, tmp_path):
    """Eviction's first step renames the entry ``vsanflows-evicting-...``; its disk is still
    there, so vCenter lets a spawn that found the entry before the rename link to it. That
    link must not stand (the eviction destroys the VM next): the spawn sees the rename when it
    checks its link, removes it, imports anew and links to the new entry. Here the eviction
    stopped after its first step (as when its process dies there); the next pass finishes it."""
    from vsan_flows.vsphere import instances

    imports_before = control.calls("ImportVApp")
    image_id, old_entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk,
                                            destroy_after)
    evicting = cache_aging.EVICTING_PREFIX + old_entry["name"][len(cache_aging.CACHE_PREFIX):]
    destroy_after.append(evicting)
    name = _name("evict-renamed")
    destroy_after.insert(0, name)

    @contextmanager
    def rename_after_lookup(engine):
        from taskflow import states

        def on_event(state, details):
            if state == states.SUCCESS and details.get("task_name") == "LookupImageCache" \
                    and instances.find(vsphere, old_entry["name"]):
                vm_id = instances.find(vsphere, old_entry["name"])
                instances.rename(vsphere, vm_id, evicting, instances.annotation(vsphere, vm_id))

        engine.atom_notifier.register("*", on_event)
        yield

    creates = control.calls("CreateVM_Task")
    result = api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images,
                       listeners=(rename_after_lookup,))
    assert control.calls("CreateVM_Task") - creates == 2  # the link to the renamed entry, undone
    assert control.calls("ImportVApp") - imports_before == 2
    vms = _vms(control)
    assert result["shadow_vm"]["name"] == old_entry["name"]
    assert vms[name]["disks"][0]["parent"] == vms[old_entry["name"]]["disks"][0]["file"]
    assert vms[evicting]["moref"] == old_entry["vm"]  # nothing reads it: the next pass ends it
    done = cache_aging.age(vsphere, ImageLocks(str(tmp_path / "other-host-locks")), [],
                           enabled=False, min_age_s=0)
    assert evicting in done["evicted"], done
    seen = tmp_path / "instance.raw"
    seen.write_bytes(control.guest_read(name))
    assert disks.images_identical(seen, small_vmdk)


def test_link_refused_for_another_reason_fails_without_importing_again(
        sim_conf, vsphere, images, control, small_vmdk, destroy_after):
    image_id, entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk, destroy_after)
    imports, creates = control.calls("ImportVApp"), control.calls("CreateVM_Task")
    name = _name("evict-nospace")
    destroy_after.insert(0, name)
    control.fail_method("CreateVM_Task", "NoDiskSpace", in_task=True,
                        message="no room for the instance's delta disk")
    with pytest.raises(exceptions.VSphereError) as err:
        api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images)
    assert not isinstance(err.value, exceptions.CacheEntryGone)
    assert "no room for the instance's delta disk" in str(err.value)
    # One link tried, nothing imported, the cache entry kept (it was not the cause).
    assert control.calls("CreateVM_Task") - creates == 1
    assert control.calls("ImportVApp") == imports
    vms = _vms(control)
    assert name not in vms
    assert vms[entry["name"]]["moref"] == entry["vm"]


def test_link_to_an_entry_that_keeps_vanishing_gives_up_with_a_clear_error(
        sim_conf, vsphere, images, control, small_vmdk, destroy_after):
    """Bounded: every link fails because the entry is gone (here: a person deletes each new
    entry before the link). Three links, three imports, then CacheEntryGone; nothing left."""
    from taskflow import states

    from vsan_flows.vsphere import instances

    image_id = images.add_file(small_vmdk, name=small_vmdk.name)
    imports, creates = control.calls("ImportVApp"), control.calls("CreateVM_Task")
    name = _name("evict-always")
    destroy_after.insert(0, name)

    @contextmanager
    def delete_entry_before_link(engine):
        def on_event(state, details):
            if state == states.SUCCESS and details.get("task_name") == "RegisterShadowVM":
                entry = details.get("result") or {}
                assert instances.destroy_by_name(vsphere, entry["name"])

        engine.atom_notifier.register("*", on_event)
        yield

    with pytest.raises(exceptions.CacheEntryGone) as err:
        api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images,
                  listeners=(delete_entry_before_link,))
    assert "was destroyed" in str(err.value) and "retry the spawn" in str(err.value)
    assert control.calls("ImportVApp") - imports == 3
    assert control.calls("CreateVM_Task") - creates == 3
    assert not [n for n in _vms(control) if n.startswith(imagecache.name_prefix(image_id))]


# ------------------------------------------------------------------- killed while recovering
# The spawn runs in a child process that evicts its own cache entry right after the lookup
# (as another host's pass would) and SIGKILLs itself on cue; a restarted service resumes (or
# reverts) the flow. "CloneLinkedDisk:before": the link to the evicted entry has not run yet;
# "call:CreateVM_Task": vCenter refused that link (FileNotFound), nothing of it was saved;
# "call:ImportVApp": the retry was importing the image anew.
RETRY_CUES = ["CloneLinkedDisk:before", "call:CreateVM_Task", "call:ImportVApp"]


def _killed_child(simulator, wsdl_url, tmp_path, images, instance, image_id, cue) -> str:
    import json
    import subprocess
    import sys
    from pathlib import Path

    db_url = f"sqlite:///{tmp_path}/flows.sqlite"
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(tmp_path / "state"), "db_url": db_url, "op": "spawn",
            "instance": instance, "image_id": image_id, "cue": cue,
            "images_dir": str(images.directory), "evict_after_lookup": True}
    proc = subprocess.run([sys.executable, "-m", "tests.functional.crash_child",
                           json.dumps(args)], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return db_url


def _restarted_conf(simulator, wsdl_url, tmp_path, db_url):
    from tests.functional.conftest import make_conf

    return make_conf(simulator, wsdl_url, tmp_path / "state",
                     vsan_flows__persistence_connection=db_url, vsan_flows__import_retries=2)


@pytest.mark.parametrize("cue", RETRY_CUES)
def test_spawn_killed_while_recovering_from_an_eviction_resumes_to_a_fresh_entry(
        cue, simulator, wsdl_url, sim_conf, vsphere, images, control, small_vmdk,
        destroy_after, tmp_path):
    imports_before = control.calls("ImportVApp")
    image_id, old_entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk,
                                            destroy_after)
    instance = _name("evict-crash")
    destroy_after.insert(0, instance)
    db_url = _killed_child(simulator, wsdl_url, tmp_path, images, instance, image_id, cue)
    assert old_entry["name"] not in _vms(control)  # the child's eviction ran

    outcomes = api.resume_unfinished(_restarted_conf(simulator, wsdl_url, tmp_path, db_url),
                                     vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["completed"], outcomes
    vms = _vms(control)
    entries = [n for n in vms if n.startswith(imagecache.name_prefix(image_id))]
    assert entries == [old_entry["name"]]
    assert vms[entries[0]]["moref"] != old_entry["vm"]
    assert vms[instance]["disks"][0]["parent"] == vms[entries[0]]["disks"][0]["file"]
    # The first import (made the old entry), the retry's; a second one only when the kill
    # came inside the retry's import (its half-import is destroyed and it starts over).
    assert control.calls("ImportVApp") - imports_before == \
        (3 if cue == "call:ImportVApp" else 2)
    assert not [n for n in vms if n.startswith((cache_aging.EVICTING_PREFIX,
                                                "vsanflows-import-"))]
    assert not [le for le in control.status()["leases"]
                if le["state"] in ("initializing", "ready")]


@pytest.mark.parametrize("cue", ["call:CreateVM_Task", "call:ImportVApp"])
def test_spawn_killed_while_recovering_from_an_eviction_reverts_everything(
        cue, simulator, wsdl_url, sim_conf, vsphere, images, control, small_vmdk,
        destroy_after, tmp_path):
    """Marked "revert on restart": nothing of either attempt stays (no instance, no new
    entry, no half-import, no open lease; the leak check adds the files)."""
    import contextlib

    from vsan_flows.runtime import persistence

    image_id, old_entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk,
                                            destroy_after)
    instance = _name("evict-revert")
    destroy_after.insert(0, instance)
    db_url = _killed_child(simulator, wsdl_url, tmp_path, images, instance, image_id, cue)
    backend = persistence.backend_from_url(db_url)
    with contextlib.closing(backend.get_connection()) as conn:
        for book in conn.get_logbooks():
            book.meta["on_restart"] = "revert"
            conn.save_logbook(book)

    outcomes = api.resume_unfinished(_restarted_conf(simulator, wsdl_url, tmp_path, db_url),
                                     vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["reverted (its flow asks for that)"], outcomes
    vms = _vms(control)
    assert instance not in vms
    assert not [n for n in vms if n.startswith((imagecache.name_prefix(image_id),
                                                cache_aging.EVICTING_PREFIX,
                                                "vsanflows-import-"))]
    assert not [le for le in control.status()["leases"]
                if le["state"] in ("initializing", "ready")]


def test_eviction_keeps_an_entry_linked_to_between_its_look_and_its_rename(
        sim_conf, vsphere, images, control, small_vmdk, destroy_after, tmp_path, monkeypatch):
    """The other side of the race: a spawn (of a host whose lock the evicting host does not
    share) links to the entry after eviction looked at its readers and before the rename. The
    spawn saw the entry's name unchanged after linking, so it keeps its link; eviction must see
    that link when it looks again after the rename, and keep the entry. The spawn is run at
    that instant from inside the eviction's first look under the lock (its reader scan)."""
    image_id, entry = _cached_then_idle(sim_conf, vsphere, images, small_vmdk, destroy_after)
    name = _name("evict-between")
    destroy_after.insert(0, name)
    real_readers = cache_aging._readers
    scans: list[int] = []

    def readers_then_a_spawn_links(vs):
        found = real_readers(vs)
        scans.append(1)
        if len(scans) == 2:  # the look under the lock, before the rename: a spawn links now
            api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images)
        return found

    monkeypatch.setattr(cache_aging, "_readers", readers_then_a_spawn_links)
    done = cache_aging.age(vsphere, ImageLocks(str(tmp_path / "other-host-locks")), [],
                           enabled=True, min_age_s=0)
    monkeypatch.undo()
    assert done["evicted"] == [], done
    assert len(scans) == 3, scans  # pass, under the lock, after the rename
    vms = _vms(control)
    assert vms[entry["name"]]["moref"] == entry["vm"]  # kept, under its own name again
    assert not [n for n in vms if n.startswith(cache_aging.EVICTING_PREFIX)]
    assert vms[name]["disks"][0]["parent"] == vms[entry["name"]]["disks"][0]["file"]
    seen = tmp_path / "instance.raw"
    seen.write_bytes(control.guest_read(name))
    assert disks.images_identical(seen, small_vmdk)
