"""Spawn on vSAN against the simulator: success, the image cache, and every bad input.

Each failing case asserts the error a user sees and, through the autouse leak check, that the
flow rolled back everything it created. Every test runs with the local image store and with a
real glance-api (one worker: a download left open would stall the next request).
"""

from __future__ import annotations

import uuid

import pytest

from vsan_flows import api, exceptions, imagecache
from vsan_flows.glance import GlanceImageService
from vsan_flows.simulator import disks

MiB = 1024 * 1024

pytestmark = pytest.mark.parametrize("images", ["local", "glance"], indirect=True)


def _name(prefix="inst"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def good_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "good.vmdk"
    disks.make_stream_optimized(path, 64 * MiB)
    return path


def _add(images, path, **kw):
    return images.add_file(path, name=path.name, **kw)


def _spawn(sim_conf, vsphere, images, name, image_id, **kw):
    return api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images, **kw)


def test_spawn_links_the_instance_disk_to_the_cached_image(
        sim_conf, vsphere, images, control, good_vmdk, destroy_after, tmp_path):
    image_id = _add(images, good_vmdk)
    name = _name()
    imports_before = control.calls("ImportVApp")
    destroy_after.append(name)
    result = _spawn(sim_conf, vsphere, images, name, image_id)
    destroy_after.append(result["shadow_vm"]["name"])

    assert result["datastore"]["type"] == "vsan"
    status = {vm["name"]: vm for vm in control.status()["vms"]}
    shadow = status[imagecache.vm_name(image_id, result["datastore"]["moref"])]
    instance = status[name]
    assert instance["disks"][0]["parent"] == shadow["disks"][0]["file"]
    assert shadow["power_state"] == "poweredOff"
    assert control.calls("ImportVApp") == imports_before + 1
    stored = tmp_path / "cached.raw"  # every byte landed: the cached disk holds the image
    stored.write_bytes(control.guest_read(shadow["name"]))
    assert disks.images_identical(stored, good_vmdk)

    # A second spawn of the same image imports nothing and links to the same base disk.
    second = _name()
    destroy_after.insert(0, second)
    result2 = _spawn(sim_conf, vsphere, images, second, image_id)
    assert control.calls("ImportVApp") == imports_before + 1
    assert result2["shadow_vm"]["vm"] == result["shadow_vm"]["vm"]
    status = {vm["name"]: vm for vm in control.status()["vms"]}
    assert status[second]["disks"][0]["parent"] == shadow["disks"][0]["file"]


BAD = {
    "monolithicSparse": lambda src, dst: disks.make_monolithic_sparse(dst, 64 * MiB),
    "flat": lambda src, dst: disks.make_flat(dst, 4 * MiB),
    "truncated": lambda src, dst: disks.make_truncated(src, dst, src.stat().st_size // 2),
    "corrupt-header": lambda src, dst: disks.make_corrupt_header(src, dst),
    "raw-renamed": lambda src, dst: disks.make_raw_renamed(dst, 4 * MiB),
    "size-lying": lambda src, dst: disks.make_size_lying(src, dst),
}


# What glance-api 33's format inspector refuses on upload as disk_format=vmdk.
GLANCE_REFUSES = {"flat", "raw-renamed"}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_image_is_rejected_before_any_lease(kind, sim_conf, vsphere, images, control,
                                                good_vmdk, tmp_path):
    path = BAD[kind](good_vmdk, tmp_path / f"{kind}.vmdk")
    before = control.calls("ImportVApp")
    try:
        image_id = _add(images, path)
    except exceptions.ImageServiceRefused as err:
        # Glance's format inspector refuses data that is not a VMDK at all (raw, a
        # descriptor text) before it is stored: refused even earlier, and said so.
        assert isinstance(images, GlanceImageService) and kind in GLANCE_REFUSES, err
        assert err.status == 415 and "disk_format" in str(err)
        assert control.calls("ImportVApp") == before
        return
    assert not (isinstance(images, GlanceImageService) and kind in GLANCE_REFUSES)
    with pytest.raises(exceptions.InvalidImage) as err:
        _spawn(sim_conf, vsphere, images, _name(), image_id)
    assert image_id in str(err.value)
    assert "streamOptimized" in str(err.value)
    assert control.calls("ImportVApp") == before


def test_image_not_tagged_stream_optimized(sim_conf, vsphere, images, good_vmdk):
    image_id = _add(images, good_vmdk, vmware_disktype="sparse")
    with pytest.raises(exceptions.InvalidImage) as err:
        _spawn(sim_conf, vsphere, images, _name(), image_id)
    assert "vmware_disktype=sparse" in str(err.value)


def test_unknown_image(sim_conf, vsphere, images):
    with pytest.raises(exceptions.ImageNotFound) as err:
        _spawn(sim_conf, vsphere, images, _name(), "no-such-image")
    assert "no-such-image" in str(err.value)


def test_no_vsan_datastore_with_room(sim_conf, vsphere, images, control, good_vmdk):
    image_id = _add(images, good_vmdk)
    for ds in ("vsanDatastore", "vsanDatastore-2"):
        control.set_datastore(ds, free_space=1 * MiB)
    try:
        with pytest.raises(exceptions.NoSuitableDatastore) as err:
            _spawn(sim_conf, vsphere, images, _name(), image_id)
    finally:
        for ds in ("vsanDatastore", "vsanDatastore-2"):
            control.set_datastore(ds, free_space=900 * 1024**3)
    msg = str(err.value)
    for ds in ("vsanDatastore", "vsanDatastore-2", "LocalDS_0"):
        assert ds in msg
    assert "VMFS" in msg


def test_vcenter_unreachable(simulator, wsdl_url, tmp_path, images, good_vmdk):
    import socket

    from tests.functional.conftest import make_conf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = make_conf(simulator, wsdl_url, tmp_path, vmware__host_port=port)
    with pytest.raises(exceptions.VCenterUnreachable) as err:
        api.spawn(conf, _name(), _add(images, good_vmdk), images=images)
    assert f"127.0.0.1:{port}" in str(err.value)


def test_wrong_password(simulator, wsdl_url, tmp_path, images, good_vmdk):
    from tests.functional.conftest import make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vmware__host_password="wrong-secret")
    with pytest.raises(exceptions.VCenterAuthError) as err:
        api.spawn(conf, _name(), _add(images, good_vmdk), images=images)
    assert "wrong-secret" not in str(err.value)


