"""The simulator's latency profile: under ``vcenter`` calls take a vCenter's time, under
``none`` (the default every other test runs with) they do not.

Timings are asserted as lower bounds only (a delay the simulator adds cannot be shortened by
a loaded machine); "no delay" is asserted by state (a task already finished, a lease already
ready), never by a wall-clock upper bound.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from vsan_flows.simulator import disks
from vsan_flows.simulator.control import ControlError
from vsan_flows.vsphere import transfer, vm

from .test_simulator import _find_vm, _import_lease, _upload, placement_for

MiB = 1024 * 1024


@pytest.fixture
def latency(control):
    """The control client; whatever profile a test sets, the next test gets ``none`` back."""
    try:
        yield control
    finally:
        control.set_latency("none")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "disk16.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=4)
    return path


def _lease_state(session, lease) -> str:
    return str(transfer.lease_state(session, lease))


def _task_state(session, task) -> str:
    from oslo_vmware import vim_util

    info = session.invoke_api(vim_util, "get_object_property", session.vim, task, "info")
    return str(info.state)


def _new_import(session, prefix):
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return name, _import_lease(session, placement_for(session), name)


def _cleanup(session, name, lease):
    transfer.abort(session, lease)
    left = _find_vm(session, name)
    if left is not None:
        vm.destroy(session, left)


def test_profiles_are_named_and_checked(latency):
    assert latency.latency()["name"] == "none"
    assert latency.latency()["methods_ms"] == {}
    p = latency.set_latency("vcenter")
    assert p["name"] == "vcenter"
    for method in ("ImportVApp", "CloneVM_Task", "CreateSnapshot_Task", "ReconfigVM_Task",
                   "PowerOnVM_Task", "Login", "RetrievePropertiesEx"):
        assert p["methods_ms"][method] > 0, method
    assert p["lease_init_ms"] > 0 and p["nfc_bytes_per_second"] > 0
    # Overrides start from the profile named (or the one in force) and say so.
    p = latency.set_latency(methods_ms={"CloneVM_Task": 10}, scale=0.5)
    assert p["name"] == "vcenter+custom" and p["methods_ms"]["CloneVM_Task"] == 10
    assert p["methods_ms"]["PowerOnVM_Task"] == 2500 and p["scale"] == 0.5
    for bad, words in (({"profile": "vcentre"}, "unknown latency profile \"vcentre\""),
                       ({"methods_ms": {"CloneVm": 5}}, "unknown SOAP method \"CloneVm\""),
                       ({"lease_init_ms": -1}, "lease_init_ms must be >= 0"),
                       ({"scale": 1000.0}, "scale must be between 0 and 100")):
        with pytest.raises(ControlError, match=words):
            latency.set_latency(**bad)
    assert latency.latency()["name"] == "vcenter+custom"  # a refused change changes nothing
    latency.reset()  # fault knobs only: the profile is an environment, not a fault
    assert latency.latency()["name"] == "vcenter+custom"


def test_lease_and_task_wait_under_vcenter_and_not_under_none(vim_session, latency):
    # none: the lease is ready and a task finished the moment the call returns.
    name, lease = _new_import(vim_session, "lat-none")
    try:
        assert _lease_state(vim_session, lease) == "ready"
        transfer.complete(vim_session, lease)
        task = vim_session.invoke_api(vim_session.vim, "Destroy_Task",
                                      _find_vm(vim_session, name))
        assert _task_state(vim_session, task) == "success"
    except BaseException:
        _cleanup(vim_session, name, lease)
        raise

    p = latency.set_latency("vcenter", scale=0.5)
    init_s = p["lease_init_ms"] * p["scale"] / 1000
    call_s = p["methods_ms"]["ImportVApp"] * p["scale"] / 1000
    t0 = time.monotonic()
    name, lease = _new_import(vim_session, "lat-vc")
    try:
        assert time.monotonic() - t0 >= call_s * 0.9
        t1 = time.monotonic()
        assert _lease_state(vim_session, lease) == "initializing"
        transfer.wait_ready(vim_session, lease)
        assert time.monotonic() - t0 >= init_s * 0.9
        transfer.complete(vim_session, lease)
        assert time.monotonic() - t1 >= p["methods_ms"]["HttpNfcLeaseComplete"] * p["scale"] \
            / 1000 * 0.9
        task = vim_session.invoke_api(vim_session.vim, "Destroy_Task",
                                      _find_vm(vim_session, name))
        t2 = time.monotonic()
        assert _task_state(vim_session, task) == "running"
        vim_session.wait_for_task(task)
        assert time.monotonic() - t2 >= p["methods_ms"]["Destroy_Task"] * p["scale"] / 1000 * 0.8
        assert _find_vm(vim_session, name) is None
    except BaseException:
        _cleanup(vim_session, name, lease)
        raise


def test_abort_while_initializing_rolls_the_import_back(vim_session, latency):
    latency.set_latency("vcenter", scale=0.2)
    name, lease = _new_import(vim_session, "lat-abort")
    assert _lease_state(vim_session, lease) == "initializing"
    assert _find_vm(vim_session, name) is not None
    transfer.abort(vim_session, lease)
    # vCenter removes what an aborted import created; the leak check also looks after this test.
    assert _find_vm(vim_session, name) is None


def test_nfc_bandwidth_per_transfer_and_shared(vim_session, simulator, latency, image):
    size = image.stat().st_size
    # Each transfer alone at size/s: one upload takes at least a second.
    latency.set_latency("none")
    latency.set_latency(nfc_bytes_per_second=size)
    name, lease = _new_import(vim_session, "lat-nfc")
    try:
        t0 = time.monotonic()
        assert _upload(vim_session, lease, image, simulator.host, simulator.port) \
            .response_status == 200
        assert time.monotonic() - t0 >= 0.9
    finally:
        _cleanup(vim_session, name, lease)

    # Shared by both at size/s, unlimited each: two at once take at least two seconds.
    latency.set_latency("none")
    latency.set_latency(nfc_shared_bytes_per_second=size)
    made = [_new_import(vim_session, "lat-shared") for _ in range(2)]
    statuses: list = []
    try:
        def upload(lease):
            statuses.append(_upload(vim_session, lease, image, simulator.host,
                                    simulator.port).response_status)

        threads = [threading.Thread(target=upload, args=(lease,)) for _, lease in made]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert statuses == [200, 200]
        assert time.monotonic() - t0 >= 1.8
    finally:
        for name, lease in made:
            _cleanup(vim_session, name, lease)
