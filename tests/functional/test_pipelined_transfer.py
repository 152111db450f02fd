"""Transfers read and write at once (issue 15): exact bytes, bounded memory, clean failures.

``transfer.copy`` (import: image -> lease PUT) and the ``ReadAhead`` that ``open_export``
returns (export: lease GET -> image store) read their source in a thread of their own, a few
chunks ahead of the writer. Against the simulator's real leases, these tests check that every
byte lands, that the reader runs ahead of a slow writer but never by more than the read-ahead,
and that a failure at either end (the source's read, the sink's write, a lease cut by the
simulator's NFC knob) ends the transfer with its own error, closes both ends and leaves no
reader thread running. The same runs natively threaded in this process and eventlet-patched in
a child (pipelined_child.py). Nothing here measures speed.
"""

from __future__ import annotations

import errno
import json
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from vsan_flows import api, exceptions
from vsan_flows.images import LocalImageService
from vsan_flows.simulator import disks
from vsan_flows.streamcheck import StreamTap
from vsan_flows.vsphere import exports, imports, instances, leases, transfer

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
VIRTUAL = 64 * MiB
# Enough data that the file is several times the read-ahead: a reader that did not stop when
# the writer failed would read well past the bound the tests allow.
DATA_MIB = 24
BOUND = (transfer.READ_AHEAD + 2) * transfer.CHUNK_SIZE
CHILD_TIMEOUT = 300


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vsan-flows-read-ahead"]


@pytest.fixture(autouse=True)
def no_reader_left():
    """Every transfer joins its reader before it returns or raises: none may be alive after."""
    yield
    alive = _read_ahead_threads()
    assert not alive, f"read-ahead threads still running after the test: {alive}"


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("disks") / "pipelined.vmdk"
    disks.make_stream_optimized(path, VIRTUAL, data_mib=DATA_MIB)
    assert path.stat().st_size > 3 * BOUND
    return path


class Source:
    """The image file, counted as it is read; past ``fail_after`` bytes its read fails as a
    failing disk's does."""

    def __init__(self, path: Path, fail_after: int | None = None) -> None:
        self._f = open(path, "rb")
        self.fail_after = fail_after
        self.bytes_read = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.bytes_read >= self.fail_after:
            raise OSError(errno.EIO, "Input/output error (injected)")
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self._f.close()
        self.closed = True


@pytest.fixture
def import_lease(vsphere):
    """A ready import lease for a disk-only VM; aborted and the VM destroyed afterwards."""
    name = f"pipe-imp-{uuid.uuid4().hex[:8]}"
    lease = imports.begin_import(vsphere, vm_name=name, datastore_name="vsanDatastore",
                                 capacity_bytes=VIRTUAL, adapter_type="lsiLogic",
                                 guest_id="otherGuest")
    yield name, lease["lease"]
    leases.abort(vsphere, lease["lease"])
    instances.destroy_by_name(vsphere, name)


# --------------------------------------------------------------------------------- import

def test_import_moves_exactly_the_bytes_reading_ahead_within_the_bound(
        vsphere, control, vmdk, import_lease, tmp_path):
    name, lease_id = import_lease
    size = vmdk.stat().st_size
    source = Source(vmdk)
    leads: list[int] = []
    # The lease end is the slow one here: the reader must run ahead of it, never far.
    control.throttle_nfc(8 * MiB, direction="upload")
    sent = imports.upload(vsphere, lease_id, source, size,
                          on_progress=lambda done: leads.append(source.bytes_read - done))
    assert sent == size == source.bytes_read
    assert source.closed
    assert max(leads) <= BOUND, (max(leads), BOUND)
    assert max(leads) >= 2 * transfer.CHUNK_SIZE, "the reader never ran ahead of the writer"
    leases.complete(vsphere, lease_id)
    stored = tmp_path / "stored.raw"
    stored.write_bytes(control.guest_read(name))
    assert disks.images_identical(stored, vmdk)


def test_import_source_failing_midway(vsphere, simulator, vmdk, import_lease):
    name, lease_id = import_lease
    source = Source(vmdk, fail_after=5 * MiB)
    with pytest.raises(exceptions.TransferError) as err:
        imports.upload(vsphere, lease_id, source, vmdk.stat().st_size)
    assert "OSError" in str(err.value) and "Input/output error" in str(err.value)
    assert source.closed
    # The PUT ended where the source failed: the host logged a short body for this VM's
    # disk (at most what was read; what was in flight may be lost with the reset), not a disk.
    puts = _nfc_log(simulator, "PUT", name)
    assert len(puts) == 1 and "status=500" in puts[0], puts
    got = int(re.search(r"bytes=(\d+)", puts[0]).group(1))
    assert 0 < got <= 5 * MiB, puts