def test_lease_error_then_retry_succeeds(simulator, wsdl_url, tmp_path, vsphere, images,
                                         control, good_vmdk, destroy_after):
    from tests.functional.conftest import make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vsan_flows__import_retries=2)
    image_id = _add(images, good_vmdk)
    name = _name()
    before = control.calls("ImportVApp")
    control.lease_fault("error", "next")
    result = api.spawn(conf, name, image_id, vsphere=vsphere, images=images)
    destroy_after.extend([name, result["shadow_vm"]["name"]])
    assert control.calls("ImportVApp") == before + 2


def test_lease_error_without_retries_fails_cleanly(sim_conf, vsphere, images, control,
                                                   good_vmdk):
    control.lease_fault("error", "next")
    with pytest.raises(exceptions.LeaseError):
        _spawn(sim_conf, vsphere, images, _name(), _add(images, good_vmdk))


def test_cut_transfer_rolls_back(sim_conf, vsphere, images, control, good_vmdk):
    control.cut_nfc(1 * MiB, direction="upload")
    with pytest.raises(exceptions.TransferError):
        _spawn(sim_conf, vsphere, images, _name(), _add(images, good_vmdk))


def test_transfer_past_timeout_rolls_back(simulator, wsdl_url, tmp_path, vsphere, images,
                                          control, good_vmdk):
    from dataclasses import replace

    from tests.functional.conftest import make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vmware__image_transfer_timeout_secs=1)
    control.throttle_nfc(256 * 1024, direction="upload")
    with pytest.raises(exceptions.TransferTimeout) as err:
        api.spawn(conf, _name(), _add(images, good_vmdk),
                  vsphere=replace(vsphere, transfer_timeout=1), images=images)
    assert "image_transfer_timeout_secs" in str(err.value)


@pytest.mark.parametrize("method", ["ImportVApp", "HttpNfcLeaseComplete", "ReconfigVM_Task",
                                    "CreateVM_Task"])
def test_vsphere_fault_in_any_step_rolls_back(method, sim_conf, vsphere, images, control,
                                              good_vmdk):
    control.fail_method(method, "SystemError", message=f"injected into {method}")
    with pytest.raises(exceptions.VsanFlowsError) as err:
        _spawn(sim_conf, vsphere, images, _name(), _add(images, good_vmdk))
    assert "SystemError" in str(err.value)


def test_session_expiring_mid_flow_is_reestablished(sim_conf, vsphere, images, control,
                                                     good_vmdk, destroy_after):
    """vCenter drops every session just as the transfer starts; the spawn still completes."""
    from contextlib import contextmanager

    from taskflow import states

    @contextmanager
    def expire_sessions_before_stream(engine):
        def on_event(state, details):
            if state == states.RUNNING and details.get("task_name", "").endswith(
                    "StreamDiskToLease"):
                control.terminate_sessions()

        engine.atom_notifier.register("*", on_event)
        yield

    name = _name()
    image_id = _add(images, good_vmdk)
    destroy_after.append(name)
    logins = control.calls("Login")
    result = _spawn(sim_conf, vsphere, images, name, image_id,
                    listeners=(expire_sessions_before_stream,))
    destroy_after.append(result["shadow_vm"]["name"])
    assert control.calls("Login") > logins
    assert result["instance_vm"]["parent"]


def test_unknown_cluster_is_a_config_error(simulator, wsdl_url, tmp_path, images, good_vmdk):
    from tests.functional.conftest import make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vmware__cluster_name="no-such-cluster")
    with pytest.raises(exceptions.ConfigError) as err:
        api.spawn(conf, _name(), _add(images, good_vmdk), images=images)
    assert "no-such-cluster" in str(err.value) and "DC0_C0" in str(err.value)
