"""Glance's own rules, against a real glance-api with one worker (tests/functional/glance_api).

What only a real Glance shows: its format inspector (415), its size cap (413), conflicts (409),
protected images (403), images it will not mark killed, downloads that hold its only worker,
and which credentials went over the wire (its access log records each request's token).
"""

from __future__ import annotations

import logging
import subprocess
import uuid

import pytest

from tests.functional.conftest import SERVICE_TOKEN, glance_conf
from vsan_flows import api, exceptions
from vsan_flows.glance import GlanceImageService
from vsan_flows.simulator import disks
from vsan_flows.tasks.image import HEADER_PEEK, ValidateStreamOptimizedImage

MiB = 1024 * 1024

# The session's glance-api through the `images` fixture (emptied and leak-checked after each).
GLANCE = pytest.mark.parametrize("images", ["glance"], indirect=True)


@pytest.fixture(scope="module")
def big_vmdk(tmp_path_factory):
    """Larger than loopback socket buffers: a download of it that is left open blocks."""
    path = tmp_path_factory.mktemp("disks") / "big.vmdk"
    disks.make_stream_optimized(path, 64 * MiB, data_mib=24)
    return path


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "small.vmdk"
    disks.make_stream_optimized(path, 16 * MiB)
    return path


def _file_requests(glance_api, image_id, since=0):
    return [line for line in glance_api.access_lines()[since:]
            if f"/images/{image_id}/file" in line]


def _chunks(path, size=MiB):
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


@GLANCE
def test_header_reads_are_ranged_and_nothing_stays_open(images, glance_api, big_vmdk):
    image_id = images.add_file(big_vmdk, name="big")
    mark = len(glance_api.access_lines())
    header = ValidateStreamOptimizedImage().execute(images, image_id)
    assert header["size"] == big_vmdk.stat().st_size
    gets = _file_requests(glance_api, image_id, mark)
    # Validation never asks for the whole image: a ranged GET for the header (and one for
    # the grain tables of files that keep them in front).
    assert gets and f"range=bytes=0-{HEADER_PEEK - 1} " in gets[0], gets
    assert all("range=bytes=0-" in g and " 206 " in g for g in gets), gets

    # A whole download dropped after 1 MiB: closing it frees glance-api's only worker.
    quick = GlanceImageService.from_conf(glance_conf(glance_api, glance__timeout=10))
    with images.open(image_id) as f:
        assert len(f.read(MiB)) == MiB
    assert quick.show(image_id).status == "active"

    # The same download NOT closed holds the worker: the next request cannot be answered.
    # (This is what makes the assertion above able to fail.)
    held = images.open(image_id)
    try:
        held.read(MiB)
        with pytest.raises(exceptions.ImageServiceUnavailable):
            quick.show(image_id)
    finally:
        held.close()
    assert quick.show(image_id).status == "active"


@GLANCE
def test_download_checks_the_hash_glance_recorded(images, glance_api, small_vmdk):
    image_id = images.add_file(small_vmdk, name="rotting")
    stored = next(p for p in glance_api.stored_files() if p.name == image_id)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-run in the store, size unchanged
    stored.write_bytes(bytes(data))
    with images.open(image_id) as f, pytest.raises(exceptions.ImageError) as err:
        while f.read(MiB):
            pass
    assert image_id in str(err.value) and "sha512" in str(err.value)


@GLANCE
def test_a_download_cut_short_is_never_taken_for_the_image(images, glance_api, small_vmdk):
    """A store that lost the image's tail: Glance announces the recorded size and sends what
    it has, so the body ends early - on the wire exactly what a glance-api restart looks
    like, hence retryable - and the error says how far it got."""
    image_id = images.add_file(small_vmdk, name="truncated")
    stored = next(p for p in glance_api.stored_files() if p.name == image_id)
    size = stored.stat().st_size
    with open(stored, "r+b") as f:
        f.truncate(size - 4096)
    got = 0
    with images.open(image_id) as f, pytest.raises(exceptions.ImageServiceUnavailable) as err:
        while chunk := f.read(MiB):
            got += len(chunk)
    assert got == size - 4096
    assert image_id in str(err.value) and f"after {got} of {size} bytes" in str(err.value)
    assert images.show(image_id).status == "active"  # the worker was freed: Glance answers


