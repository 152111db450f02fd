"""Snapshots capture what the guest wrote: real disk chains in the simulator, checked end to end.

The simulator's disks hold data (qemu-img backing chains behind vSphere's view), and its
control API writes into a VM's current disk as the guest would. So these tests prove the
snapshot's promise itself: the image holds the instance's disk as it was at the VM snapshot,
the instance keeps every write (also those made while the export ran), and the cached base
image is never touched.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import uuid

import pytest
from taskflow import states

from vsan_flows import api, exceptions
from vsan_flows.simulator import disks
from vsan_flows.simulator.control import ControlError

MiB = 1024 * 1024
SIZE = 64 * MiB


def _name(prefix="guest"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# Pattern A: unaligned offsets, one inside the image's data, one in a zero area.
WRITES_A = [(5 * MiB + 123, _pattern(1, 300 * 1024)), (40 * MiB + 4097, _pattern(2, 4096))]
# Pattern B (written while the export runs): one overlapping A's first region, one apart.
WRITES_B = [(5 * MiB + 123 + 100 * 1024, _pattern(3, 10 * 1024)),
            (20 * MiB + 7, _pattern(4, 200 * 1024))]


def _apply(content: bytes, writes) -> bytes:
    out = bytearray(content)
    for offset, data in writes:
        out[offset:offset + len(data)] = data
    return bytes(out)


def _assert_same(actual: bytes, expected: bytes, what: str) -> None:
    """Equal content, or a message naming the first differing byte (never a 64 MiB diff)."""
    if actual == expected:
        return
    if len(actual) != len(expected):
        pytest.fail(f"{what}: {len(actual)} bytes, expected {len(expected)}")
    first = next(i for i in range(len(actual)) if actual[i] != expected[i])
    pytest.fail(f"{what}: differs from byte {first} on "
                f"(sha256 {hashlib.sha256(actual).hexdigest()[:12]} vs "
                f"{hashlib.sha256(expected).hexdigest()[:12]})")


@pytest.fixture(scope="module")
def base_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("guest-disks") / "base.vmdk"
    disks.make_stream_optimized(path, SIZE, pattern=7, data_mib=8)
    return path


@pytest.fixture(scope="module")
def base_raw(base_vmdk, tmp_path_factory) -> bytes:
    raw = tmp_path_factory.mktemp("guest-raw") / "base.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(base_vmdk), str(raw)],
                   check=True)
    return raw.read_bytes()


def _image_raw(images, image_id, tmp_path) -> bytes:
    vmdk = tmp_path / f"{image_id}.vmdk"
    raw = tmp_path / f"{image_id}.raw"
    with images.open(image_id) as src, open(vmdk, "wb") as dst:
        while chunk := src.read(MiB):
            dst.write(chunk)
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)],
                   check=True)
    return raw.read_bytes()


@pytest.fixture
def spawned(sim_conf, vsphere, images, base_vmdk, destroy_after):
    """spawn(): an instance of the base image -> (instance name, cache VM name, image id)."""
    image_id = images.add_file(base_vmdk, name="base")

    def spawn(image=None):
        name = _name()
        destroy_after.insert(0, name)
        result = api.spawn(sim_conf, name, image or image_id, vsphere=vsphere, images=images)
        if result["shadow_vm"]["name"] not in destroy_after:
            destroy_after.append(result["shadow_vm"]["name"])
        return name, result["shadow_vm"]["name"]

    spawn.image_id = image_id
    return spawn


def _snapshot(sim_conf, vsphere, images, instance, **kw):
    image_id = images.create({"name": f"snap-of-{instance}"})
    api.snapshot(sim_conf, instance, image_id, vsphere=vsphere, images=images, **kw)
    return image_id


def test_snapshot_holds_what_the_guest_wrote(sim_conf, vsphere, images, control, spawned,
                                             base_raw, tmp_path):
    instance, cache_vm = spawned()
    _assert_same(control.guest_read(instance), base_raw, "the new instance")
    for offset, data in WRITES_A:
        control.guest_write(instance, offset, data)
    with_a = _apply(base_raw, WRITES_A)
    _assert_same(control.guest_read(instance), with_a, "the instance after the guest wrote A")

    image_id = _snapshot(sim_conf, vsphere, images, instance)

    _assert_same(_image_raw(images, image_id, tmp_path), with_a, "the snapshot image")
    _assert_same(control.guest_read(instance), with_a, "the instance after the snapshot")
    second, second_cache = spawned(image_id)
    assert second_cache != cache_vm
    _assert_same(control.guest_read(second), with_a, "the instance spawned from the snapshot")
    _assert_same(control.guest_read(cache_vm), base_raw, "the base image's cache entry")
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    assert vms[instance]["snapshots"] == 0


def test_writes_after_the_vm_snapshot_stay_out_of_the_image(sim_conf, vsphere, images,
                                                            control, spawned, base_raw,
                                                            tmp_path):
    """Consistency point: B written once CreateVmSnapshot ran, while the export streams."""
    from contextlib import contextmanager

    instance, cache_vm = spawned()
    for offset, data in WRITES_A:
        control.guest_write(instance, offset, data)
    written = []

    @contextmanager
    def write_b_during_export(engine):
        def on_event(state, details):
            if state == states.RUNNING and details.get("task_name", "").endswith(
                    "StreamDiskToImage") and not written:
                for offset, data in WRITES_B:
                    control.guest_write(instance, offset, data)
                written.append(True)

        engine.atom_notifier.register("*", on_event)
        yield

    image_id = _snapshot(sim_conf, vsphere, images, instance,
                         listeners=(write_b_during_export,))
    assert written, "the hook never ran: B was not written during the export"

    with_a = _apply(base_raw, WRITES_A)
    _assert_same(_image_raw(images, image_id, tmp_path), with_a, "the image (A, not B)")
    _assert_same(control.guest_read(instance), _apply(with_a, WRITES_B),
                 "the instance after cleanup (A and B)")
    # The snapshot's delta was consolidated: the instance is again one child of the base.
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    assert vms[instance]["snapshots"] == 0
    assert vms[instance]["disks"][0]["parent"] == vms[cache_vm]["disks"][0]["file"]
    assert not [f["path"] for f in control.files() if f["path"].startswith(instance + "/")
                and "-0000" in f["path"]]


@pytest.mark.parametrize("announce", [False, True], ids=["chunked", "announced-length"])
def test_export_stream_length_modes(announce, sim_conf, vsphere, images, control, spawned,
                                    base_raw, tmp_path):
    """By default an export is chunked with no fileSize (as vCenter: the stream is generated
    as it goes); the knob announces the length. The flow works either way."""
    from vsan_flows.vsphere import transfer
    from vsan_flows.vsphere.session import ref

    instance, _cache = spawned()
    for offset, data in WRITES_A:
        control.guest_write(instance, offset, data)
    control.announce_export_length(announce)
    vm_ref = ref(next(vm["moref"] for vm in control.status()["vms"] if vm["name"] == instance),
                 "VirtualMachine")
    session = vsphere.session
    lease = transfer.create_export_lease(session, vm_ref)
    try:
        transfer.wait_ready(session, lease)
        device = transfer.disk_device(session, lease, vsphere.host, vsphere.port)
        reader = transfer.LeaseDownloadHandle(session, lease, device)
        headers = reader._file_handle.headers
        out = tmp_path / "export.vmdk"
        with open(out, "wb") as f:
            while chunk := reader.read(MiB):
                f.write(chunk)
        reader.close()
        transfer.complete(session, lease)
    except BaseException:
        transfer.abort(session, lease)
        raise
    size = out.stat().st_size
    if announce:
        assert device.file_size == size
        assert reader.content_length == size
    else:
        assert not device.file_size
        assert reader.content_length is None
        assert headers.get("Transfer-Encoding") == "chunked"
    raw = tmp_path / "export.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(out), str(raw)],
                   check=True)
    _assert_same(raw.read_bytes(), _apply(base_raw, WRITES_A), "the exported stream")

    image_id = _snapshot(sim_conf, vsphere, images, instance)
    assert images.show(image_id).status == "active"


def test_missing_chain_file_fails_the_export_lease(sim_conf, vsphere, images, control,
                                                   spawned, simulator):
    instance, cache_vm = spawned()
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    ds_name, rel = vms[cache_vm]["disks"][0]["file"][1:].split("] ", 1)
    root = next(d["path"] for d in simulator.datastores if d["name"] == ds_name)
    data = f"{root}/{rel[:-len('.vmdk')]}-flat.vmdk"
    aside = data + ".aside"
    import os

    os.rename(data, aside)
    try:
        with pytest.raises(exceptions.LeaseError) as err:
            _snapshot(sim_conf, vsphere, images, instance)
        assert "has no data file" in _one_line(err), str(err.value)
    finally:
        os.rename(aside, data)
    assert [i.status for i in images.list() if i.name.startswith("snap-of")] == ["killed"]
    status = control.status()
    assert {vm["name"]: vm for vm in status["vms"]}[instance]["snapshots"] == 0
    assert not status["leases"]


# Bad input to the guest control calls -----------------------------------------------------

def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_guest_write_beyond_the_disk(control, spawned):
    instance, _cache = spawned()
    with pytest.raises(ControlError) as err:
        control.guest_write(instance, SIZE - 10, b"x" * 11)
    assert "does not fit" in _one_line(err) and str(SIZE) in str(err.value)
    with pytest.raises(ControlError) as err:
        control.guest_write(instance, -1, b"x")
    _one_line(err)
    control.guest_write(instance, SIZE - 10, b"y" * 10)  # the last byte is fine
    assert control.guest_read(instance, SIZE - 10) == b"y" * 10


def test_guest_io_on_a_vm_without_disks_and_a_destroyed_vm(vsphere, control):
    from vsan_flows.vsphere import home, instances

    session = vsphere.session
    cf = session.vim.client.factory
    config = cf.create("ns0:VirtualMachineConfigSpec")
    config.name = _name("diskless")
    config.guestId = "otherGuest"
    config.numCPUs = 1
    config.memoryMB = 64
    files = cf.create("ns0:VirtualMachineFileInfo")
    files.vmPathName = "[vsanDatastore]"
    config.files = files
    pool, folder = home.pool_and_folder(vsphere)
    task = session.invoke_api(session.vim, "CreateVM_Task", folder, config=config, pool=pool)
    session.wait_for_task(task)
    vm_id = instances.find(vsphere, config.name)
    try:
        with pytest.raises(ControlError) as err:
            control.guest_write(config.name, 0, b"x")
        assert "has no virtual disk" in _one_line(err)
        with pytest.raises(ControlError) as err:
            control.guest_read(config.name)
        assert "has no virtual disk" in _one_line(err)
    finally:
        instances.destroy(vsphere, vm_id)
    with pytest.raises(ControlError) as err:
        control.guest_read(config.name)
    assert "HTTP 404" in _one_line(err) and "destroyed" in str(err.value)


# Foreign images: made by writers this project does not use itself ----------------------------

FOREIGN = {
    "vmdkstream": disks.make_vmdkstream,
    "qemu-compat6-lsilogic": disks.make_qemu_compat6,
}


@pytest.mark.parametrize("writer", sorted(FOREIGN))
def test_foreign_image_round_trip(writer, sim_conf, vsphere, images, control, destroy_after,
                                  tmp_path):
    """Spawn a foreign image, write as the guest, snapshot, spawn the snapshot: A is there."""
    path = FOREIGN[writer](tmp_path / f"{writer}.vmdk", 32 * MiB, pattern=5, data_mib=4)
    raw = tmp_path / "foreign.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(path), str(raw)],
                   check=True)
    base = raw.read_bytes()
    image_id = images.add_file(path, name=writer)

    def spawn(image):
        name = _name(writer[:8])
        destroy_after.insert(0, name)
        result = api.spawn(sim_conf, name, image, vsphere=vsphere, images=images)
        destroy_after.append(result["shadow_vm"]["name"])
        return name

    instance = spawn(image_id)
    _assert_same(control.guest_read(instance), base, "the instance of the foreign image")
    writes = [(offset % (32 * MiB - len(data)), data) for offset, data in WRITES_A]
    for offset, data in writes:
        control.guest_write(instance, offset, data)
    snap = _snapshot(sim_conf, vsphere, images, instance)
    with_a = _apply(base, writes)
    _assert_same(_image_raw(images, snap, tmp_path), with_a, "the snapshot image")
    _assert_same(control.guest_read(spawn(snap)), with_a, "the instance spawned from it")


def test_removing_a_snapshot_a_clone_still_uses_keeps_both_disks_whole(vsphere, control,
                                                                      spawned, base_raw,
                                                                      destroy_after):
    """RemoveSnapshot must not commit into a disk another chain reads (the clone's parent)."""
    from vsan_flows.vsphere import exports

    instance, _cache = spawned()
    vm_id = next(v["moref"] for v in control.status()["vms"] if v["name"] == instance)
    for offset, data in WRITES_A:
        control.guest_write(instance, offset, data)
    snap = exports.create_snapshot(vsphere, vm_id, "keep")
    for offset, data in WRITES_B:
        control.guest_write(instance, offset, data)
    clone = _name("clone")
    destroy_after.insert(0, clone)
    exports.clone_at_snapshot(vsphere, vm_id, snap, clone, "test clone")
    assert exports.remove_snapshot(vsphere, vm_id, "keep")

    with_a = _apply(base_raw, WRITES_A)
    _assert_same(control.guest_read(clone), with_a, "the clone (A, as at the snapshot)")
    _assert_same(control.guest_read(instance), _apply(with_a, WRITES_B),
                 "the instance (A and B)")