def _nfc_log(simulator, method: str, vm_name: str, wait: float = 20.0) -> list[str]:
    """The simulator's log lines for NFC requests on this VM's disk; the host logs a request
    once it has finished reading it, a moment after our side closed: polled for a while."""
    end = time.monotonic() + wait
    while True:
        lines = [ln for ln in simulator.log_tail(400).splitlines()
                 if f"nfc {method}" in ln and f"/{vm_name}/" in ln]
        if lines or time.monotonic() > end:
            return lines
        time.sleep(0.1)


def test_import_lease_cut_midway_stops_the_reader(vsphere, control, vmdk, import_lease):
    _, lease_id = import_lease
    source = Source(vmdk)
    control.cut_nfc(3 * MiB, direction="upload")
    with pytest.raises(exceptions.TransferError) as err:
        imports.upload(vsphere, lease_id, source, vmdk.stat().st_size)
    assert "broke" in str(err.value)
    assert source.closed
    # The reader stopped with the writer: it read at most the read-ahead past the cut (plus
    # what the socket buffers took before the host closed it), not the rest of the image.
    assert source.bytes_read <= 3 * MiB + BOUND + 4 * MiB, source.bytes_read
    assert source.bytes_read < vmdk.stat().st_size


def test_import_past_its_deadline_while_the_writer_waits_for_a_stalled_reader(
        vsphere, vmdk, import_lease):
    _, lease_id = import_lease

    class Stalls(Source):
        def read(self, n=-1):
            if self.bytes_read >= 2 * MiB:
                threading.Event().wait(3)  # a source that stops answering for a while
            return super().read(n)

    source = Stalls(vmdk)
    device = transfer.disk_device(vsphere.session, transfer_ref(lease_id), vsphere.host,
                                  vsphere.port)
    writer = transfer.LeaseUploadHandle(vsphere.session, transfer_ref(lease_id), device,
                                        vmdk.stat().st_size, timeout_secs=1)
    with pytest.raises(exceptions.TransferTimeout):
        transfer.copy(transfer.ImageStreamReader(source), writer, 1, "The image upload",
                      vmdk.stat().st_size)
    assert source.closed


def transfer_ref(lease_id: str):
    from vsan_flows.vsphere.session import ref

    return ref(lease_id, "HttpNfcLease")


# --------------------------------------------------------------------------------- export

@pytest.fixture(scope="module")
def exported(simulator, wsdl_url, tmp_path_factory, vmdk):
    """An instance spawned from the image: the VM the export tests read an ExportVm lease of."""
    from tests.functional.conftest import make_conf
    from vsan_flows.vsphere.session import connect

    conf = make_conf(simulator, wsdl_url, tmp_path_factory.mktemp("state"))
    ctx = connect(conf)
    store = LocalImageService(tmp_path_factory.mktemp("base-images"))
    name = f"pipe-exp-{uuid.uuid4().hex[:8]}"
    result = api.spawn(conf, name, store.add_file(vmdk, name="base"), vsphere=ctx, images=store)
    yield name
    instances.destroy_by_name(ctx, name)
    instances.destroy_by_name(ctx, result["shadow_vm"]["name"])
    ctx.close()


@pytest.fixture
def export_lease(vsphere, exported):
    lease_id = exports.begin_export(vsphere, instances.find(vsphere, exported))
    yield lease_id
    leases.abort(vsphere, lease_id)


def _upload_export(vsphere, images, lease_id):
    """What StreamDiskToImage does, holding on to the reader: (result or error, reader)."""
    reader = exports.open_export(vsphere, lease_id)
    tap = StreamTap(reader, verify_at_eof=True, expected_bytes=reader.content_length)
    image_id = images.create({"name": "export"})
    try:
        return images.upload(image_id, tap, {"disk_format": "vmdk"}), reader, image_id
    finally:
        tap.close()


def _handle_bytes(reader: transfer.ReadAhead) -> int:
    return reader._src._bytes_read  # the LeaseDownloadHandle under the read-ahead


def test_export_moves_exactly_the_bytes(vsphere, export_lease, vmdk, tmp_path):
    images = LocalImageService(tmp_path / "images")
    done, reader, image_id = _upload_export(vsphere, images, export_lease)
    assert done.status == "active" and done.size == reader.bytes_read == _handle_bytes(reader)
    with images.open(image_id) as f:
        proc = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(vmdk),
                               f.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_export_lease_cut_midway(vsphere, control, export_lease, tmp_path):
    images = LocalImageService(tmp_path / "images")
    control.cut_nfc(2 * MiB, direction="download")
    reader = exports.open_export(vsphere, export_lease)
    tap = StreamTap(reader, verify_at_eof=True, expected_bytes=reader.content_length)
    image_id = images.create({"name": "export"})
    try:
        with pytest.raises((exceptions.IncompleteTransfer, exceptions.InvalidImage)):
            images.upload(image_id, tap, {"disk_format": "vmdk"})
    finally:
        tap.close()
    # Nothing half-written: the image takes a new upload, no partial file is left.
    assert images.show(image_id).status == "queued"
    assert sorted(p.suffix for p in images.directory.iterdir()) == [".json", ".lock"]