@GLANCE
def test_format_inspector_refusal_415(images, glance_api, tmp_path):
    raw = disks.make_raw_renamed(tmp_path / "raw.vmdk", 4 * MiB)
    image_id = images.create({"name": "raw", "disk_format": "vmdk",
                              "container_format": "bare"})
    with pytest.raises(exceptions.ImageServiceRefused) as err:
        images.upload(image_id, open(raw, "rb"))
    assert err.value.status == 415 and image_id in str(err.value)
    assert "disk_format=vmdk" in str(err.value)
    # Glance 33 keeps the refused bytes in its store until the image is deleted (the leak
    # check deletes it and then finds no file), but never makes them readable.
    assert images.show(image_id).status == "queued"
    with pytest.raises(exceptions.ImageError):
        images.open(image_id)


@GLANCE
def test_size_cap_refusal_413(images, glance_api, tmp_path):
    from tests.functional.glance_api import IMAGE_SIZE_CAP

    path = disks.make_stream_optimized(tmp_path / "huge.vmdk", 64 * MiB,
                                       data_mib=IMAGE_SIZE_CAP // MiB + 4)
    image_id = images.create({"name": "huge"})
    with pytest.raises(exceptions.ImageServiceRefused) as err:
        images.upload(image_id, _chunks(path), {"disk_format": "vmdk",
                                                "container_format": "bare"})
    assert err.value.status == 413 and image_id in str(err.value)
    assert "image_size_cap" in str(err.value)
    assert images.show(image_id).status == "queued"


@GLANCE
def test_conflict_404_and_403_name_the_image(images, small_vmdk):
    image_id = images.add_file(small_vmdk, name="taken")
    with pytest.raises(exceptions.ImageServiceRefused) as err:
        images.create({"id": image_id, "name": "again"})
    assert err.value.status == 409 and image_id in str(err.value)

    missing = str(uuid.uuid4())
    for call in (images.show, images.open, images.delete):
        with pytest.raises(exceptions.ImageNotFound) as nf:
            call(missing)
        assert missing in str(nf.value)

    images._client.images.update(image_id, protected=True)
    try:
        with pytest.raises(exceptions.ImageServiceRefused) as err:
            images.delete(image_id)
        assert err.value.status == 403 and image_id in str(err.value)
        assert "[glance]" in str(err.value)  # says where credentials are configured
    finally:
        images._client.images.update(image_id, protected=False)


@GLANCE
def test_an_image_with_data_is_refused_untouched(images, small_vmdk):
    image_id = images.add_file(small_vmdk, name="full")
    before = images.show(image_id)
    with pytest.raises(exceptions.ImageAlreadyHasData):
        images.upload(image_id, _chunks(small_vmdk), {"vmware_ostype": "changedGuest"})
    after = images.show(image_id)
    assert after == before


@GLANCE
def test_a_failing_source_never_goes_active_and_a_retry_can_upload(images, glance_api,
                                                                    small_vmdk):
    image_id = images.create({"name": "cut"})
    cut = exceptions.IncompleteTransfer("The disk export", bytes_sent=MiB,
                                        bytes_expected=small_vmdk.stat().st_size)

    def cut_stream():
        yield next(_chunks(small_vmdk))
        raise cut

    meta = {"disk_format": "vmdk", "container_format": "bare"}
    with pytest.raises(exceptions.IncompleteTransfer) as err:
        images.upload(image_id, cut_stream(), meta)
    assert err.value is cut  # the source's own error, not "connection aborted"
    assert images.show(image_id).status == "queued"
    assert image_id not in [p.name for p in glance_api.stored_files()]

    done = images.upload(image_id, _chunks(small_vmdk), meta)  # the transfer Retry's case
    assert done.status == "active" and done.size == small_vmdk.stat().st_size


@GLANCE
def test_stored_hash_is_checked_against_what_was_sent(images, glance_api, small_vmdk):
    wrong = GlanceImageService.from_conf(glance_conf(
        glance_api, vsan_flows__glance_hash_algorithm="sha256"))
    image_id = wrong.create({"name": "unverifiable"})
    with pytest.raises(exceptions.IncompleteTransfer) as err:
        wrong.upload(image_id, _chunks(small_vmdk), {"disk_format": "vmdk",
                                                      "container_format": "bare"})
    assert "glance_hash_algorithm = sha512" in str(err.value)
    with pytest.raises(exceptions.ImageNotFound):
        images.show(image_id)  # never left active with data nobody verified


@GLANCE
def test_failed_snapshot_deletes_the_reserved_image_and_says_so(sim_conf, vsphere, images,
                                                                 caplog):
    image_id = images.create({"name": "snap-of-nothing"})
    with caplog.at_level(logging.WARNING, logger="vsan_flows.glance"), \
            pytest.raises(exceptions.InstanceNotFound):
        api.snapshot(sim_conf, "no-such-instance", image_id, vsphere=vsphere, images=images)
    with pytest.raises(exceptions.ImageNotFound):
        images.show(image_id)
    assert any(image_id in r.getMessage() and "Deleted" in r.getMessage()
               for r in caplog.records), caplog.text


@GLANCE
def test_a_callers_token_is_used_for_its_run_and_the_service_user_otherwise(
        simulator, wsdl_url, tmp_path, vsphere, images, glance_api, small_vmdk, control,
        destroy_after):
    from tests.functional.conftest import glance_overrides, make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, **glance_overrides(glance_api))
    image_id = images.add_file(small_vmdk, name="tokens")
    user_token = "user-token-" + uuid.uuid4().hex[:8]
    name = "tok-" + uuid.uuid4().hex[:8]
    destroy_after.append(name)
    mark = glance_api.settled_mark(images)
    result = api.spawn(conf, name, image_id, vsphere=vsphere, context=user_token)
    destroy_after.append(result["shadow_vm"]["name"])
    lines = [line for line in glance_api.access_lines()[mark:] if image_id in line]
    assert len(lines) >= 3 and all(f"token={user_token}" in line for line in lines), lines
    gets = _file_requests(glance_api, image_id, mark)
    assert [g for g in gets if "range=-" in g] == [gets[-1]]  # one whole read: the stream

    mark = glance_api.settled_mark(images)
    second = "tok-" + uuid.uuid4().hex[:8]
    destroy_after.insert(0, second)
    api.spawn(conf, second, image_id, vsphere=vsphere)  # no caller: the service user
    lines = [line for line in glance_api.access_lines()[mark:] if image_id in line]
    assert lines and all(f"token={SERVICE_TOKEN}" in line for line in lines), lines


