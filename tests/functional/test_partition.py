"""A conductor cut off from ZooKeeper mid-flow is fenced; the conductor that takes over wins.

Issue 11's experiment, as a test: conductor A (a real `vsan-flows conductor` process) reaches
ZooKeeper only through a TCP proxy; it claims a spawn and starts a slow import. The test cuts
the proxy (traffic dropped, as a partition does; vCenter stays reachable), A's session
expires, conductor B (another real process, direct to ZooKeeper) claims the job and resumes
the flow. Without fencing, A's transfer failed when B replaced the import, A's Retry then
destroyed B's import VM (same token, same name) and imported again, and both engines wrote
the flow. With it, exactly one engine acts after the cut: the simulator's call counts show
B's one import and B's one destroy of A's half-import, one completed lease, and the flow
ends SUCCESS.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from tests.functional import tcpproxy
from tests.functional.conftest import make_conf
from tests.functional.test_jobboard import (
    SESSION_TIMEOUT,
    Conductor,
    _assert_linked_once,
    _forget_after,
    _wait_for,
    _write_conf,
)
from vsan_flows import api
from vsan_flows.runtime import jobs, persistence
from vsan_flows.simulator import disks

MiB = 1024 * 1024
#: The calls that change vCenter's inventory or a lease, for "who acted after the cut".
MUTATING = {"ImportVApp", "Destroy_Task", "HttpNfcLeaseComplete", "HttpNfcLeaseAbort",
            "UnregisterVM", "DeleteDatastoreFile_Task", "ReconfigVM_Task", "CreateVM_Task",
            "Rename_Task", "PowerOnVM_Task", "DeleteVirtualDisk_Task"}


@pytest.fixture
def proxy(zookeeper):
    p = tcpproxy.Proxy(("127.0.0.1", zookeeper.port))
    yield p
    p.close()


def _streaming(control, imports_before: int) -> bool:
    # The stream task reports progress to its lease as soon as its PUT starts (its
    # keep-alive at the first write).
    return (control.calls("ImportVApp") > imports_before
            and control.calls("HttpNfcLeaseProgress") > 0)


def test_a_partitioned_conductor_is_fenced_and_the_new_owner_finishes(
        simulator, wsdl_url, zookeeper, proxy, images, control, destroy_after, tmp_path):
    settings = {
        "vsan_flows__persistence_connection": f"sqlite:///{tmp_path}/shared-flows.sqlite",
        "vsan_flows__image_store_dir": str(images.directory),
        "vsan_flows__import_retries": 2,
        "vsan_flows__jobboard_path": f"/vsan-flows-test/{uuid.uuid4().hex[:8]}",
        "vsan_flows__jobboard_session_timeout": SESSION_TIMEOUT,
        "vsan_flows__conductor_wait_timeout": 0.2,
    }
    conf = make_conf(simulator, wsdl_url, tmp_path / "poster",
                     vsan_flows__jobboard_hosts=[zookeeper.hosts], **settings)

    def start(name: str, hosts: str) -> Conductor:
        return Conductor(name, _write_conf(tmp_path / f"{name}.conf", simulator, wsdl_url,
                                           tmp_path / name, conductor_name=name,
                                           vsan_flows__jobboard_hosts=[hosts], **settings))

    vmdk = tmp_path / "partition.vmdk"
    disks.make_stream_optimized(vmdk, 16 * MiB, data_mib=8)
    image_id = images.add_file(vmdk, name="partition")
    instance = f"partition-{uuid.uuid4().hex[:6]}"
    conductors = []
    try:
        a = start("conductor-a", proxy.address)
        conductors.append(a)
        a.wait_serving()
        # A's import crawls (8 MiB at 256 KiB/s: ~30 s) so the cut lands mid-transfer;
        # B's, the second transfer, runs at full speed.
        control.throttle_nfc(256 * 1024, count=1, direction="upload")
        imports_before = control.calls("ImportVApp")
        with jobs.connect(conf) as board:
            job_id = jobs.post(conf, api.plan(conf, "spawn", instance, image_id), board=board)
            job = next(j for j in board.iterjobs(ensure_fresh=True) if j.uuid == job_id)
            assert _wait_for(lambda: board.find_owner(job), 60, "A's claim") == a.name
            b = start("conductor-b", zookeeper.hosts)
            conductors.append(b)
            b.wait_serving()
            _wait_for(lambda: _streaming(control, imports_before), 60, "A's import streaming")
            before = dict(control.status()["calls"])
            proxy.cut()
            t_cut = time.monotonic()
            _wait_for(lambda: board.find_owner(job) == b.name, 60, "B's takeover")
            t_takeover = time.monotonic()
            result = jobs.wait(conf, job_id, 120, board=board)
            t_done = time.monotonic()
            proxy.heal()  # A comes back, to a lost session and a job it does not hold
            _wait_for(lambda: "job " + job_id + " was fenced" in a.text(), 60,
                      "A reporting the fence")
            now = control.status()["calls"]
            after = {m: n - before.get(m, 0) for m, n in now.items()
                     if n != before.get(m, 0) and m in MUTATING}
    finally:
        _forget_after(destroy_after, instance, image_id, control)
        for c in conductors:
            c.kill()
    print(f"\ntaken over {t_takeover - t_cut:.2f} s after the cut (session timeout "
          f"{SESSION_TIMEOUT:g} s); done {t_done - t_takeover:.2f} s later; "
          f"{proxy.dropped} bytes of A's ZooKeeper traffic dropped")
    assert result["instance_name"] == instance
    assert job_id in a.jobs_run() and job_id in b.jobs_run()
    fenced = a.text()
    assert "Fenced: flow" in fenced, fenced[-3000:]
    # Exactly one engine acted after the cut, B, once through its path: abort A's lease
    # (vCenter removes an import VM with its aborted lease), import, complete, turn the import
    # into the cache entry, create the instance. A neither reverted nor imported again.
    assert after == {"HttpNfcLeaseAbort": 1, "ImportVApp": 1, "HttpNfcLeaseComplete": 1,
                     "ReconfigVM_Task": 1, "CreateVM_Task": 1}, after
    _assert_linked_once(control, instance, image_id)
    assert not [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("vsanflows-import-")], "half-imports left"
    assert not control.status().get("leases"), "a lease was left open"
    # A wrote nothing after its fence: the stored flow is B's, ended SUCCESS with B's outcome
    # (A's transfer failed after B's took over; A's record of that would say otherwise).
    backend = persistence.open_backend(conf)
    try:
        flow_uuid = jobs._find_flow(backend, job_id)
        with contextlib.closing(backend.get_connection()) as conn:
            fd = conn.get_flow_details(flow_uuid, lazy=False)
    finally:
        backend.close()
    assert fd.state == "SUCCESS", fd.state
    assert fd.meta["outcome"]["state"] == "SUCCESS"
    assert {ad.name: ad.state for ad in fd if ad.state != "SUCCESS"} == {}
