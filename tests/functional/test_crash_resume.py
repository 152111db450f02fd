"""SIGKILL a real compute process at every task boundary and mid-transfer; resume in another.

Each case: a child process runs spawn or snapshot on a persistent store and kills itself with
SIGKILL at the cue; this process (a "restarted compute service" on the same host and store)
calls resume_unfinished(); the flow must end completed or fully rolled back, nothing may be
done twice with a visible effect, and the leak check must come out clean.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.functional.conftest import SERVICE_TOKEN, glance_overrides, make_conf
from vsan_flows import api, exceptions, imagecache
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

SPAWN_ATOMS = ["ValidateStreamOptimizedImage", "PickVsanDatastore", "LookupImageCache",
               "CreateImportLease", "StreamDiskToLease", "CompleteLease", "RegisterShadowVM",
               "CloneLinkedDisk"]
SPAWN_CUES = [f"{a}:before" for a in SPAWN_ATOMS] + ["CloneLinkedDisk:after", "transfer"]
SNAPSHOT_ATOMS = ["ReserveImage", "ReadInstance", "CreateVmSnapshot", "CloneFromSnapshot",
                  "CreateExportLease", "StreamDiskToImage", "CompleteLease", "Cleanup"]
SNAPSHOT_CUES = [f"{a}:before" for a in SNAPSHOT_ATOMS] + ["Cleanup:after", "transfer"]
# Killed inside each vSphere call that changes something: vCenter acted and answered, the
# process died before it handled the answer (nothing of it saved).
SPAWN_CALLS = ["call:ImportVApp", "call:HttpNfcLeaseComplete", "call:ReconfigVM_Task",
               "call:CreateVM_Task"]
SNAPSHOT_CALLS = ["call:CreateSnapshot_Task", "call:CloneVM_Task", "call:ExportVm",
                  "call:HttpNfcLeaseComplete", "call:RemoveSnapshot_Task", "call:Destroy_Task"]
SPAWN_CUES += SPAWN_CALLS
SNAPSHOT_CUES += SNAPSHOT_CALLS
# Cues after which resume legitimately starts the transfer over with a fresh lease.
RESTARTS_TRANSFER = {"StreamDiskToLease:before", "StreamDiskToImage:before", "transfer",
                     "call:ImportVApp", "call:ExportVm"}


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "crash.vmdk"
    disks.make_stream_optimized(path, 64 * MiB, data_mib=16)
    return path


# What the guest writes before the snapshot: unaligned, inside and outside the image's data.
WRITES_A = [(3 * MiB + 511, random.Random(11).randbytes(64 * 1024)),
            (50 * MiB + 1, random.Random(12).randbytes(4096))]


@pytest.fixture(scope="module")
def vmdk_raw(vmdk, tmp_path_factory) -> bytes:
    raw = tmp_path_factory.mktemp("raw") / "crash.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)],
                   check=True)
    return raw.read_bytes()


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# Written while the killed service is down, once the VM snapshot exists: never in the image,
# never lost from the instance.
WRITES_B = [(3 * MiB + 511 + 1000, random.Random(13).randbytes(8192)),
            (30 * MiB, random.Random(14).randbytes(4096))]
AFTER_VM_SNAPSHOT = {"CloneFromSnapshot:before", "CreateExportLease:before",
                     "StreamDiskToImage:before", "CompleteLease:before", "transfer",
                     "Cleanup:before", "Cleanup:after", "call:CreateSnapshot_Task",
                     "call:CloneVM_Task", "call:ExportVm", "call:HttpNfcLeaseComplete",
                     "call:RemoveSnapshot_Task", "call:Destroy_Task"}


def _with(content: bytes, writes) -> bytes:
    out = bytearray(content)
    for offset, data in writes:
        out[offset:offset + len(data)] = data
    return bytes(out)


def _with_a(content: bytes) -> bytes:
    return _with(content, WRITES_A)


def _image_raw(images, image_id, tmp_path) -> bytes:
    vmdk, raw = tmp_path / "image.vmdk", tmp_path / "image.raw"
    with images.open(image_id) as src, open(vmdk, "wb") as dst:
        while chunk := src.read(MiB):
            dst.write(chunk)
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)],
                   check=True)
    return raw.read_bytes()


# sqlite (the default store) runs every cue. On PostgreSQL and MariaDB - where what differs
# is the persistence layer, not the flow - a crash before each kind of step runs: before a
# vCenter object exists, mid-transfer, right before the transfer, before the step that
# registers or cleans up, and after the last one. (The whole matrix on three databases took
# a third of the suite.)
SERVER_SPAWN_CUES = ["PickVsanDatastore:before", "StreamDiskToLease:before",
                     "RegisterShadowVM:before", "CloneLinkedDisk:after", "transfer",
                     "call:ImportVApp"]
SERVER_SNAPSHOT_CUES = ["CreateVmSnapshot:before", "StreamDiskToImage:before",
                        "Cleanup:before", "Cleanup:after", "transfer", "call:ExportVm"]


# With Glance as the image service (sqlite only: the store of flows is not what differs),
# the cues where Glance holds something the crash can cut or leave behind: spawn - right
# before the download, mid-download (the killed reader must not hold glance-api's only
# worker), after it (resume must not read again); snapshot - before the image is reserved,
# before the upload, mid-upload (Glance puts the image back to queued) and after it (the
# image is active: resume must not upload again). The rest are vCenter-only steps the local
# store already covers.
GLANCE_SPAWN_CUES = ["StreamDiskToLease:before", "transfer", "CompleteLease:before"]
GLANCE_SNAPSHOT_CUES = ["ReserveImage:before", "StreamDiskToImage:before", "transfer",
                        "CompleteLease:before"]


def _matrix(cues: list[str], server_cues: list[str],
            glance_cues: list[str] = ()) -> list[tuple[str, str, str]]:
    """(database, cue, image service) cases; the image service parametrises ``images``."""
    assert set(server_cues) <= set(cues) and set(glance_cues) <= set(cues)
    return [("sqlite", c, "local") for c in cues] + \
        [(kind, c, "local") for kind in ("postgresql", "mysql") for c in server_cues] + \
        [("sqlite", c, "glance") for c in glance_cues]


@pytest.fixture
def glance(request, images):
    """The session's glance-api when this case's ``images`` is Glance; None for the local
    store. With Glance the child runs as a user (a token) and the restarted service has only
    its [glance] configuration."""
    from vsan_flows.glance import GlanceImageService

    if isinstance(images, GlanceImageService):
        return request.getfixturevalue("glance_api")
    return None


def _db_url(kind, tmp_path):
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/flows.sqlite"
    name = "vsan_flows_crash_" + uuid.uuid4().hex[:8]
    if kind == "postgresql":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc",
                        f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e",
                    f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}"


USER_TOKEN = "user-token-of-the-crashed-request"


def _run_child(simulator, wsdl_url, tmp_path, db_url, op, instance, image_id, images, cue,
               glance=None):
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(tmp_path / "state"), "db_url": db_url, "op": op,
            "instance": instance, "image_id": image_id, "cue": cue}
    if glance is None:
        args["images_dir"] = str(images.directory)
    else:  # the child reaches Glance with a user's token, as nova's request would
        args["conf"] = glance_overrides(glance)
        args["context"] = USER_TOKEN
    proc = subprocess.run([sys.executable, "-m", "tests.functional.crash_child",
                           json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])


def _assert_nothing_left(control, images, glance=None) -> None:
    """The leak check the conftest runs after the test, here at once, plus the image store."""
    status = control.status()
    open_leases = [lease for lease in status["leases"]
                   if lease["state"] in ("initializing", "ready")]
    assert not open_leases, f"leases left open: {open_leases}"
    if glance is None:
        parts = sorted(p.name for p in images.directory.glob("*.part"))
        assert not parts, f"half-written image data left in the store: {parts}"


def _conf(simulator, wsdl_url, tmp_path, db_url, glance=None):
    return make_conf(simulator, wsdl_url, tmp_path / "state",
                     vsan_flows__persistence_connection=db_url, vsan_flows__import_retries=2,
                     **(glance_overrides(glance) if glance is not None else {}))


def _ask_for_revert_on_restart(db_url: str) -> None:
    """Mark every stored flow "revert on restart", as an operation unsafe to finish late."""
    import contextlib

    from vsan_flows.runtime import persistence

    backend = persistence.backend_from_url(db_url)
    with contextlib.closing(backend.get_connection()) as conn:
        for book in conn.get_logbooks():
            book.meta["on_restart"] = "revert"
            conn.save_logbook(book)


def _resume(simulator, wsdl_url, tmp_path, db_url, vsphere, images, glance=None):
    """A restarted service: with Glance it has nothing but its config (no user, no handle),
    and every request it makes goes as the configured service user (glance-api's access log
    records each request's token; marks are taken once glance-api has logged all before)."""
    if glance is None:
        return api.resume_unfinished(_conf(simulator, wsdl_url, tmp_path, db_url),
                                     vsphere=vsphere, images=images)
    mark = glance.settled_mark(images)
    outcomes = api.resume_unfinished(_conf(simulator, wsdl_url, tmp_path, db_url, glance),
                                     vsphere=vsphere)
    end = glance.settled_mark(images)
    resumed = [ln for ln in glance.access_lines()[mark:end] if "settle-" not in ln]
    assert all(ln.endswith("token=" + SERVICE_TOKEN) for ln in resumed), resumed
    return outcomes


def _crash_and_resume_spawn(cue, simulator, wsdl_url, tmp_path, db_url, vsphere, images,
                            control, vmdk, destroy_after, glance=None):
    image_id = images.add_file(vmdk, name="crash")
    instance = "crash-" + uuid.uuid4().hex[:8]
    destroy_after.append(instance)
    before = control.calls("ImportVApp")
    if cue == "transfer":
        control.throttle_nfc(2 * MiB, direction="upload")
    _run_child(simulator, wsdl_url, tmp_path, db_url, "spawn", instance, image_id, images, cue,
               glance)
    control.reset()
    outcomes = _resume(simulator, wsdl_url, tmp_path, db_url, vsphere, images, glance)
    if cue == "CloneLinkedDisk:after":
        assert len(outcomes) <= 1  # finished or nearly so when it died
    else:
        assert [o[2] for o in outcomes] == ["completed"], outcomes
    vms = [vm for vm in control.status()["vms"] if vm["name"] == instance]
    assert len(vms) == 1, "exactly one instance VM"
    cached = [vm for vm in control.status()["vms"]
              if vm["name"].startswith(imagecache.vm_name(image_id, ""))]
    assert len(cached) == 1, "exactly one image cache entry"
    destroy_after.append(cached[0]["name"])
    assert vms[0]["disks"][0]["parent"] == cached[0]["disks"][0]["file"]
    imports = control.calls("ImportVApp") - before
    assert imports == (2 if cue in RESTARTS_TRANSFER else 1), imports
    if glance is not None and cue == "transfer":
        # One whole read cut by the kill (the user's), one whole read after the restart.
        assert _tokens(glance, image_id, ranged=False) == [USER_TOKEN, SERVICE_TOKEN]
    _assert_nothing_left(control, images, glance)
    return image_id


@pytest.mark.parametrize(("kind", "cue", "images"),
                         _matrix(SPAWN_CUES, SERVER_SPAWN_CUES, GLANCE_SPAWN_CUES),
                         indirect=["images"])
def test_spawn_survives_sigkill(kind, cue, simulator, wsdl_url, tmp_path, vsphere, images,
                                control, vmdk, destroy_after, glance):
    _crash_and_resume_spawn(cue, simulator, wsdl_url, tmp_path, _db_url(kind, tmp_path),
                            vsphere, images, control, vmdk, destroy_after, glance)


@pytest.mark.parametrize(("kind", "cue", "images"),
                         _matrix(SNAPSHOT_CUES, SERVER_SNAPSHOT_CUES, GLANCE_SNAPSHOT_CUES),
                         indirect=["images"])
def test_snapshot_survives_sigkill(kind, cue, simulator, wsdl_url, tmp_path, vsphere,
                                   images, control, vmdk, vmdk_raw, destroy_after, sim_conf,
                                   glance):
    _crash_and_resume_snapshot(cue, simulator, wsdl_url, tmp_path, _db_url(kind, tmp_path),
                               vsphere, images, control, vmdk, vmdk_raw, destroy_after,
                               sim_conf, glance)


def _crash_and_resume_snapshot(cue, simulator, wsdl_url, tmp_path, db_url, vsphere, images,
                               control, vmdk, vmdk_raw, destroy_after, sim_conf, glance=None):
    base = images.add_file(vmdk, name="base")
    instance = "snapcrash-" + uuid.uuid4().hex[:8]
    destroy_after.append(instance)
    result = api.spawn(sim_conf, instance, base, vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])
    for offset, data in WRITES_A:  # the guest wrote A: the image must hold exactly that
        control.guest_write(instance, offset, data)
    image_id = images.create({"name": "snap"})
    exports_before = control.calls("ExportVm")
    if cue == "transfer":
        control.throttle_nfc(2 * MiB, direction="download")
    _run_child(simulator, wsdl_url, tmp_path, db_url, "snapshot", instance, image_id, images,
               cue, glance)
    control.reset()
    if cue in AFTER_VM_SNAPSHOT:  # the guest goes on writing while the service is down
        for offset, data in WRITES_B:
            control.guest_write(instance, offset, data)
    outcomes = _resume(simulator, wsdl_url, tmp_path, db_url, vsphere, images, glance)
    if cue != "Cleanup:after":
        assert [o[2] for o in outcomes] == ["completed"], outcomes
    assert images.show(image_id).status == "active"
    vm = next(v for v in control.status()["vms"] if v["name"] == instance)
    assert vm["snapshots"] == 0
    assert not [v for v in control.status()["vms"] if v["name"].startswith("vsanflows-export")]
    exported = control.calls("ExportVm") - exports_before
    assert exported == (2 if cue in RESTARTS_TRANSFER else 1), exported
    with_a = _with_a(vmdk_raw)
    assert _sha(_image_raw(images, image_id, tmp_path)) == _sha(with_a), \
        "the image is not the instance's disk with A (as at the VM snapshot)"
    expected = _with(with_a, WRITES_B) if cue in AFTER_VM_SNAPSHOT else with_a
    assert _sha(control.guest_read(instance)) == _sha(expected), \
        "the instance lost writes (A, or B made after the VM snapshot)"
    if glance is not None:  # the whole read above checked Glance's sha512 at its end
        uploads = _tokens(glance, image_id, method="PUT")
        assert uploads == {"transfer": [USER_TOKEN, SERVICE_TOKEN],
                           "CompleteLease:before": [USER_TOKEN]}.get(cue, [SERVICE_TOKEN])
    _assert_nothing_left(control, images, glance)
    return image_id


