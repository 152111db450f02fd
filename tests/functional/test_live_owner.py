"""A flow a live process runs is never run by a second process of the host (issue 11).

Before the flow lock, ``resume_unfinished`` called while the original process was still
streaming ran the same spawn to the end a second time: five ImportVApp calls, three destroys
and an orphan datastore folder. Here a real second process (crash_child with no cue) spawns
slowly through a throttled NFC link while this process tries every way in: the restart path,
the admin CLI with --force, and abandon. Exactly one engine acts, one import happens, the flow
ends SUCCESS, and the autouse leak check finds nothing left over. Then the same flow's lock is
free again: a process that dies releases it (the crash matrix resumes such flows).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.functional.conftest import make_conf
from tests.functional.test_cli_flows import _write_conf
from vsan_flows import api, imagecache
from vsan_flows.runtime import persistence
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def slow_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "owner.vmdk"
    disks.make_stream_optimized(path, 32 * MiB, data_mib=6)
    return path


def _flows(conf) -> list:
    with contextlib.closing(persistence.open_backend(conf)) as backend:
        return list(persistence.list_flow_details(backend))


def _vsan_flows(conf_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("vsan-flows")), "--config-file",
                           str(conf_file), "flows", *args], cwd=ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=180)


def _refused(proc: subprocess.CompletedProcess, pid: int) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("vsan-flows:")]
    assert len(lines) == 1, proc.stderr
    assert f"is being run right now by process {pid} " in lines[0], lines[0]
    return lines[0]


def test_resume_and_admin_actions_leave_a_flow_to_its_live_owner(
        simulator, wsdl_url, tmp_path, vsphere, images, control, slow_vmdk, destroy_after):
    state = tmp_path / "state"
    db_url = f"sqlite:///{tmp_path}/flows.sqlite"
    conf = make_conf(simulator, wsdl_url, state, vsan_flows__persistence_connection=db_url,
                     vsan_flows__image_store_dir=str(images.directory))
    conf_file = tmp_path / "vsan-flows.conf"
    _write_conf(conf_file, simulator, wsdl_url, state, db_url, images.directory)
    instance = f"owner-{uuid.uuid4().hex[:8]}"
    image_id = images.add_file(slow_vmdk, name="live-owner")
    imports_before = control.calls("ImportVApp")
    destroys_before = control.calls("Destroy_Task")
    control.throttle_nfc(256 * 1024, direction="upload")  # ~25 s mid-transfer
    owner = subprocess.Popen(
        [sys.executable, "-m", "tests.functional.crash_child", json.dumps({
            "sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(state), "db_url": db_url, "op": "spawn", "instance": instance,
            "image_id": image_id, "images_dir": str(images.directory), "cue": "none"})],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while control.calls("ImportVApp") == imports_before:  # the owner is importing
            assert owner.poll() is None, owner.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the owner never started its import"
            time.sleep(0.2)
        [(book, fd)] = _flows(conf)
        assert fd.state == "RUNNING"

        # the restart path (another nova-compute worker, or one started by mistake)
        outcomes = api.resume_unfinished(conf, vsphere=vsphere, images=images)
        assert outcomes == [(fd.uuid, fd.name, f"left alone: process {owner.pid} on "
                             f"{book.meta['host']} (since " + outcomes[0][2].split("(since ")[1])]
        # the admin, even when sure (--force), and whatever the action
        assert owner.poll() is None, "the owner must still be running for the CLI checks"
        _refused(_vsan_flows(conf_file, "resume", fd.uuid, "--force"), owner.pid)
        _refused(_vsan_flows(conf_file, "revert", fd.uuid, "--force", "--yes"), owner.pid)
        _refused(_vsan_flows(conf_file, "abandon", fd.uuid, "--force", "--yes"), owner.pid)
        assert owner.poll() is None, "the transfer ended before every way in was tried"

        out, err = owner.communicate(timeout=300)
        assert owner.returncode == 0, err[-3000:]
        assert "FINISHED WITHOUT BEING KILLED" in out
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        control.reset()
    destroy_after.append(instance)
    destroy_after.extend(vm["name"] for vm in control.status()["vms"]
                         if vm["name"].startswith(imagecache.name_prefix(image_id)))
    [(_book, after)] = _flows(conf)
    assert after.state == "SUCCESS"
    assert control.calls("ImportVApp") - imports_before == 1, "exactly one import"
    assert control.calls("Destroy_Task") == destroys_before, "nobody destroyed anything"
    assert not [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("vsanflows-import-")], "half-imports left"
    assert not list((state / "flows").iterdir()), "the owner's lock file outlived it"
    # nothing is left to resume, and the flow's lock is free for whoever acts next
    assert api.resume_unfinished(conf, vsphere=vsphere, images=images) == []
