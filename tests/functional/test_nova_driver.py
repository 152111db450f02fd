"""Our compute driver inside nova: nova's driver API with real nova objects, on the simulator.

nova 34.0.0 is imported for real: its CONF (our options registered beside [vmware]), its
objects (Instance, Flavor, ImageMeta), its driver loader ([DEFAULT] compute_driver by dotted
path), its VMware driver code building the VM and its own lookups (get_info, list_instances,
destroy, power_off) finding the VMs our flows made. Under native threads in this process and
under eventlet monkey-patching in a child process. Glance is the session's glance-api
(tests/functional/glance_api.py: one worker, so a download nova or we leave open would stall
the next request).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional import nova_scenario
from vsan_flows.simulator import disks

MiB = 1024 * 1024
GiB = 1024 * MiB
HOST = "compute-vsan-1"
CACHE_VMS = "vsanflows-image-*"


@pytest.fixture(scope="module")
def nova_setup(simulator, glance_api, tmp_path_factory):
    work = tmp_path_factory.mktemp("nova")
    conf_file, sim = nova_scenario.write_nova_conf(work, simulator, glance_api, HOST)
    good = disks.make_stream_optimized(work / "good.vmdk", 64 * MiB, data_mib=4)
    bad = disks.make_monolithic_sparse(work / "sparse.vmdk", 8 * MiB)
    return {"work": work, "sim": sim, "conf_file": conf_file, "good": str(good),
            "bad": str(bad)}


@pytest.fixture(scope="module")
def nova_driver(nova_setup):
    conf, driver = nova_scenario.started_driver(nova_setup["conf_file"])
    yield conf, driver
    driver.cleanup_host(conf.host)


@pytest.fixture
def drop_cache(vsphere, control):
    """The image cache stays by design; remove its entries after the test (before the leak
    check), and fail if an instance still links to one."""
    yield
    from vsan_flows.vsphere import instances

    for vm in control.status()["vms"]:
        if vm["name"].startswith("vsanflows-image-"):
            instances.destroy_by_name(vsphere, vm["name"])


def _cache_disks(control) -> set[str]:
    """The base disks of the image-cache entries (shadow VMs) on the simulator."""
    return {d["file"] for vm in control.status()["vms"]
            if vm["name"].startswith("vsanflows-image-") for d in vm["disks"]}


def _check(facts: dict, cache_disks: set[str]) -> None:
    first, second = facts["first"], facts["second"]
    # nova's identity on a VM our flow gave its disk; nova's own lookups find it.
    assert first["instance_uuid"] == facts["first_uuid"]
    assert first["nvp_vm_uuid"] == facts["first_uuid"]
    assert first["name"] == f"first ({facts['first_uuid']})"
    assert facts["first_state_running"] and facts["listed"]
    assert facts["after_power_off_shutdown"]
    # the flavor, not the image: 256 MB, 2 vCPUs, a 1 GB root disk linked to the cache
    assert (first["memory_mb"], first["vcpus"]) == (256, 2)
    assert first["root_kb"] == GiB // 1024 and first["root_bytes"] == GiB
    assert first["root_parent"] in cache_disks
    # the snapshot is a real streamOptimized image, and a second server boots from it
    snap = facts["snapshot"]
    assert snap["status"] == "active" and snap["disktype"] == "streamOptimized"
    assert snap["size"] > 64 * 1024
    assert snap["task_states"] == ["image_pending_upload", "image_uploading"]
    assert second["root_kb"] == 2 * GiB // 1024 and second["root_bytes"] == 2 * GiB
    assert second["root_parent"] in cache_disks
    assert second["root_parent"] != first["root_parent"]  # the snapshot has its own entry
    # nova's destroy removes them
    assert facts["listed_after_destroy"] == []
    assert facts["get_info_after_destroy"] == "InstanceNotFound"
    # a monolithicSparse disk labelled streamOptimized: nova's abort-the-build exception
    assert facts["bad"] == "nova.exception.ImageUnacceptable"
    assert "streamOptimized" in facts["bad_message"] or "sparse" in facts["bad_message"].lower()


def test_driver_is_novas_vmware_driver_loaded_by_dotted_path(nova_driver):
    from nova.virt.vmwareapi.driver import VMwareVCDriver

    conf, driver = nova_driver
    assert conf.compute_driver == nova_scenario.DRIVER
    assert isinstance(driver, VMwareVCDriver)
    assert type(driver).__module__ == "vsan_flows.nova.driver"
    # our options live in our group on nova's CONF; [vmware] stays nova's
    assert conf.vsan_flows.datastore_types == ["vsan"]
    assert conf.vmware.host_ip == "127.0.0.1"


def test_spawn_snapshot_respawn_destroy_native_threads(nova_driver, nova_setup, control,
                                                       drop_cache):
    conf, driver = nova_driver
    facts = nova_scenario.run(driver, Path(nova_setup["good"]), Path(nova_setup["bad"]))
    _check(facts, _cache_disks(control))
    # nothing but the image cache is left: no import VM, no clone, no instance, no lease
    names = sorted(vm["name"] for vm in control.status()["vms"])
    left = [n for n in names if not n.startswith("vsanflows-image-")
            and (n.startswith("vsanflows-") or "(" in n)]
    assert left == []


def test_same_scenario_under_eventlet(nova_setup, control, drop_cache, tmp_path):
    setup = dict(nova_setup, eventlet=True)
    setup.pop("work")
    setup_file = tmp_path / "setup.json"
    setup_file.write_text(json.dumps(setup))
    child = Path(nova_scenario.__file__)
    proc = subprocess.run([sys.executable, str(child), str(setup_file)],
                          capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).resolve().parents[2]))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    facts = json.loads(lines[-1][len("RESULT "):])
    assert facts["eventlet_patched"]
    _check(facts, _cache_disks(control))


def test_sigkill_mid_spawn_then_init_host_reverts_our_flow(nova_driver, nova_setup, control,
                                                           drop_cache, tmp_path):
    """nova-compute killed while the image streams in; the restarted service's init_host
    rolls our flow back (nova marks the instance ERROR at its init_host), nothing leaks."""
    from nova import context as nova_context
    from nova import exception as nova_exc

    from tests.functional import nova_kill

    conf, driver = nova_driver
    info = nova_kill.spawn_and_kill_mid_import(
        {"conf_file": nova_setup["conf_file"], "good": nova_setup["good"]}, control, tmp_path)
    names = [vm["name"] for vm in control.status()["vms"]]
    assert any(n.startswith("vsanflows-import-") for n in names), names  # the half-import

    # the restart: this host's driver (same [DEFAULT] host, same flow store)
    driver.init_host(conf.host)

    status = control.status()
    names = [vm["name"] for vm in status["vms"]]
    assert not [n for n in names if n.startswith(("vsanflows-import-", "vsanflows-image-"))]
    assert not [le for le in status.get("leases") or [] if le.get("state") not in ("done",
                                                                                     "error")]
    # nova's own VM for the instance is nova's to delete (it does when the server is deleted)
    ctx = nova_context.get_admin_context()
    inst = nova_scenario.make_instance(ctx, info["image"], name="crashed",
                                       node=driver.get_available_nodes()[0], host=conf.host)
    inst.uuid = info["uuid"]
    driver.destroy(ctx, inst, [], None, destroy_disks=True)
    with pytest.raises(nova_exc.InstanceNotFound):
        driver.get_info(inst)


def test_snapshot_stops_before_anything_when_update_task_state_raises(nova_driver, nova_setup,
                                                                      control, drop_cache):
    """nova raises from update_task_state when the instance is being deleted meanwhile: the
    snapshot must stop, not run on behind nova's back."""
    from nova import context as nova_context
    from nova import exception as nova_exc
    from nova.image import glance

    conf, driver = nova_driver
    ctx = nova_context.RequestContext(user_id="vsanuser", project_id="vsanproject",
                                      auth_token="test-token", is_admin=True)
    image_id = nova_scenario.add_image(ctx, Path(nova_setup["good"]), "nova-deleting")
    inst = nova_scenario.make_instance(ctx, image_id, name="deleting",
                                       node=driver.get_available_nodes()[0], host=conf.host)
    driver.spawn(ctx, inst, nova_scenario.image_meta(ctx, image_id), [], None, {},
                 network_info=[])
    snap_id = glance.API().create(ctx, {"name": "never"})["id"]
    calls = []

    def update_task_state(**kwargs):
        calls.append(kwargs["task_state"])
        if kwargs["task_state"] == "image_uploading":
            raise nova_exc.UnexpectedDeletingTaskStateError(
                instance_uuid=inst.uuid, expected="image_pending_upload", actual="deleting")

    try:
        with pytest.raises(nova_exc.UnexpectedDeletingTaskStateError):
            driver.snapshot(ctx, inst, snap_id, update_task_state)
        assert calls == ["image_pending_upload", "image_uploading"]
        vms = control.status()["vms"]
        mine = [vm for vm in vms if vm["name"] == f"deleting ({inst.uuid})"]
        assert mine and mine[0]["snapshots"] == 0
        assert not [vm for vm in vms if vm["name"].startswith("vsanflows-export-")]
        assert glance.API().get(ctx, snap_id)["status"] == "queued"  # untouched, nova's to drop
    finally:
        driver.destroy(ctx, inst, [], None, destroy_disks=True)
        glance.API().delete(ctx, snap_id)
