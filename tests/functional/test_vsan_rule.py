"""vSAN's rule in the simulator: a disk's data is reachable only through NFC leases.

On a `vsan` datastore the data files (-flat, -delta, -sesparse) do not show in the datastore
browser, cannot be read or written over HTTP /folder, and Copy/MoveVirtualDisk cannot start
from them; VMFS keeps showing and serving them. A code path that reads disk data by datastore
path would pass only on the simulator, so the simulator refuses it as vSAN does.
"""

from __future__ import annotations

import uuid

import pytest
import requests
import urllib3
from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from tests.functional.test_simulator import _find_vm, _import_lease, _upload, placement_for
from vsan_flows.simulator import disks
from vsan_flows.vsphere import transfer, vm

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def imported(vim_session, simulator, tmp_path_factory):
    """One imported disk-only VM per datastore kind: {'vsan': name, 'vmfs': name}."""
    image = tmp_path_factory.mktemp("rule") / "disk.vmdk"
    disks.make_stream_optimized(image, 8 * MiB, data_mib=2)
    made = {}
    for kind, ds in (("vsan", "vsanDatastore"), ("vmfs", "LocalDS_0")):
        name = f"rule-{kind}-{uuid.uuid4().hex[:6]}"
        lease = _import_lease(vim_session, placement_for(vim_session), name, 8 * 1024, ds=ds)
        transfer.wait_ready(vim_session, lease)
        _upload(vim_session, lease, image, simulator.host, simulator.port)
        transfer.complete(vim_session, lease)
        made[kind] = (name, ds)
    yield made
    for name, _ds in made.values():
        ref = _find_vm(vim_session, name)
        if ref is not None:
            vm.destroy(vim_session, ref)


def _browse(session, ds_name, folder):
    """The .vmdk files the datastore browser lists in ``folder``."""
    ds = next(d for d in session.invoke_api(vim_util, "get_objects", session.vim, "Datastore",
                                            100, ["name"]).objects
              if d.propSet[0].val == ds_name)
    browser = session.invoke_api(vim_util, "get_object_property", session.vim, ds.obj,
                                 "browser")
    cf = session.vim.client.factory
    spec = cf.create("ns0:HostDatastoreBrowserSearchSpec")
    spec.matchPattern = ["*"]
    flags = cf.create("ns0:FileQueryFlags")
    flags.fileSize = True
    flags.fileType = True
    flags.modification = False
    flags.fileOwner = False
    spec.details = flags
    task = session.invoke_api(session.vim, "SearchDatastore_Task", browser,
                              datastorePath=f"[{ds_name}] {folder}", searchSpec=spec)
    info = session.wait_for_task(task)
    return sorted(f.path for f in getattr(info.result, "file", None) or []
                  if f.path.endswith(".vmdk"))


def test_browser_lists_no_data_file_on_vsan(vim_session, imported):
    name, ds = imported["vsan"]
    assert _browse(vim_session, ds, name) == [f"{name}.vmdk"]
    name, ds = imported["vmfs"]
    assert f"{name}-flat.vmdk" in _browse(vim_session, ds, name)  # VMFS: as before


def _folder(simulator, vim_session, method, ds, rel, data=None):
    url = f"https://{simulator.host}:{simulator.port}/folder/{rel}"
    with urllib3.warnings.catch_warnings():
        urllib3.warnings.simplefilter("ignore")
        return requests.request(method, url, params={"dcPath": "DC0", "dsName": ds}, data=data,
                                cookies=vim_session.vim.client.cookiejar, verify=False,
                                timeout=30)


