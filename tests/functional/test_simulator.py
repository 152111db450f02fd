"""The real peer works: oslo.vmware against the patched simulator, end to end.

Everything here goes through oslo.vmware (suds over HTTPS with the generated WSDL) and our
vsphere/ access layer; the simulator's control API is only used to arm faults and to look.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from oslo_vmware import exceptions as vexc

from vsan_flows import exceptions
from vsan_flows.simulator import disks
from vsan_flows.vsphere import inventory, transfer, vm


def _find_vm(session, name: str):
    """The VM called ``name`` anywhere in the inventory, or None (a full scan: tests only)."""
    from oslo_vmware import vim_util

    with vim_util.WithRetrieval(session.vim, session.invoke_api(
            vim_util, "get_objects", session.vim, "VirtualMachine", 100, ["name"])) as objs:
        for obj in objs:
            if any(p.name == "name" and p.val == name for p in obj.propSet or []):
                return obj.obj
    return None

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def image_64m(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "disk64.vmdk"
    disks.make_stream_optimized(path, 64 * MiB)
    return path


def _import_lease(session, placement, name, capacity_kb=64 * 1024, ds="vsanDatastore"):
    pool, folder = placement
    spec = vm.import_spec(session.vim.client.factory, name, ds, capacity_kb)
    lease = session.invoke_api(session.vim, "ImportVApp", pool, spec=spec, folder=folder)
    return lease


def _upload(session, lease, path, host, port, timeout=60):
    size = path.stat().st_size
    device = transfer.disk_device(session, lease, host, port)
    writer = transfer.LeaseUploadHandle(session, lease, device, size, timeout_secs=timeout)
    with open(path, "rb") as f:
        transfer.copy(transfer.ImageStreamReader(f), writer, timeout)
    return writer


def _file_sizes(control, vm_name):
    return {f["path"]: f["size"] for f in control.files() if f["path"].startswith(vm_name + "/")}


def test_login_through_oslo_vmware(vim_session, simulator):
    about = vim_session.vim.service_content.about
    assert about.apiType == "VirtualCenter"
    # The session is shared by the whole run, and test_relogin makes vCenter drop every
    # session: a first call lets oslo log in again if so, before its id is asked about.
    inventory.datastores(vim_session)
    assert vim_session.invoke_api(vim_session.vim, "SessionIsActive",
                                  vim_session.vim.service_content.sessionManager,
                                  sessionID=vim_session._session_id,
                                  userName=simulator.username)


def test_wrong_password_is_an_invalid_login(simulator, wsdl_url):
    from oslo_vmware import api

    with pytest.raises(vexc.VimFaultException) as err:
        api.VMwareAPISession(simulator.host, simulator.username, "not-the-password",
                             api_retry_count=0, task_poll_interval=0.1, port=simulator.port,
                             insecure=True, wsdl_loc=wsdl_url)
    assert "InvalidLogin" in err.value.fault_list


def test_datastores_have_vsan_types(vim_session):
    found = {d.name: d.type for d in inventory.datastores(vim_session)}
    assert found == {"vsanDatastore": "vsan", "vsanDatastore-2": "vsan", "LocalDS_0": "VMFS"}


def test_import_and_export_round_trip(vim_session, simulator, control, image_64m, tmp_path):
    name = "rt-" + uuid.uuid4().hex[:8]
    lease = _import_lease(vim_session, placement_for(vim_session), name)
    transfer.wait_ready(vim_session, lease)
    t0 = time.monotonic()
    writer = _upload(vim_session, lease, image_64m, simulator.host, simulator.port)
    up_s = time.monotonic() - t0
    assert writer.response_status == 200
    transfer.complete(vim_session, lease)
    vm_ref = _find_vm(vim_session, name)
    try:
        # The VM's disk holds the image's content (the simulator keeps disks as its own
        # chain files; what counts is what the guest sees).
        stored = tmp_path / "stored.raw"
        stored.write_bytes(control.guest_read(name))
        proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk",
                               str(stored), str(image_64m)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

        exp = vim_session.invoke_api(vim_session.vim, "ExportVm", vm_ref)
        transfer.wait_ready(vim_session, exp)
        device = transfer.disk_device(vim_session, exp, simulator.host, simulator.port)
        reader = transfer.LeaseDownloadHandle(vim_session, exp, device)
        out = tmp_path / "exported.vmdk"
        t0 = time.monotonic()
        with open(out, "wb") as f:
            while chunk := reader.read(1 * MiB):
                f.write(chunk)
        down_s = time.monotonic() - t0
        reader.close()
        transfer.complete(vim_session, exp)
        proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk",
                               str(image_64m), str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        size_mb = image_64m.stat().st_size / MiB
        print(f"import {size_mb / up_s:.0f} MB/s, export {size_mb / down_s:.0f} MB/s")
    finally:
        vm.destroy(vim_session, vm_ref)


def placement_for(session):
    cluster = inventory.cluster_by_name(session, None)
    return inventory.resource_pool(session, cluster), inventory.vm_folder(session, cluster)


# Fault knobs -----------------------------------------------------------------------------

@pytest.fixture
def open_import(vim_session):
    """Start an import (lease + half-imported VM) by name; abort and destroy it afterwards."""
    made = []

    def start(prefix):
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        made.append((name, _import_lease(vim_session, placement_for(vim_session), name)))
        return made[-1]

    yield start
    for name, lease in made:
        transfer.abort(vim_session, lease)
        leftover = _find_vm(vim_session, name)
        if leftover is not None:
            vm.destroy(vim_session, leftover)


def test_method_fault_knob(vim_session, control):
    control.fail_method("ImportVApp", "InvalidState", message="injected by test")
    with pytest.raises(vexc.VimFaultException) as err:
        _import_lease(vim_session, placement_for(vim_session), "never-" + uuid.uuid4().hex[:6])
    assert "InvalidState" in err.value.fault_list
    assert control.status()["leases"] == []


def test_lease_error_knob(vim_session, control, open_import):
    control.lease_fault("error", "next")
    _name, lease = open_import("lease-err")
    with pytest.raises(exceptions.LeaseError):
        transfer.wait_ready(vim_session, lease)


def test_lease_expire_knob(vim_session, control, simulator, image_64m, open_import):
    _name, lease = open_import("lease-exp")
    transfer.wait_ready(vim_session, lease)
    control.lease_fault("expire", "open")
    with pytest.raises(exceptions.VsanFlowsError):
        _upload(vim_session, lease, image_64m, simulator.host, simulator.port)
    with pytest.raises(exceptions.LeaseError):
        transfer.complete(vim_session, lease)


def test_nfc_cut_knob_fails_the_upload(vim_session, control, simulator, image_64m,
                                       open_import):
    name, lease = open_import("cut")
    transfer.wait_ready(vim_session, lease)
    control.cut_nfc(1 * MiB, direction="upload")
    with pytest.raises(exceptions.TransferError):
        _upload(vim_session, lease, image_64m, simulator.host, simulator.port)
    sizes = _file_sizes(control, name)
    assert image_64m.stat().st_size not in sizes.values()


def test_nfc_throttle_knob_hits_the_timeout(vim_session, control, simulator, image_64m,
                                            open_import):
    _name, lease = open_import("slow")
    transfer.wait_ready(vim_session, lease)
    control.throttle_nfc(512 * 1024, direction="upload")
    t0 = time.monotonic()
    with pytest.raises(exceptions.TransferTimeout):
        _upload(vim_session, lease, image_64m, simulator.host, simulator.port, timeout=1)
    assert time.monotonic() - t0 < 30


def test_terminated_session_is_reestablished(vim_session, control):
    old = vim_session._session_id
    control.terminate_sessions()
    # oslo.vmware sees NotAuthenticated, logs in again and retries the call.
    assert inventory.datastores(vim_session)
    assert vim_session._session_id != old


def test_datastore_knob_changes_what_vcenter_reports(vim_session, control):
    control.set_datastore("vsanDatastore-2", free_space=12345, maintenance_mode="inMaintenance")
    try:
        ds = {d.name: d for d in inventory.datastores(vim_session)}["vsanDatastore-2"]
        assert ds.free_space == 12345
        assert ds.maintenance_mode == "inMaintenance"
    finally:
        control.set_datastore("vsanDatastore-2", free_space=900 * 1024**3,
                              maintenance_mode="normal")


# The leak check ---------------------------------------------------------------------------

def test_leak_check_catches_a_planted_leak(vim_session, leak_check, simulator):
    before = leak_check.snapshot()
    name = "planted-" + uuid.uuid4().hex[:6]
    lease = _import_lease(vim_session, placement_for(vim_session), name)
    transfer.wait_ready(vim_session, lease)
    found = leak_check.leaks(before)
    assert any(name in line and line.startswith("VM") for line in found), found
    assert any(line.startswith("lease") for line in found), found
    assert any(line.startswith("file") and name in line for line in found), found
    transfer.abort(vim_session, lease)
    leftover = _find_vm(vim_session, name)
    if leftover is not None:
        vm.destroy(vim_session, leftover)
    assert leak_check.leaks(before) == []
