"""LocalImageService: streaming, atomic activation, and the errors a flow will meet."""

import hashlib
import json
import os
import tracemalloc

import pytest

from vsan_flows.exceptions import (
    ImageAlreadyHasData,
    ImageError,
    ImageNotFound,
    IncompleteTransfer,
)
from vsan_flows.images import ImageMeta, ImageService, LocalImageService

MIB = 1 << 20


@pytest.fixture
def svc(tmp_path):
    return LocalImageService(tmp_path / "images")


def _blob(n):
    return bytes(range(256)) * (n // 256)


def test_implements_the_protocol(svc):
    assert isinstance(svc, ImageService)


def test_create_then_upload_then_read_back(svc):
    image_id = svc.create({"name": "snap", "disk_format": "vmdk", "container_format": "bare",
                           "vmware_disktype": "streamOptimized"})
    meta = svc.show(image_id)
    assert meta.status == "queued" and meta.size is None
    assert meta.vmware_disktype == "streamOptimized"
    data = _blob(3 * MIB + 100)
    done = svc.upload(image_id, [data[: MIB], data[MIB:]], {"vmware_adaptertype": "lsiLogic"})
    assert done.status == "active" and done.size == len(data)
    assert done.os_hash_algo == "sha256"
    assert done.os_hash_value == hashlib.sha256(data).hexdigest()
    assert done.vmware_adaptertype == "lsiLogic"
    with svc.open(image_id) as f:
        assert f.read() == data
    assert svc.show(image_id) == done


def test_records_survive_a_new_service_instance(svc, tmp_path):
    image_id = svc.create({"name": "x"})
    svc.upload(image_id, [b"abc"])
    again = LocalImageService(tmp_path / "images")
    assert again.show(image_id).size == 3
    assert json.loads((tmp_path / "images" / f"{image_id}.json").read_text())["status"] == "active"


def test_upload_streams_without_buffering_the_image(svc):
    image_id = svc.create({"name": "big"})

    def gen():
        chunk = b"\x5a" * MIB
        for _ in range(64):
            yield chunk

    tracemalloc.start()
    svc.upload(image_id, gen())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert svc.show(image_id).size == 64 * MIB
    assert peak < 8 * MIB, peak


def test_upload_from_file_object(svc, tmp_path):
    src = tmp_path / "disk.bin"
    src.write_bytes(_blob(2 * MIB))
    image_id = svc.create({"name": "f"})
    with open(src, "rb") as f:
        assert svc.upload(image_id, f).size == 2 * MIB


def test_a_failing_stream_leaves_no_active_image_and_no_partial_file(svc):
    image_id = svc.create({"name": "broken"})

    def gen():
        yield b"x" * MIB
        raise OSError("connection reset by peer")

    with pytest.raises(OSError, match="reset"):
        svc.upload(image_id, gen())
    assert svc.show(image_id).status == "queued"
    # (the writer's lock file stays: removing a lock file others may open is a race)
    assert sorted(p.name for p in svc.directory.iterdir()) == [f"{image_id}.json",
                                                                f"{image_id}.lock"]
    with pytest.raises(ImageError, match="status queued"):
        svc.open(image_id)
    # the retry can upload again
    assert svc.upload(image_id, [b"ok"]).status == "active"


def test_short_stream_against_declared_size_is_incomplete(svc):
    image_id = svc.create({"name": "short"})
    with pytest.raises(IncompleteTransfer) as info:
        svc.upload(image_id, [b"x" * 1000], {"size": 4096})
    assert info.value.bytes_sent == 1000 and info.value.bytes_expected == 4096
    assert "1000 bytes sent, 4096 bytes expected" in str(info.value)
    assert svc.show(image_id).status == "queued"


def test_active_images_are_immutable(svc):
    image_id = svc.create({"name": "a"})
    svc.upload(image_id, [b"one"])
    with pytest.raises(ImageAlreadyHasData, match=image_id):
        svc.upload(image_id, [b"two"])
    with svc.open(image_id) as f:
        assert f.read() == b"one"


def test_unknown_and_hostile_ids_are_not_found(svc):
    for bad in ("nope", "../../etc/passwd", ""):
        with pytest.raises(ImageNotFound):
            svc.show(bad)
    with pytest.raises(ImageNotFound, match="nope"):
        svc.open("nope")
    with pytest.raises(ImageNotFound):
        svc.delete("nope")
    with pytest.raises(ImageNotFound):
        svc.upload("nope", [b""])


def test_delete_removes_data_and_record(svc):
    image_id = svc.create({"name": "d"})
    svc.upload(image_id, [b"abc"])
    svc.delete(image_id)
    assert list(svc.directory.iterdir()) == []
    with pytest.raises(ImageNotFound):
        svc.show(image_id)


def test_mark_killed_keeps_the_reason_and_refuses_uploads(svc):
    image_id = svc.create({"name": "k"})
    svc.mark_killed(image_id, "export stream was cut")
    meta = svc.show(image_id)
    assert meta.status == "killed"
    assert meta.properties["vsan_flows_kill_reason"] == "export stream was cut"
    with pytest.raises(ImageError, match="killed"):
        svc.upload(image_id, [b"late"])


def test_list_is_sorted_and_add_file_sets_vmware_properties(svc, tmp_path):
    src = tmp_path / "d.vmdk"
    src.write_bytes(b"KDMV" + bytes(508))
    b = svc.add_file(src, "b-image")
    a = svc.add_file(src, "a-image", vmware_disktype="sparse", image_id="fixed-id")
    assert a == "fixed-id"
    names = [m.name for m in svc.list()]
    assert names == ["a-image", "b-image"]
    meta = svc.show(b)
    assert meta.status == "active" and meta.size == os.path.getsize(src)
    assert meta.disk_format == "vmdk" and meta.container_format == "bare"
    assert meta.properties["vmware_disktype"] == "streamOptimized"
    assert meta.properties["vmware_adaptertype"] == "lsiLogic"
    assert svc.show(a).vmware_disktype == "sparse"


def test_duplicate_id_is_refused(svc):
    svc.create({"id": "same"})
    with pytest.raises(ImageError, match="already exists"):
        svc.create({"id": "same"})


def test_meta_round_trips_through_dict():
    m = ImageMeta(id="i", name="n", properties={"vmware_disktype": "streamOptimized"}, size=5)
    assert ImageMeta.from_dict(m.to_dict()) == m


def test_one_writer_per_image_a_second_upload_is_refused_at_once(svc):
    import threading

    image_id = svc.create({"name": "raced"})
    started, release = threading.Event(), threading.Event()

    def slow():
        yield b"a" * MIB
        started.set()
        release.wait(10)
        yield b"a" * MIB

    results = {}
    writer = threading.Thread(target=lambda: results.setdefault(
        "slow", svc.upload(image_id, slow())))
    writer.start()
    assert started.wait(10)
    with pytest.raises(ImageAlreadyHasData, match="another upload"):
        svc.upload(image_id, [b"b" * 10])
    release.set()
    writer.join(10)
    assert results["slow"].status == "active" and results["slow"].size == 2 * MIB
    assert svc.open(image_id).read(1) == b"a"  # the refused writer changed nothing


def test_a_failed_late_upload_never_resets_an_active_image(svc):
    image_id = svc.create({"name": "late"})
    svc.upload(image_id, [b"good"])

    def failing():
        yield b"x"
        raise OSError("cut")

    with pytest.raises(ImageAlreadyHasData):
        svc.upload(image_id, failing())
    assert svc.show(image_id).status == "active"
    assert svc.open(image_id).read() == b"good"


def test_a_dead_writer_leaves_no_lock_and_its_part_file_goes(svc, tmp_path):
    import subprocess
    import sys

    image_id = svc.create({"name": "crashed"})
    child = (
        "import os, signal, sys\n"
        "from vsan_flows.images import LocalImageService\n"
        f"svc = LocalImageService({str(svc.directory)!r})\n"
        "def gen():\n"
        "    yield b'z' * 65536\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"svc.upload({image_id!r}, gen())\n")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert list(svc.directory.glob(f"{image_id}.*.part")), "the crash left a part file"
    assert svc.upload(image_id, [b"again"]).status == "active"  # the lock died with it
    assert not list(svc.directory.glob(f"{image_id}.*.part"))


def test_snapshot_revert_deletes_only_an_image_this_flow_wrote(svc):
    from vsan_flows.tasks.snapshot import ReserveImage

    theirs = svc.create({"name": "theirs"})
    svc.upload(theirs, [b"good"], {"vsan_flows_flow": "other-flow"})
    ReserveImage().revert(images=svc, image_id=theirs, flow_token="this-flow")
    assert svc.show(theirs).status == "active"

    mine = svc.create({"name": "mine"})
    svc.upload(mine, [b"half-verified"], {"vsan_flows_flow": "this-flow"})
    ReserveImage().revert(images=svc, image_id=mine, flow_token="this-flow")
    with pytest.raises(ImageNotFound):
        svc.show(mine)


def _chunked(data, sizes):
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        yield data[at: at + n]
        at, i = at + n, i + 1


def test_write_behind_stores_every_byte_and_starts_write_back_as_it_goes(svc, monkeypatch):
    """Uneven chunks across many small windows: the bytes and hash are exact, and write-back
    really ran during the upload (each window started, the one before it waited and dropped),
    not only at the final fsync."""
    from vsan_flows import images

    if images._SYNC_FILE_RANGE is None:
        pytest.skip("no sync_file_range on this platform: the final fsync writes everything")
    calls = []
    real = images._SYNC_FILE_RANGE

    def spy(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(images, "_SYNC_FILE_RANGE", spy)
    monkeypatch.setattr(images._WriteBehind, "WINDOW", 64 * 1024)
    data = os.urandom(3 * MIB + 12345)
    image_id = svc.create({"name": "wb"})
    done = svc.upload(image_id, _chunked(data, [70_000, 1, 200_000, 4096]))
    assert done.size == len(data)
    assert done.os_hash_value == hashlib.sha256(data).hexdigest()
    with svc.open(image_id) as f:
        assert f.read() == data
    started = [(o, n) for o, n, fl in calls if fl == images._SFR_WRITE]
    waited = [(o, n) for o, n, fl in calls if fl & images._SFR_WAIT_AFTER]
    assert len(started) > 10 and len(waited) > 10
    # The windows started cover the file from 0 without gaps, and only what was started
    # is ever waited for.
    assert started[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(started, started[1:], strict=False))
    assert waited[-1][0] + waited[-1][1] <= started[-1][0]


def test_write_behind_off_where_the_filesystem_refuses_it(svc, monkeypatch):
    """EINVAL/ENOSYS: write-back is left to the final fsync, the upload is as it was."""
    import ctypes
    import errno

    from vsan_flows import images

    calls = []

    def refuse(fd, offset, nbytes, flags):
        calls.append(offset)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(images, "_SYNC_FILE_RANGE", refuse)
    monkeypatch.setattr(images._WriteBehind, "WINDOW", 64 * 1024)
    data = os.urandom(MIB + 7)
    image_id = svc.create({"name": "wb-off"})
    done = svc.upload(image_id, _chunked(data, [100_000]))
    assert done.size == len(data) and done.os_hash_value == hashlib.sha256(data).hexdigest()
    assert len(calls) == 1  # refused once, never asked again


def test_a_write_back_error_fails_the_upload_and_leaves_it_queued(svc, monkeypatch):
    """EIO from the disk is the error fsync would have reported: the image never goes
    active, the half-written file goes, a retry may upload again."""
    import ctypes
    import errno

    from vsan_flows import images

    def eio(fd, offset, nbytes, flags):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(images, "_SYNC_FILE_RANGE", eio)
    monkeypatch.setattr(images._WriteBehind, "WINDOW", 64 * 1024)
    image_id = svc.create({"name": "wb-eio"})
    with pytest.raises(OSError, match="sync_file_range"):
        svc.upload(image_id, _chunked(os.urandom(MIB), [100_000]))
    assert svc.show(image_id).status == "queued"
    assert not list(svc.directory.glob(f"{image_id}.*.part"))
    assert not (svc.directory / f"{image_id}.data").exists()
