"""The simulator's leases behave as vCenter's do for a session that did not create them.

A lease of a dead process is found through its task on the VM (recentTask), ends when that task
is cancelled, times out without HttpNfcLeaseProgress, and while held blocks Destroy of its VM.
(Sources in tools/vcsim/simulator-extra/vsan_leases.go.)
"""

from __future__ import annotations

import time
import uuid

import pytest
from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from vsan_flows.vsphere import inventory, leases, transfer, vm


def _placement(session):
    cluster = inventory.cluster_by_name(session, None)
    return inventory.resource_pool(session, cluster), inventory.vm_folder(session, cluster)


def _import(session, name):
    pool, folder = _placement(session)
    spec = vm.import_spec(session.vim.client.factory, name, "vsanDatastore", 16 * 1024)
    lease = session.invoke_api(session.vim, "ImportVApp", pool, spec=spec, folder=folder)
    transfer.wait_ready(session, lease)
    entity = transfer.lease_entity(session, lease)
    return lease, entity


def _prop(session, obj, name):
    return session.invoke_api(vim_util, "get_object_property", session.vim, obj, name)


def _lease_task(session, vm_ref):
    recent = _prop(session, vm_ref, "recentTask")
    (task,) = getattr(recent, "ManagedObjectReference", None) or []
    return task, _prop(session, task, "info")


@pytest.fixture
def an_import(vim_session, vsphere):
    made = []

    def start():
        name = f"leasemodel-{uuid.uuid4().hex[:6]}"
        made.append((name, *_import(vim_session, name)))
        return made[-1]

    yield start
    for _name, lease, entity in made:
        transfer.abort(vim_session, lease)
        if vm.exists(vim_session, entity):
            vm.destroy(vim_session, entity)


def test_a_lease_is_visible_as_a_running_cancelable_task_on_its_vm(vim_session, an_import):
    _name, lease, entity = an_import()
    task, info = _lease_task(vim_session, entity)
    assert info.state == "running" and info.cancelable
    assert info.descriptionId == "ResourcePool.ImportVAppLRO"
    assert _prop(vim_session, lease, "info").leaseTimeout == 300


def test_destroy_is_blocked_while_the_lease_is_held(vim_session, an_import):
    _name, _lease, entity = an_import()
    with pytest.raises(vexc.VimException) as err:
        vim_session.wait_for_task(vim_session.invoke_api(vim_session.vim, "Destroy_Task",
                                                         entity))
    assert type(err.value).__name__ == "TaskInProgress" or \
        "TaskInProgress" in (getattr(err.value, "fault_list", None) or []), repr(err.value)
    assert vm.exists(vim_session, entity)


def test_cancelling_the_task_ends_the_lease_and_the_import(vim_session, vsphere, control,
                                                          an_import):
    _name, lease, entity = an_import()
    assert leases.release_held(vsphere, vim_util.get_moref_value(entity)) == 1
    assert not vm.exists(vim_session, entity), "an aborted import keeps no VM"
    assert not [x for x in control.status()["leases"]
                if x["moref"] == vim_util.get_moref_value(lease)]


def test_a_lease_without_progress_times_out(vim_session, control, an_import):
    control.lease_timeout(2)
    _name, lease, entity = an_import()
    assert _prop(vim_session, lease, "info").leaseTimeout == 2
    task, _info = _lease_task(vim_session, entity)
    deadline = time.monotonic() + 60
    while transfer.lease_state(vim_session, lease) == "ready":
        assert time.monotonic() < deadline, "the lease never timed out"
        vim_session.invoke_api(vim_session.vim, "SessionIsActive",
                               vim_session.vim.service_content.sessionManager,
                               sessionID=vim_session._session_id,
                               userName=vim_session._session_username)
        time.sleep(0.5)
    assert transfer.lease_state(vim_session, lease) == "error"
    assert _prop(vim_session, task, "info").state == "error"
    assert not vm.exists(vim_session, entity), "a timed-out import keeps no VM"


def test_progress_keeps_the_lease_alive(vim_session, control, an_import):
    control.lease_timeout(2)
    _name, lease, _entity = an_import()
    for _ in range(8):  # 4 s of keep-alives, twice the timeout
        vim_session.invoke_api(vim_session.vim, "HttpNfcLeaseProgress", lease, percent=10)
        time.sleep(0.5)
    assert transfer.lease_state(vim_session, lease) == "ready"