# With Glance: the revert must delete the reserved image, cut mid-upload (queued again) or
# already active with this flow's data.
@pytest.mark.parametrize(("cue", "images"), [
    ("CloneFromSnapshot:before", "local"), ("StreamDiskToImage:before", "local"),
    ("transfer", "local"), ("Cleanup:before", "local"),
    *[(call, "local") for call in SNAPSHOT_CALLS],
    ("transfer", "glance"), ("Cleanup:before", "glance")], indirect=["images"])
def test_snapshot_marked_revert_on_restart_is_rolled_back(cue, simulator, wsdl_url, tmp_path,
                                                          vsphere, images, control, vmdk,
                                                          vmdk_raw, destroy_after, sim_conf,
                                                          glance):
    """Killed, then reverted: no image with data is left, the instance's disk is as it was."""

    db_url = _db_url("sqlite", tmp_path)
    base = images.add_file(vmdk, name="base")
    instance = "snaprevert-" + uuid.uuid4().hex[:8]
    destroy_after.append(instance)
    result = api.spawn(sim_conf, instance, base, vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])
    for offset, data in WRITES_A:
        control.guest_write(instance, offset, data)
    image_id = images.create({"name": "snap"})
    if cue == "transfer":
        control.throttle_nfc(2 * MiB, direction="download")
    _run_child(simulator, wsdl_url, tmp_path, db_url, "snapshot", instance, image_id, images,
               cue, glance)
    control.reset()
    _ask_for_revert_on_restart(db_url)
    outcomes = _resume(simulator, wsdl_url, tmp_path, db_url, vsphere, images, glance)
    assert [o[2] for o in outcomes] == ["reverted (its flow asks for that)"]
    try:
        assert images.show(image_id).status == "killed"
    except exceptions.ImageNotFound:
        pass  # it had gone active, or it is in Glance (no settable killed status): deleted
    if glance is not None:
        with pytest.raises(exceptions.ImageNotFound):
            images.show(image_id)
    status = control.status()
    assert next(v for v in status["vms"] if v["name"] == instance)["snapshots"] == 0
    assert not [v for v in status["vms"] if v["name"].startswith("vsanflows-export")]
    assert not status["leases"]
    _assert_nothing_left(control, images, glance)
    assert _sha(control.guest_read(instance)) == _sha(_with_a(vmdk_raw)), \
        "the instance's disk changed"