# --------------------------------------------------------------------------- Glance restarts


@pytest.fixture(scope="module")
def restartable_glance(tmp_path_factory):
    """A glance-api of this module's own: the tests below kill it."""
    from tests.functional import glance_api as launcher_g

    g = launcher_g.start(tmp_path_factory.mktemp("glance-restart"))
    yield g
    g.stop()


def _crash_glance_mid_transfer(glance, task_suffix: str, crashed: list):
    """An engine listener: SIGKILL glance-api at the task's second progress report (the
    first comes with the first chunk, before Glance may have seen the request; the second a
    second later, mid-body), and start it again before returning, so the cut is seen and
    Glance is back for the retry."""
    import signal
    from contextlib import contextmanager

    from taskflow import task as tf_task

    @contextmanager
    def listener(engine):
        def on_progress(event_type, details):
            if not 0.0 < float(details.get("progress") or 0.0) < 1.0:
                return
            crashed.append(False)
            if len(crashed) == 2:
                crashed.append(True)
                glance.stop(signal.SIGKILL)
                glance.run()

        for atom in engine.compilation.execution_graph.nodes:
            if atom.name.endswith(task_suffix):
                atom.notifier.register(tf_task.EVENT_UPDATE_PROGRESS, on_progress)
        yield

    return listener


