"""Conductors on a real ZooKeeper jobboard: exactly-once, spread, takeover after kill -9.

Each conductor is a real `vsan-flows conductor` process with its own config file; they share
a throwaway ZooKeeper (its own JVM, port and temp dir) and one sqlite flow store, and speak
to the simulator. The test process posts jobs through the library (and once through the
CLI), and proves from the simulator's call counts and VMs that nothing ran twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.functional import zookeeper as zk_helper
from tests.functional.conftest import make_conf
from vsan_flows import api, imagecache
from vsan_flows.runtime import conductor, jobs
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
SESSION_TIMEOUT = 2.0  # ZooKeeper session of each conductor: bounds the takeover time


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobdisks") / "job.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=16)
    return path


@pytest.fixture
def rig(simulator, wsdl_url, zookeeper, images, tmp_path):
    """Settings shared by the test process and its conductors (one jobboard path per test)."""
    settings = {
        "vsan_flows__persistence_connection": f"sqlite:///{tmp_path}/shared-flows.sqlite",
        "vsan_flows__image_store_dir": str(images.directory),
        "vsan_flows__import_retries": 2,
        "vsan_flows__jobboard_hosts": [zookeeper.hosts],
        "vsan_flows__jobboard_path": f"/vsan-flows-test/{uuid.uuid4().hex[:8]}",
        "vsan_flows__jobboard_session_timeout": SESSION_TIMEOUT,
        "vsan_flows__conductor_wait_timeout": 0.2,
    }
    conf = make_conf(simulator, wsdl_url, tmp_path / "poster", **settings)
    conductors: list[Conductor] = []

    def start(name: str) -> Conductor:
        c = Conductor(name, _write_conf(tmp_path / f"{name}.conf", simulator, wsdl_url,
                                        tmp_path / name, conductor_name=name, **settings))
        conductors.append(c)
        return c

    yield conf, start
    for c in conductors:
        c.kill()


def _write_conf(path: Path, sim, wsdl_url, state_dir: Path, **options) -> Path:
    vmware = {"host_ip": sim.host, "host_port": sim.port, "host_username": sim.username,
              "host_password": sim.password, "insecure": True, "wsdl_location": wsdl_url,
              "task_poll_interval": 0.05, "api_retry_count": 2}
    flows = {"state_dir": str(state_dir)}
    for key, value in options.items():
        flows[key.removeprefix("vsan_flows__")] = (",".join(value) if isinstance(value, list)
                                                  else value)
    lines = ["[vmware]", *(f"{k} = {v}" for k, v in vmware.items()),
             "[vsan_flows]", *(f"{k} = {v}" for k, v in flows.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


class Conductor:
    """A `vsan-flows conductor` process; its stderr (INFO logs) tells what it ran."""

    def __init__(self, name: str, conf_file: Path) -> None:
        self.name = name
        self.log = conf_file.with_suffix(".log")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vsan_flows.cmd.cli", "--config-file", str(conf_file),
                 "conductor"], cwd=ROOT, stdout=err, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "serving" not in self.text():
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} never served:\n{self.text()}"
            time.sleep(0.05)

    def jobs_run(self) -> list[str]:
        return re.findall(rf"Conductor {re.escape(self.name)} runs job (\S+)", self.text())

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _cli(conf_file: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsan_flows.cmd.cli", "--config-file",
                           str(conf_file), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _forget_after(destroy_after, instance: str, image_id: str, control) -> None:
    """Instance first (it links to the cache VM), then this image's cache entry."""
    destroy_after.append(instance)
    destroy_after.extend(vm["name"] for vm in control.status()["vms"]
                         if vm["name"].startswith(imagecache.vm_name(image_id, "")))


def _vms_named(control, name: str) -> list[dict]:
    return [vm for vm in control.status()["vms"] if vm["name"] == name]


def _assert_linked_once(control, instance: str, image_id: str) -> None:
    """One VM of that name, one cache entry of the image, the VM's disk linked to it."""
    vms = _vms_named(control, instance)
    assert len(vms) == 1
    cached = [vm for vm in control.status()["vms"]
              if vm["name"].startswith(imagecache.vm_name(image_id, ""))]
    assert len(cached) == 1
    assert vms[0]["disks"][0]["parent"] == cached[0]["disks"][0]["file"]


