"""nova's manage_image_cache on our image cache (shadow VMs), through our compute driver.

Real nova objects and nova's CONF ([image_cache] options), glance-api, the simulator. The
entries are made by real spawns; "in use" is a real linked instance; the crash is a SIGKILL of a
compute process between the two steps of an eviction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional import nova_scenario
from vsan_flows.simulator import disks

ENTRY = "vsanflows-image-"
EVICTING = "vsanflows-evicting-"
HOST = "compute-vsan-cache"


@pytest.fixture(scope="module")
def nova_setup(simulator, glance_api, tmp_path_factory):
    work = tmp_path_factory.mktemp("nova-cache")
    conf_file, _sim = nova_scenario.write_nova_conf(work, simulator, glance_api, HOST)
    good = disks.make_stream_optimized(work / "good.vmdk", 64 * 1024 * 1024, data_mib=2)
    return {"conf_file": conf_file, "good": str(good)}


@pytest.fixture(scope="module")
def nova_driver(nova_setup):
    conf, driver = nova_scenario.started_driver(nova_setup["conf_file"])
    yield conf, driver
    driver.cleanup_host(conf.host)


@pytest.fixture
def clean_cache(vsphere, control):
    """Entries stay by design: drop what a test left (before the leak check)."""
    yield
    from vsan_flows.vsphere import instances

    for vm in control.status()["vms"]:
        if vm["name"].startswith((ENTRY, EVICTING)):
            instances.destroy_by_name(vsphere, vm["name"])


def _ctx():
    from nova import context as nova_context

    return nova_context.RequestContext(user_id="vsanuser", project_id="vsanproject",
                                       auth_token="test-token", is_admin=True)


def _entries(control) -> dict[str, dict]:
    return {vm["name"]: vm for vm in control.status()["vms"]
            if vm["name"].startswith((ENTRY, EVICTING))}


def _entry_of(control, image_id: str) -> dict | None:
    found = [vm for name, vm in _entries(control).items() if image_id in name]
    assert len(found) <= 1, found
    return found[0] if found else None


def _spawn(driver, conf, ctx, image_id: str, name: str):
    inst = nova_scenario.make_instance(ctx, image_id, name=name,
                                       node=driver.get_available_nodes()[0], host=conf.host)
    driver.spawn(ctx, inst, nova_scenario.image_meta(ctx, image_id), [], None, {},
                 network_info=[])
    return inst


def _used_and_idle(driver, conf, ctx, nova_setup, prefix: str):
    """Two cache entries: one an instance links to, one whose instance was destroyed."""
    good = Path(nova_setup["good"])
    used_img = nova_scenario.add_image(ctx, good, f"{prefix}-used")
    idle_img = nova_scenario.add_image(ctx, good, f"{prefix}-idle")
    used = _spawn(driver, conf, ctx, used_img, f"{prefix}-user")
    gone = _spawn(driver, conf, ctx, idle_img, f"{prefix}-gone")
    driver.destroy(ctx, gone, [], None, destroy_disks=True)
    # nova's destroy logs and goes on when vCenter refuses: a VM left here would (rightly)
    # keep its entry in use, so say so rather than fail on the entry below
    assert not driver.instance_exists(gone), "nova's destroy left the instance's VM"
    return used, used_img, idle_img


def _annotation(vsphere, name: str) -> str:
    from vsan_flows.vsphere import instances

    return instances.annotation(vsphere, instances.find(vsphere, name))


# nova's own half of manage_image_cache reads every instance's block devices from nova's
# database, which a driver without nova's services does not have: these tests run our half
# (age_vsan_image_cache, which manage_image_cache calls after nova's). The whole periodic pass,
# with nova's database and its instance list, runs in test_nova_rest_api.py.


def test_unused_entry_evicted_after_min_age_entry_in_use_untouched(nova_driver, nova_setup,
                                                                  vsphere, control,
                                                                  clean_cache):
    conf, driver = nova_driver
    ctx = _ctx()
    used, used_img, idle_img = _used_and_idle(driver, conf, ctx, nova_setup, "cache")
    used_entry = _entry_of(control, used_img)
    idle_entry = _entry_of(control, idle_img)
    assert used_entry and idle_entry
    used_before = _annotation(vsphere, used_entry["name"])
    try:
        # nova's defaults: aging on, 24 h minimum. The first pass only marks the idle entry.
        conf.set_override("remove_unused_original_minimum_age_seconds", 3600, "image_cache")
        driver.age_vsan_image_cache([])
        assert _entry_of(control, idle_img)["name"] == idle_entry["name"]
        assert " unused-since=" in _annotation(vsphere, idle_entry["name"])
        # aging switched off: nothing is evicted whatever its age
        conf.set_override("remove_unused_original_minimum_age_seconds", 0, "image_cache")
        conf.set_override("remove_unused_base_images", False, "image_cache")
        driver.age_vsan_image_cache([])
        assert _entry_of(control, idle_img) is not None
        # past the minimum age: evicted, its files gone; the one in use is untouched
        conf.set_override("remove_unused_base_images", True, "image_cache")
        driver.age_vsan_image_cache([])
        assert _entry_of(control, idle_img) is None
        files = [f["path"] if isinstance(f, dict) else f for f in control.files()]
        assert not [f for f in files if idle_entry["disks"][0]["file"].split("] ")[-1] in f]
        after = _entry_of(control, used_img)
        assert after["name"] == used_entry["name"]
        assert after["disks"] == used_entry["disks"]
        assert _annotation(vsphere, used_entry["name"]) == used_before
        assert driver.get_info(used).state == 1  # RUNNING, its root disk still reads the base
        # the instance in use goes; its entry is then marked and evicted like any other
        driver.destroy(ctx, used, [], None, destroy_disks=True)
        assert not driver.instance_exists(used), "nova's destroy left the instance's VM"
        driver.age_vsan_image_cache([])
        assert _entry_of(control, used_img) is None
    finally:
        conf.clear_override("remove_unused_original_minimum_age_seconds", "image_cache")
        conf.clear_override("remove_unused_base_images", "image_cache")
        driver.destroy(ctx, used, [], None, destroy_disks=True)


def test_entry_of_an_instance_still_building_is_kept(nova_driver, nova_setup, control,
                                                     clean_cache):
    """nova hands the pass its live instances: one still building from an image (not linked
    yet) keeps that image's entry (our part of the pass, given nova's instance objects)."""
    from nova import objects

    conf, driver = nova_driver
    ctx = _ctx()
    img = nova_scenario.add_image(ctx, Path(nova_setup["good"]), "cache-building")
    inst = _spawn(driver, conf, ctx, img, "cache-building")
    driver.destroy(ctx, inst, [], None, destroy_disks=True)
    building = objects.Instance(uuid=inst.uuid, image_ref=img, vm_state="building")
    conf.set_override("remove_unused_original_minimum_age_seconds", 0, "image_cache")
    try:
        driver.age_vsan_image_cache([building])
        assert _entry_of(control, img) is not None
        driver.age_vsan_image_cache([])
        assert _entry_of(control, img) is None
    finally:
        conf.clear_override("remove_unused_original_minimum_age_seconds", "image_cache")


def test_crash_mid_eviction_loses_nothing(nova_driver, nova_setup, control, tmp_path,
                                          clean_cache):
    """A compute process SIGKILLed between renaming an entry out of the cache and destroying
    it: the entry in use is untouched, the next pass finishes the eviction, spawns still work."""
    conf, driver = nova_driver
    ctx = _ctx()
    used, used_img, idle_img = _used_and_idle(driver, conf, ctx, nova_setup, "crash")
    used_entry = _entry_of(control, used_img)
    try:
        setup = {"conf_file": nova_setup["conf_file"]}
        setup_file = tmp_path / "setup.json"
        setup_file.write_text(json.dumps(setup))
        child = Path(__file__).with_name("nova_cache_child.py")
        proc = subprocess.run([sys.executable, str(child), str(setup_file)],
                              capture_output=True, text=True, timeout=600,
                              cwd=str(Path(__file__).resolve().parents[2]))
        assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
        assert "KILLED-MID-EVICTION" in proc.stdout
        # the idle entry is out of the cache (renamed) but not yet destroyed
        half = _entry_of(control, idle_img)
        assert half is not None and half["name"].startswith(EVICTING)
        assert _entry_of(control, used_img) == used_entry
        # the restarted service's next pass finishes it; the entry in use stays
        driver.age_vsan_image_cache([])
        assert _entry_of(control, idle_img) is None
        assert _entry_of(control, used_img) == used_entry
        # the evicted image still spawns (a fresh import), the cached one still links
        again = _spawn(driver, conf, ctx, idle_img, "crash-again")
        assert _entry_of(control, idle_img)["name"].startswith(ENTRY)
        driver.destroy(ctx, again, [], None, destroy_disks=True)
    finally:
        driver.destroy(ctx, used, [], None, destroy_disks=True)


def test_nova_spawn_whose_entry_another_host_evicts_before_the_attach_succeeds(
        nova_driver, nova_setup, vsphere, control, tmp_path, monkeypatch, clean_cache):
    """Another compute host's pass (its own import locks, its own instances: none of this
    image) evicts the entry right after this host's spawn found it and before the spawn
    attaches the root disk to it: nova's spawn still succeeds, on a fresh import."""
    conf, driver = nova_driver
    ctx = _ctx()
    img = nova_scenario.add_image(ctx, Path(nova_setup["good"]), "cache-race")
    imports = control.calls("ImportVApp")
    # nova puts each VM on the vSAN datastore with the most free space: both spawns on one.
    control.set_datastore("vsanDatastore-2", free_space=800 * 1024**3)
    try:
        first = _spawn(driver, conf, ctx, img, "cache-race-first")
        driver.destroy(ctx, first, [], None, destroy_disks=True)
        old = _entry_of(control, img)
        _race(driver, conf, ctx, img, old, imports, vsphere, control, tmp_path, monkeypatch)
    finally:
        control.set_datastore("vsanDatastore-2", free_space=900 * 1024**3)


