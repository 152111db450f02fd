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


def _run(test: str, simulator, glance_api, rest_disks, tmp_path, **extra) -> dict:
    setup = {"test": test, "state_dir": str(tmp_path / "state"), **extra,
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


def test_sigkill_mid_spawn_then_restart_server_error_flow_reverted(simulator, control,
                                                                   glance_api, rest_disks,
                                                                   tmp_path):
    """nova-compute SIGKILLed while the image streams into the import lease; on restart
    nova's init_host sets the BUILDING instance ERROR (nova's rule for an interrupted build:
    no reschedule from a restart), our init_host reverts the flow; deleting the server
    through the API then leaves nothing.

    What runs where: the killed nova-compute is a real process (nova's VMware driver code +
    ours, nova objects, glance-api; tests/functional/nova_scenario.py) sharing this host name
    and flow store with the restarted one, which is nova's harness (REST API, conductor,
    scheduler, compute). nova's harness cannot itself be SIGKILLed and restarted: its
    services share one process and its databases live and die with that process (fake:/
    messaging cannot reach a compute service in another process), so the instance's row is
    written back in the restarted harness as it stood at the kill.
    """
    from tests.functional import nova_kill, nova_scenario

    sim = {"host": simulator.host, "port": simulator.port, "username": simulator.username,
           "password": simulator.password}
    conf_file = tmp_path / "nova.conf"
    conf_file.write_text(nova_scenario.nova_conf_text(sim, str(tmp_path / "state"),
                                                       "compute-vsan-1", glance_api.url))
    info = nova_kill.spawn_and_kill_mid_import(
        {"conf_file": str(conf_file), "good": rest_disks["good"]}, control, tmp_path)

    facts = _run("test_restart_after_kill", simulator, glance_api, rest_disks, tmp_path,
                 uuid=info["uuid"], image=info["image"])
    before = facts["vms_before_restart"]
    assert info["uuid"] in before  # nova's VM of the instance (renamed once spawned)
    assert [n for n in before if n.startswith("vsanflows-import-")]  # our half-import
    assert facts["server_after_restart"] == {"status": "ERROR", "task_state": None}
    after = facts["vms_after_restart"]
    assert not [n for n in after if n.startswith(("vsanflows-import-", "vsanflows-image-"))]
    assert facts["leases_after_restart"] == 0
    assert _ours_or_novas(facts["vms_after_delete"]) == []
    assert facts["leases_after_delete"] == 0
