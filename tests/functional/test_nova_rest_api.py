"""Acceptance of the compute driver through nova's REST API (nova's own functional harness).

Each scenario runs in a child process (tests/functional/nova_rest_child.py: nova's harness
patches process globals); the simulator and glance-api are this session's, so what the child
left behind is seen here, by the leak check too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vsan_flows.simulator import disks

MiB = 1024 * 1024
GiB = 1024 * MiB
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rest_disks(tmp_path_factory):
    work = tmp_path_factory.mktemp("nova-rest-disks")
    return {"good": str(disks.make_stream_optimized(work / "good.vmdk", 64 * MiB, data_mib=4)),
            "bad": str(disks.make_monolithic_sparse(work / "sparse.vmdk", 8 * MiB))}


def _run(test: str, simulator, glance_api, rest_disks, tmp_path) -> dict:
    setup = {"test": test, "state_dir": str(tmp_path / "state"),
             "glance_url": glance_api.url, "control_url": simulator.control.url,
             "sim": {"host": simulator.host, "port": simulator.port,
                     "username": simulator.username, "password": simulator.password},
             **rest_disks}
    setup_file = tmp_path / "setup.json"
    setup_file.write_text(json.dumps(setup))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("nova_rest_child.py")),
                           str(setup_file)], capture_output=True, text=True, timeout=900,
                          cwd=str(ROOT))
    (tmp_path / "child.log").write_text(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-6000:]
    facts = json.loads(lines[-1][len("RESULT "):])
    assert proc.returncode == 0 and not facts["problems"], \
        "\n".join(tb for _, tb in facts["problems"]) or proc.stderr[-6000:]
    return facts


def _ours_or_novas(names: list[str]) -> list[str]:
    """VMs nova or our flows made (an instance 'name (uuid)', or vsanflows-*)."""
    return [n for n in names if n.startswith("vsanflows-") or "(" in n]


def test_boot_snapshot_boot_delete_and_cache_pass(simulator, control, glance_api, rest_disks,
                                                  tmp_path):
    facts = _run("test_lifecycle", simulator, glance_api, rest_disks, tmp_path)
    api, vm = facts["first_api"], facts["first_vm"]
    # nova's API: ACTIVE, running, the flavor it asked for
    assert api["status"] == "ACTIVE" and api["OS-EXT-STS:power_state"] == 1
    assert (api["flavor"]["ram"], api["flavor"]["vcpus"], api["flavor"]["disk"]) == (256, 2, 1)
    # vCenter: the VM has that flavor and nova's identity, its root disk is a 1 GB link
    assert vm["instance_uuid"] == facts["first_id"] == vm["nvp_vm_uuid"]
    assert (vm["memory_mb"], vm["vcpus"], vm["root_bytes"]) == (256, 2, GiB)
    assert facts["cache_disks"] and vm["root_parent"] in facts["cache_disks"]
    # createImage: an active streamOptimized image; a server booted from it reads the data
    # the first one's guest wrote
    snap = facts["snapshot"]
    assert snap["status"] == "active" and snap["disktype"] == "streamOptimized", snap
    assert facts["second_api"]["status"] == "ACTIVE"
    assert facts["second_api"]["flavor"]["disk"] == 2
    assert facts["second_vm"]["root_bytes"] == 2 * GiB
    assert facts["second_vm"]["root_parent"] in facts["cache_disks_2"]
    assert facts["second_vm"]["root_parent"] != vm["root_parent"]  # the snapshot's own entry
    assert facts["second_reads"] == facts["marker"]
    # both deleted: only the image cache is left (two entries: the image and the snapshot)
    left = _ours_or_novas(facts["vms_after_delete"])
    assert left and all(n.startswith("vsanflows-image-") for n in left), left
    assert len(left) == 2
    assert facts["leases_after_delete"] == 0
    # nova's periodic image-cache pass removes them
    assert _ours_or_novas(facts["vms_after_cache_pass"]) == []


def test_bad_image_goes_error_with_our_message_nothing_left(simulator, control, glance_api,
                                                            rest_disks, tmp_path):
    facts = _run("test_bad_image", simulator, glance_api, rest_disks, tmp_path)
    assert facts["bad_api"]["status"] == "ERROR"
    fault = facts["bad_api"]["fault"]
    # nova's abort (ImageUnacceptable), with our reason (nova cuts messages at 255 chars)
    assert "aborted: Image" in fault["message"] and "is unacceptable" in fault["message"]
    assert "cannot be deployed: a monolithicSparse VMDK" in fault["message"], fault
    assert fault["code"] == 500
    # ImageUnacceptable aborts the build: one attempt on one host, no reschedule
    assert facts["bad_actions"] == ["create"]
    assert _ours_or_novas(facts["vms_after_error"]) == [], facts["vms_after_error"]
    assert facts["leases_after_error"] == 0
    assert _ours_or_novas(facts["vms_after_cache_pass"]) == []
