"""The nova-shaped façade with plain objects, and the no-secrets-persisted promise."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from types import SimpleNamespace

import pytest

from vsan_flows import driver, imagecache
from vsan_flows.simulator import disks

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "drv.vmdk"
    disks.make_stream_optimized(path, 64 * MiB, data_mib=4)
    return path


@pytest.fixture
def nova(sim_conf, vsphere, images):
    from vsan_flows import api

    return driver.VsanFlowsDriver(sim_conf, handles=api.open_handles(sim_conf, vsphere=vsphere,
                                                                     images=images))


def _spawn(nova, images, vmdk, destroy_after, control, power_on=True):
    instance = SimpleNamespace(uuid=str(uuid.uuid4()), name="instance-0001")
    image_id = images.add_file(vmdk, name="drv")
    destroy_after.append(instance.uuid)
    nova.spawn(None, instance, SimpleNamespace(id=image_id), [], "admin-pw", {},
               power_on=power_on)
    cached = [vm["name"] for vm in control.status()["vms"]
              if vm["name"].startswith(imagecache.vm_name(image_id, ""))]
    destroy_after.extend(cached)
    return instance


def test_spawn_with_nova_objects_powers_on(nova, images, vmdk, destroy_after, control):
    instance = _spawn(nova, images, vmdk, destroy_after, control)
    vm = next(v for v in control.status()["vms"] if v["name"] == instance.uuid)
    assert vm["power_state"] == "poweredOn"
    assert vm["disks"][0]["parent"]


def test_bad_image_is_image_unacceptable(nova, images, tmp_path):
    bad = disks.make_monolithic_sparse(tmp_path / "sparse.vmdk", 8 * MiB)
    image_id = images.add_file(bad, name="sparse")
    with pytest.raises(driver.ImageUnacceptable) as err:
        nova.spawn(None, SimpleNamespace(uuid=str(uuid.uuid4())), {"id": image_id}, [], None,
                   {})
    assert err.value.kwargs["code"] == 400
    assert image_id in str(err.value)


def test_snapshot_reports_task_states_like_nova(nova, images, vmdk, destroy_after, control):
    instance = _spawn(nova, images, vmdk, destroy_after, control, power_on=False)
    calls = []
    image_id = images.create({"name": "nova-snap"})
    nova.snapshot(None, instance, image_id, lambda **kw: calls.append(kw))
    assert calls == [
        {"task_state": driver.IMAGE_PENDING_UPLOAD},
        {"task_state": driver.IMAGE_UPLOADING, "expected_state": driver.IMAGE_PENDING_UPLOAD},
    ]
    assert images.show(image_id).status == "active"


def test_snapshot_of_missing_instance(nova, images):
    image_id = images.create({"name": "nowhere"})
    with pytest.raises(driver.InstanceNotFound):
        nova.snapshot(None, SimpleNamespace(uuid="no-such-vm"), image_id, lambda **kw: None)


def test_no_secret_in_any_persisted_row_or_log_line(simulator, wsdl_url, tmp_path, images,
                                                    vmdk, destroy_after, control, caplog):
    """Spawn, snapshot and a failing spawn on a sqlite store; scan every row and log line."""
    from tests.functional.conftest import make_conf
    from vsan_flows import api

    db = tmp_path / "flows.sqlite"
    conf = make_conf(simulator, wsdl_url, tmp_path,
                     vsan_flows__persistence_connection=f"sqlite:///{db}")
    caplog.set_level(logging.DEBUG)
    handles = api.open_handles(conf, images=images)
    cookies = handles.vsphere.cookies()
    assert cookies, "the session has a cookie to look for"
    nova = driver.VsanFlowsDriver(conf, handles=handles)
    instance = _spawn(nova, images, vmdk, destroy_after, control, power_on=False)
    nova.snapshot(None, instance, images.create({"name": "s"}), lambda **kw: None)
    control.fail_method("CreateVM_Task", "SystemError")
    with pytest.raises(driver.InstanceDeployFailure):
        nova.spawn(None, SimpleNamespace(uuid=str(uuid.uuid4())), {"id": images.add_file(
            vmdk, name="again")}, [], None, {})

    secrets = [simulator.password, *cookies]
    rows = 0
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in con.execute(f"select * from {table}"):  # noqa: S608 - our own tables
                rows += 1
                text = " ".join(str(v) for v in row)
                for secret in secrets:
                    assert secret not in text, f"secret in {table}"
                assert "/nfc/" not in text, f"lease URL in {table}"
    assert rows > 20
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in cookies:
        assert secret not in logged
    assert "/nfc/httpnfclease" not in logged
    nova.close()