def test_two_conductors_run_each_job_exactly_once(rig, images, vmdk, control, destroy_after,
                                                  tmp_path):
    conf, start = rig
    a, b = start("conductor-a"), start("conductor-b")
    a.wait_serving()
    b.wait_serving()
    before = control.calls("ImportVApp")
    work = []
    for i in range(5):
        image_id = images.add_file(vmdk, name=f"job-{i}")  # one image each: no shared cache
        work.append((f"job-{i}-{uuid.uuid4().hex[:6]}", image_id))
    # Every transfer takes ~2 s: a conductor is busy long enough for the other to claim.
    control.throttle_nfc(8 * MiB, count=len(work) + 1, direction="upload")
    with jobs.connect(conf) as board:
        job_ids = [jobs.post(conf, api.plan(conf, "spawn", inst, image_id), board=board)
                   for inst, image_id in work]

    # The CLI: list shows the board, post --wait runs one more job and prints its facts.
    listed = _cli(a.log.with_suffix(".conf"), "jobs", "list", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    cli_instance = f"job-cli-{uuid.uuid4().hex[:6]}"
    cli_image = images.add_file(vmdk, name="job-cli")
    posted = _cli(a.log.with_suffix(".conf"), "jobs", "post", "spawn", cli_instance,
                  cli_image, "--wait", "--timeout", "90")
    work.append((cli_instance, cli_image))
    try:
        assert posted.returncode == 0, posted.stderr
        cli_job = posted.stdout.splitlines()[0].strip()
        assert f'"instance_name": "{cli_instance}"' in posted.stdout
        results = [jobs.wait(conf, job_id, 90) for job_id in job_ids]
    finally:
        for inst, image_id in work:
            _forget_after(destroy_after, inst, image_id, control)

    for (inst, _), result in zip(work, results, strict=False):
        assert result["instance_name"] == inst
        assert len(_vms_named(control, inst)) == 1, inst
    assert control.calls("ImportVApp") - before == len(work), "an import ran twice"
    assert {r["id"] for r in json.loads(listed.stdout)} <= set(job_ids)

    assert a.stop() == 0 and b.stop() == 0
    ran_a, ran_b = a.jobs_run(), b.jobs_run()
    all_run = ran_a + ran_b
    assert sorted(all_run) == sorted([*job_ids, cli_job]), (ran_a, ran_b)
    print(f"\ndistribution: {a.name} ran {len(ran_a)}, {b.name} ran {len(ran_b)}")
    assert ran_a and ran_b, f"one conductor did all the work: {ran_a} / {ran_b}"
    with jobs.connect(conf) as board:
        assert list(board.iterjobs(ensure_fresh=True)) == []


def test_a_killed_conductors_job_is_taken_over_and_completed(rig, images, vmdk, control,
                                                             destroy_after):
    conf, start = rig
    a, b = start("conductor-a"), start("conductor-b")
    a.wait_serving()
    b.wait_serving()
    image_id = images.add_file(vmdk, name="takeover")
    instance = f"takeover-{uuid.uuid4().hex[:6]}"
    before = control.calls("ImportVApp")
    progress_before = control.calls("HttpNfcLeaseProgress")
    control.throttle_nfc(2 * MiB, direction="upload")  # 16 MiB: ~8 s on the wire
    by_name = {a.name: a, b.name: b}
    try:
        with jobs.connect(conf) as board:
            t_post = time.monotonic()
            job_id = jobs.post(conf, api.plan(conf, "spawn", instance, image_id), board=board)
            job = next(j for j in board.iterjobs(ensure_fresh=True) if j.uuid == job_id)
            owner = _wait_for(lambda: board.find_owner(job), 30, "a claim")
            t_claim = time.monotonic()
            # The stream's lease keep-alive goes out at its first write; the simulator counts
            # a lease's bytes only when the PUT has ended, which showed the transfer under
            # way only in the instant before its lease was completed.
            _wait_for(lambda: control.calls("HttpNfcLeaseProgress") > progress_before,
                      30, "bytes moving")
            victim = by_name[owner]
            survivor = by_name[next(n for n in by_name if n != owner)]
            victim.kill()
            t_kill = time.monotonic()
            control.reset()  # the restarted transfer runs at full speed
            _wait_for(lambda: board.find_owner(job) == survivor.name, 60, "the takeover")
            t_takeover = time.monotonic()
            result = jobs.wait(conf, job_id, 90, board=board)
            t_done = time.monotonic()
    finally:
        _forget_after(destroy_after, instance, image_id, control)
    print(f"\nclaimed {t_claim - t_post:.2f} s after post; taken over "
          f"{t_takeover - t_kill:.2f} s after kill -9 (session timeout {SESSION_TIMEOUT:g} s); "
          f"done {t_done - t_takeover:.2f} s later")
    assert result["instance_name"] == instance
    assert job_id in survivor.jobs_run() and job_id in victim.jobs_run()
    _assert_linked_once(control, instance, image_id)
    # The cut transfer and its restart through the Retry; nothing else imported.
    assert control.calls("ImportVApp") - before == 2
    assert t_takeover - t_kill < SESSION_TIMEOUT + 5
    assert survivor.stop() == 0


def _wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = fn()
            if value:
                return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_unreachable_zookeeper_is_one_clear_error(tmp_path):
    port = zk_helper.free_port()  # nothing listens there
    conf_file = tmp_path / "nozk.conf"
    conf_file.write_text(f"[vsan_flows]\nstate_dir = {tmp_path}\n"
                         f"jobboard_hosts = 127.0.0.1:{port}\n")
    procs = {cmd: subprocess.Popen(
        [sys.executable, "-m", "vsan_flows.cmd.cli", "--config-file", str(conf_file), *cmd],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in (("jobs", "list"), ("jobs", "post", "spawn", "vm1", "img1"),
                    ("conductor",))}
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (cmd, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (cmd, err)
        assert lines[0].startswith("vsan-flows: error: cannot reach the ZooKeeper jobboard at "
                                   f"127.0.0.1:{port}"), lines[0]
        assert "jobboard_hosts" in lines[0] and "Traceback" not in err


def test_in_process_conductor_reports_failures_and_releases_on_stop(rig, images, vmdk,
                                                                    control, vsphere,
                                                                    destroy_after):
    """run_conductor as a library call: a failed flow's error reaches wait(); a stop in the
    middle of a transfer lets it finish, suspends the flow and releases the job, and the next
    conductor completes it without transferring again."""
    import threading

    conf, _ = rig
    live = api.open_handles(conf, vsphere=vsphere, images=images).transients()
    missing = jobs.post(conf, api.plan(conf, "spawn", f"nothing-{uuid.uuid4().hex[:6]}",
                                       "no-such-image"))
    counts = conductor.run_conductor(conf, lambda: live, max_jobs=1)
    assert counts == {"consumed": 1, "released": 0, "trashed": 0}
    with pytest.raises(jobs.JobFailed) as failed:
        jobs.wait(conf, missing, 10)
    assert failed.value.error_type.endswith("ImageNotFound"), failed.value.error_type
    assert "no-such-image" in str(failed.value)

    image_id = images.add_file(vmdk, name="stop")
    instance = f"stopped-{uuid.uuid4().hex[:6]}"
    before = control.calls("ImportVApp")
    progress_before = control.calls("HttpNfcLeaseProgress")
    control.throttle_nfc(4 * MiB, direction="upload")  # ~4 s on the wire
    job_id = jobs.post(conf, api.plan(conf, "spawn", instance, image_id))
    stop = threading.Event()
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        conductor.run_conductor(conf, lambda: live, stop_event=stop)))
    try:
        worker.start()
        _wait_for(lambda: control.calls("HttpNfcLeaseProgress") > progress_before,
                  30, "bytes moving")  # the keep-alive at the stream's first write
        stop.set()
        worker.join(60)
        assert not worker.is_alive()
        assert outcome == {"consumed": 0, "released": 1, "trashed": 0}
        with jobs.connect(conf) as board:
            (job,) = [j for j in board.iterjobs(ensure_fresh=True) if j.uuid == job_id]
            assert job.state == "UNCLAIMED"
        assert conductor.run_conductor(conf, lambda: live, max_jobs=1)["consumed"] == 1
        result = jobs.wait(conf, job_id, 10)
    finally:
        _forget_after(destroy_after, instance, image_id, control)
    assert result["instance_name"] == instance
    assert control.calls("ImportVApp") - before == 1, "the finished transfer ran again"


def test_a_job_whose_flow_a_local_process_runs_is_left_alone_then_run(rig, images, vmdk, control,
                                                                      vsphere, destroy_after):
    """While a process of this host runs a job's flow outside the board (an admin's `flows
    resume`), the conductor releases the job and looks again later, with a growing wait —
    not claim-refuse-release in a tight loop — and runs it once that process let go."""
    import threading

    from vsan_flows.runtime import flowlock

    conf, _ = rig
    live = api.open_handles(conf, vsphere=vsphere, images=images).transients()
    image_id = images.add_file(vmdk, name="busy")
    instance = f"busy-{uuid.uuid4().hex[:6]}"
    job_id = jobs.post(conf, api.plan(conf, "spawn", instance, image_id))
    with jobs.connect(conf) as board:
        (job,) = [j for j in board.iterjobs(ensure_fresh=True) if j.uuid == job_id]
        book_uuid = job.book_uuid
    admin = flowlock.for_conf(conf)  # what `flows resume` in another process holds
    admin.acquire(book_uuid)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        conductor.run_conductor(conf, lambda: live, max_jobs=1)))
    try:
        try:
            worker.start()
            time.sleep(3.5)
            assert not any(vm["name"] == instance for vm in control.status()["vms"]), \
                "the conductor ran the flow while another process held it"
        finally:
            admin.release(book_uuid)
        worker.join(60)
        assert not worker.is_alive()
        result = jobs.wait(conf, job_id, 10)
    finally:
        _forget_after(destroy_after, instance, image_id, control)
    assert result["instance_name"] == instance
    assert outcome["consumed"] == 1
    # Looked at after 0, 1 and 3 s while busy, then once more after 7 s at the latest.
    assert 1 <= outcome["released"] <= 4, outcome
