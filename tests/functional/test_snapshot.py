"""Snapshot through ExportVm against the simulator: round trip, integrity, every fault.

Every test runs with the local image store and with a real glance-api. A failed snapshot's
image is killed in the local store and deleted in Glance, which has no settable killed status.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.functional.conftest import discarded
from vsan_flows import api, exceptions
from vsan_flows.glance import GlanceImageService
from vsan_flows.simulator import disks

MiB = 1024 * 1024

pytestmark = pytest.mark.parametrize("images", ["local", "glance"], indirect=True)


def _name(prefix="inst"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def good_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "good.vmdk"
    disks.make_stream_optimized(path, 64 * MiB, data_mib=8)
    return path


@pytest.fixture
def instance(sim_conf, vsphere, images, good_vmdk, destroy_after):
    """A spawned instance (and its image cache entry), destroyed after the test."""
    image_id = images.add_file(good_vmdk, name="base")
    name = _name()
    destroy_after.append(name)
    result = api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])
    return name


def _snapshot(sim_conf, vsphere, images, instance_name, **kw):
    image_id = images.create({"name": f"snap-of-{instance_name}"})
    return image_id, api.snapshot(sim_conf, instance_name, image_id, vsphere=vsphere,
                                  images=images, **kw)


def _snapshot_images(images) -> list:
    return [i for i in images.list() if i.name and i.name.startswith("snap-of")]


def test_round_trip_image_spawn_snapshot_spawn(sim_conf, vsphere, images, instance,
                                               good_vmdk, destroy_after, control, tmp_path):
    image_id, _ = _snapshot(sim_conf, vsphere, images, instance)
    meta = images.show(image_id)
    assert meta.status == "active"
    assert meta.disk_format == "vmdk" and meta.container_format == "bare"
    assert meta.properties["vmware_disktype"] == "streamOptimized"
    assert str(meta.properties["vmware_image_version"]) == "1"  # Glance keeps strings
    assert meta.properties["vmware_adaptertype"] == "lsiLogic"
    assert meta.properties["vmware_ostype"]

    # The snapshot's disk content equals the instance's (its parent, the imported image).
    out = tmp_path / "snap.vmdk"
    with images.open(image_id) as src, open(out, "wb") as dst:
        while chunk := src.read(MiB):
            dst.write(chunk)
    proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(good_vmdk),
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # No snapshot or clone is left on the instance; the new image spawns.
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    assert vms[instance]["snapshots"] == 0
    second = _name("from-snap")
    destroy_after.insert(0, second)
    result = api.spawn(sim_conf, second, image_id, vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])


def test_missing_instance(sim_conf, vsphere, images):
    image_id = images.create({"name": "x"})
    with pytest.raises(exceptions.InstanceNotFound):
        api.snapshot(sim_conf, "no-such-instance", image_id, vsphere=vsphere, images=images)
    assert discarded(images, image_id)


def test_image_that_already_has_data(sim_conf, vsphere, images, instance, good_vmdk):
    image_id = images.add_file(good_vmdk, name="full")
    with pytest.raises(exceptions.ImageAlreadyHasData):
        api.snapshot(sim_conf, instance, image_id, vsphere=vsphere, images=images)
    assert images.show(image_id).status == "active"  # someone else's image is left alone


@pytest.mark.parametrize("method", ["CreateSnapshot_Task", "CloneVM_Task", "ExportVm",
                                    "HttpNfcLeaseComplete"])
def test_vsphere_fault_rolls_back(method, sim_conf, vsphere, images, instance, control):
    control.fail_method(method, "SystemError", message=f"injected into {method}")
    with pytest.raises(exceptions.VsanFlowsError):
        _snapshot(sim_conf, vsphere, images, instance)
    # killed, or deleted (once it had gone active, or always in Glance)
    assert {i.status for i in _snapshot_images(images)} <= {"killed"}
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    assert vms[instance]["snapshots"] == 0


def test_lease_error_rolls_back(sim_conf, vsphere, images, instance, control):
    control.lease_fault("error", "next")
    with pytest.raises(exceptions.LeaseError):
        _snapshot(sim_conf, vsphere, images, instance)


def test_cut_export_never_leaves_a_usable_image(sim_conf, vsphere, images, instance, control):
    control.cut_nfc(2 * MiB, direction="download")
    with pytest.raises(exceptions.TransferError):
        _snapshot(sim_conf, vsphere, images, instance)
    # The local store keeps the image as killed; Glance cannot, so it is gone.
    glance = isinstance(images, GlanceImageService)
    assert [i.status for i in _snapshot_images(images)] == ([] if glance else ["killed"])


def test_cut_export_is_retried(simulator, wsdl_url, tmp_path, vsphere, images, instance,
                               control):
    from tests.functional.conftest import make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vsan_flows__import_retries=1)
    control.cut_nfc(2 * MiB, direction="download")
    image_id = images.create({"name": "retried"})
    api.snapshot(conf, instance, image_id, vsphere=vsphere, images=images)
    assert images.show(image_id).status == "active"
    assert control.calls("ExportVm") >= 2


def test_export_past_timeout(sim_conf, vsphere, images, instance, control):
    from dataclasses import replace

    control.throttle_nfc(256 * 1024, direction="download")
    with pytest.raises(exceptions.TransferTimeout):
        _snapshot(sim_conf, replace(vsphere, transfer_timeout=1), images, instance)


def test_image_service_refusing_the_upload(sim_conf, vsphere, images, instance):
    image_id = images.create({"name": "snap-of-refused"})
    images.mark_killed(image_id, "refused by the image service")
    with pytest.raises(exceptions.VsanFlowsError):
        api.snapshot(sim_conf, instance, image_id, vsphere=vsphere, images=images)