def test_glance_crash_mid_download_is_retried(simulator, wsdl_url, tmp_path, vsphere,
                                              restartable_glance, control, destroy_after):
    from tests.functional.conftest import glance_overrides, make_conf

    conf = make_conf(simulator, wsdl_url, tmp_path, vsan_flows__import_retries=2,
                     **glance_overrides(restartable_glance))
    images = GlanceImageService.from_conf(conf)
    # Large enough that a second into the (throttled) PUT Glance is still sending: the copy
    # reads a few MiB ahead of the PUT, and loopback socket buffers hold several more.
    vmdk = disks.make_stream_optimized(tmp_path / "restart.vmdk", 64 * MiB, data_mib=32)
    image_id = images.add_file(vmdk, name="restart")
    name = "grestart-" + uuid.uuid4().hex[:8]
    destroy_after.append(name)
    before = control.calls("ImportVApp")
    control.throttle_nfc(4 * MiB, direction="upload")
    crashed: list = []
    result = api.spawn(conf, name, image_id, vsphere=vsphere, listeners=(
        _crash_glance_mid_transfer(restartable_glance, "StreamDiskToLease", crashed),))
    destroy_after.append(result["shadow_vm"]["name"])
    assert True in crashed and control.calls("ImportVApp") == before + 2  # cut, then retried
    # The cache entry holds the image's disk, byte for byte (vSAN shows no data file to
    # measure, so the disk's content is compared).
    raw = tmp_path / "restart.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)],
                   check=True)
    assert control.guest_read(result["shadow_vm"]["name"]) == raw.read_bytes()
    images.delete(image_id)


def test_glance_crash_mid_upload_never_leaves_an_active_image(
        simulator, wsdl_url, tmp_path, vsphere, restartable_glance, control, destroy_after,
        sim_conf, caplog):
    """Glance keeps an image whose upload died with it in 'saving' for good (no client can
    reset it); the retried upload is refused with that said, and the flow's revert deletes
    the image and logs it. Nothing of it is ever active."""
    from tests.functional.conftest import glance_overrides, make_conf
    from vsan_flows.images import LocalImageService

    local = LocalImageService(tmp_path / "local")
    base = disks.make_stream_optimized(tmp_path / "base.vmdk", 64 * MiB, data_mib=16)
    instance = "gcrash-" + uuid.uuid4().hex[:8]
    destroy_after.append(instance)
    result = api.spawn(sim_conf, instance, local.add_file(base, name="base"), vsphere=vsphere,
                       images=local)
    destroy_after.append(result["shadow_vm"]["name"])

    conf = make_conf(simulator, wsdl_url, tmp_path, vsan_flows__import_retries=3,
                     **glance_overrides(restartable_glance))
    images = GlanceImageService.from_conf(conf)
    image_id = images.create({"name": "snap-cut-by-a-crash"})
    control.throttle_nfc(4 * MiB, direction="download")
    crashed: list = []
    exports = control.calls("ExportVm")
    with caplog.at_level(logging.WARNING, logger="vsan_flows.glance"), \
            pytest.raises(exceptions.ImageError) as err:
        api.snapshot(conf, instance, image_id, vsphere=vsphere, listeners=(
            _crash_glance_mid_transfer(restartable_glance, "StreamDiskToImage", crashed),))
    assert True in crashed
    assert isinstance(err.value, exceptions.ImageServiceRefused)  # final: not retried again
    assert image_id in str(err.value) and "saving" in str(err.value)
    assert control.calls("ExportVm") == exports + 2  # the cut one, the retry that met it
    with pytest.raises(exceptions.ImageNotFound):
        images.show(image_id)
    assert any("Deleted" in r.getMessage() and image_id in r.getMessage()
               for r in caplog.records), caplog.text
    # Not asserted: the bytes the killed glance-api was writing stay in its file store as a
    # file no image record owns (Glance 33 never cleans that up; no client can).