def _tokens(glance, image_id, *, ranged: bool | None = None, method: str = "GET") -> list[str]:
    """The token of each request on this image's data, in order (from glance's access log)."""
    out = []
    for line in glance.access_lines():
        if not line.startswith(f"{method} /images/{image_id}/file "):
            continue
        if ranged is not None and ("range=-" not in line) != ranged:
            continue
        out.append(line.rsplit("token=", 1)[1])
    return out


@pytest.mark.parametrize("cue", ["CloneLinkedDisk:after", *SPAWN_CALLS])
def test_spawn_marked_revert_on_restart_is_rolled_back(cue, simulator, wsdl_url, tmp_path,
                                                       vsphere, images, control, vmdk):
    """Killed (inside a vSphere call too), then reverted: no VM, lease or file is left."""
    db_url = _db_url("sqlite", tmp_path)
    image_id = images.add_file(vmdk, name="unsafe")
    instance = "unsafe-" + uuid.uuid4().hex[:8]
    _run_child(simulator, wsdl_url, tmp_path, db_url, "spawn", instance, image_id, images, cue)
    _ask_for_revert_on_restart(db_url)
    outcomes = api.resume_unfinished(_conf(simulator, wsdl_url, tmp_path, db_url),
                                     vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["reverted (its flow asks for that)"]
    names = [vm["name"] for vm in control.status()["vms"]]
    assert instance not in names
    assert not [n for n in names if n.startswith(imagecache.vm_name(image_id, ""))]
    _assert_nothing_left(control, images)


def test_flows_revert_force_ends_the_lease_of_a_killed_import(simulator, wsdl_url, tmp_path,
                                                              images, control, vmdk):
    """The admin's `flows revert --force` after a kill inside ImportVApp: no lease stays open."""
    from vsan_flows.runtime import persistence

    db_url = _db_url("sqlite", tmp_path)
    image_id = images.add_file(vmdk, name="admin")
    instance = "admin-" + uuid.uuid4().hex[:8]
    _run_child(simulator, wsdl_url, tmp_path, db_url, "spawn", instance, image_id, images,
               "call:ImportVApp")
    assert [lease for lease in control.status()["leases"] if lease["state"] == "ready"], \
        "the killed call left no ready lease: nothing to test"
    backend = persistence.backend_from_url(db_url)
    (flow_id,) = [fd.uuid for _book, fd in persistence.list_flow_details(backend)]
    from tests.functional.test_cli_flows import _write_conf

    conf_file = tmp_path / "admin.conf"
    _write_conf(conf_file, simulator, wsdl_url, tmp_path / "state", db_url, images.directory)
    proc = subprocess.run([str(Path(sys.executable).with_name("vsan-flows")), "--config-file",
                           str(conf_file), "flows", "revert", flow_id, "--yes", "--force"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REVERTED" in proc.stdout
    assert instance not in [vm["name"] for vm in control.status()["vms"]]
    _assert_nothing_left(control, images)