def test_export_sink_failing_midway_stops_the_reader(vsphere, export_lease, tmp_path):
    """The image store's disk fills up mid-upload (RLIMIT_FSIZE: writes past 2 MiB fail with
    EFBIG, as on a full filesystem): its error is the transfer's, the GET stops."""
    images = LocalImageService(tmp_path / "images")
    image_id = images.create({"name": "export"})
    reader = exports.open_export(vsphere, export_lease)
    tap = StreamTap(reader, verify_at_eof=True, expected_bytes=reader.content_length)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, old_limit[1]))
    try:
        with pytest.raises(OSError) as err:
            images.upload(image_id, tap, {"disk_format": "vmdk"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
        tap.close()
    assert err.value.errno == errno.EFBIG
    assert images.show(image_id).status == "queued"
    assert sorted(p.suffix for p in images.directory.iterdir()) == [".json", ".lock"]
    read = _handle_bytes(reader)
    assert read <= 2 * MiB + BOUND, read  # stopped with the sink, not at the end of the disk


def test_export_consumer_closing_early_ends_the_get(vsphere, export_lease):
    """A consumer that gives up after two chunks (any upload that fails) closes the handle:
    the reader thread is joined before close() returns and the connection is closed."""
    reader = exports.open_export(vsphere, export_lease)
    assert reader.read() and reader.read()
    reader.close()
    assert not _read_ahead_threads()
    assert reader._src._conn.sock is None  # http.client drops the socket on close
    assert _handle_bytes(reader) <= BOUND


# --------------------------------------------------------------------------------- eventlet

def test_flows_through_the_pipeline_under_eventlet(simulator, wsdl_url, tmp_path, vmdk):
    """Spawn, snapshot, and both with the lease cut, in a child process eventlet-patched
    first, as nova-compute is (the tests above are the native-thread case): the good runs
    store the whole disk, the cut runs fail with a transfer error and leave no reader
    (a greenthread there) running."""
    store = LocalImageService(tmp_path / "images")
    image_id = store.add_file(vmdk, name="pipelined")
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(tmp_path / "state"), "images_dir": str(store.directory),
            "image_id": image_id, "image_path": str(vmdk), "timeout": CHILD_TIMEOUT - 30,
            "eventlet": True}
    proc = subprocess.run([sys.executable, "-m", "tests.functional.pipelined_child",
                           json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-8000:]
    out = json.loads(lines[-1])
    assert out["eventlet"] is True and out["backend"] == "eventlet"
    assert out["spawn"] == {"error": None, "threads": []}
    assert out["bytes_sent"] == vmdk.stat().st_size
    assert out["snapshot"] == {"error": None, "threads": []}
    assert out["snapshot_image"]["status"] == "active"
    snap = store.show(out["snapshot_image"]["id"])
    with store.open(snap.id) as f:
        cmp = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(vmdk),
                              f.name], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    for case in ("cut_snapshot", "cut_spawn"):
        assert out[case]["error"] in ("TransferError", "IncompleteTransfer"), out[case]
        assert out[case]["threads"] == [], out[case]
    assert out["cut_snapshot_status"] == "killed"


# --------------------------------------------------------------------------------- glance

def test_glance_image_rotten_at_rest_is_caught_by_the_download_alone(
        sim_conf, vsphere, glance_api, control, tmp_path):
    """From Glance the import hashes the image once: the download checks Glance's recorded
    sha512 at its end, and the stream check does not hash the same bytes again. A bit flipped
    in glance-api's store where the disk format cannot notice it (the descriptor's comment)
    still fails the spawn before anything becomes a cache entry."""
    from tests.functional.conftest import glance_conf
    from vsan_flows import imagecache
    from vsan_flows.glance import GlanceImageService

    images = GlanceImageService.from_conf(glance_conf(glance_api))
    path = disks.make_stream_optimized(tmp_path / "rot.vmdk", 16 * MiB)
    image_id = images.add_file(path, name="rot")
    try:
        stored = next(p for p in glance_api.stored_files() if p.name == image_id)
        data = bytearray(stored.read_bytes())
        at = data.index(b"# Disk DescriptorFile") + len("# Disk Descriptor")
        data[at] ^= 0x20  # "File" -> "file": still a valid descriptor, another hash
        stored.write_bytes(bytes(data))
        before = control.calls("ImportVApp")
        with pytest.raises(exceptions.ImageError, match="sha512"):
            api.spawn(sim_conf, f"rot-{uuid.uuid4().hex[:8]}", image_id, vsphere=vsphere,
                      images=images)
        assert control.calls("ImportVApp") == before + 1
        assert not [vm for vm in control.status()["vms"]
                    if vm["name"].startswith(imagecache.name_prefix(image_id))]
    finally:
        images.delete(image_id)