def test_folder_http_cannot_reach_disk_data_on_vsan(simulator, vim_session, imported):
    name, ds = imported["vsan"]
    resp = _folder(simulator, vim_session, "GET", ds, f"{name}/{name}-flat.vmdk")
    assert resp.status_code == 404
    resp = _folder(simulator, vim_session, "PUT", ds, f"{name}/{name}-flat.vmdk", b"x" * 512)
    assert resp.status_code == 403
    resp = _folder(simulator, vim_session, "GET", ds, f"{name}/{name}-delta.vmdk")
    assert resp.status_code == 404
    # The descriptor is a namespace file: readable, and it holds no disk data.
    resp = _folder(simulator, vim_session, "GET", ds, f"{name}/{name}.vmdk")
    assert resp.status_code == 200
    assert resp.content.startswith(b"# Disk DescriptorFile") and len(resp.content) < 4096

    name, ds = imported["vmfs"]
    resp = _folder(simulator, vim_session, "GET", ds, f"{name}/{name}-flat.vmdk")
    assert resp.status_code == 200 and len(resp.content) > 0  # VMFS: as before
    resp = _folder(simulator, vim_session, "GET", ds, f"{name}/no-such-flat.vmdk")
    assert resp.status_code == 404  # never 200 with an empty body


@pytest.mark.parametrize("method", ["CopyVirtualDisk_Task", "MoveVirtualDisk_Task"])
def test_virtual_disk_copy_and_move_from_a_data_file_fail_on_vsan(method, vim_session,
                                                                  imported):
    name, ds = imported["vsan"]
    sc = vim_session.vim.service_content
    dc = vim_session.invoke_api(vim_util, "get_objects", vim_session.vim, "Datacenter",
                                1).objects[0].obj
    task = vim_session.invoke_api(
        vim_session.vim, method, sc.virtualDiskManager,
        sourceName=f"[{ds}] {name}/{name}-flat.vmdk", sourceDatacenter=dc,
        destName=f"[{ds}] {name}/copy.vmdk")
    with pytest.raises(vexc.VimException) as err:
        vim_session.wait_for_task(task)
    assert isinstance(err.value, vexc.FileNotFoundException), repr(err.value)
    assert _browse(vim_session, ds, name) == [f"{name}.vmdk"]  # nothing copied or moved


def test_import_check_uses_only_what_vsan_offers(vsphere, control, tmp_path):
    """[vsan_flows] verify_stored_size: the lease still ready and the VM's own disk view;
    never a datastore browser search (vSAN lists no data file to measure)."""
    from vsan_flows import exceptions
    from vsan_flows.vsphere import imports, instances, leases

    image = tmp_path / "check.vmdk"
    disks.make_stream_optimized(image, 8 * MiB, data_mib=2)
    name = f"check-{uuid.uuid4().hex[:6]}"
    searches = control.calls("SearchDatastore_Task")
    lease = imports.begin_import(vsphere, vm_name=name, datastore_name="vsanDatastore",
                                 capacity_bytes=8 * MiB, adapter_type=None, guest_id=None)
    try:
        with open(image, "rb") as f:
            imports.upload(vsphere, lease["lease"], f, image.stat().st_size)
        imports.check_imported_disk(vsphere, lease["lease"], lease["vm"], "vsanDatastore",
                                    8 * MiB)
        with pytest.raises(exceptions.VSphereError, match="capacity"):
            imports.check_imported_disk(vsphere, lease["lease"], lease["vm"],
                                        "vsanDatastore", 9 * MiB)
        with pytest.raises(exceptions.VSphereError, match="not on the chosen datastore"):
            imports.check_imported_disk(vsphere, lease["lease"], lease["vm"],
                                        "vsanDatastore-2", 8 * MiB)
        control.lease_fault("error", "open")  # the host failed the lease after the upload
        with pytest.raises(exceptions.LeaseError, match="state error"):
            imports.check_imported_disk(vsphere, lease["lease"], lease["vm"],
                                        "vsanDatastore", 8 * MiB)
    finally:
        leases.abort(vsphere, lease["lease"])
        instances.destroy_by_name(vsphere, name)
    assert control.calls("SearchDatastore_Task") == searches