def _race(driver, conf, ctx, img, old, imports, vsphere, control, tmp_path, monkeypatch):
    from taskflow import states

    from vsan_flows.imagelocks import ImageLocks
    from vsan_flows.nova import cache_aging
    from vsan_flows.runtime import runner

    evicted: list[dict] = []

    def evict_after_lookup(engine):
        def on_event(state, details):
            if state == states.SUCCESS and details.get("task_name") == "LookupImageCache" \
                    and details.get("result") and not evicted:
                evicted.append(cache_aging.age(
                    vsphere, ImageLocks(str(tmp_path / "other-host-locks")), [],
                    enabled=True, min_age_s=0))

        class _Registered:
            def __enter__(self):
                engine.atom_notifier.register("*", on_event)

            def __exit__(self, *exc):
                engine.atom_notifier.deregister("*", on_event)

        return _Registered()

    real_run = runner.run

    def run_with_eviction(plan, transients, **kw):  # the driver's own flow, one listener more
        return real_run(plan, transients, **{**kw, "listeners": (evict_after_lookup,)})

    monkeypatch.setattr(runner, "run", run_with_eviction)
    second = _spawn(driver, conf, ctx, img, "cache-race-second")
    monkeypatch.undo()
    try:
        assert evicted and old["name"] in evicted[0]["evicted"], evicted
        new = _entry_of(control, img)
        assert new["name"] == old["name"] and new["moref"] != old["moref"]
        assert control.calls("ImportVApp") - imports == 2
        facts = nova_scenario.vm_facts(driver, second)
        assert facts["root_parent"] == new["disks"][0]["file"], facts
        assert not [n for n in _entries(control) if n.startswith(EVICTING)]
    finally:
        driver.destroy(ctx, second, [], None, destroy_disks=True)
