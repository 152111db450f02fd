"""Moving disk bytes through a lease."""

from __future__ import annotations

import functools
import time

from taskflow import task

from vsan_flows import exceptions
from vsan_flows.streamcheck import StreamTap
from vsan_flows.vsphere import exports, imports

# TaskFlow persists every update_progress() call (~9 ms each on sqlite); once a second is
# plenty for a person watching and keeps the hot loop off the database.
PROGRESS_INTERVAL = 1.0


class StreamDiskToLease(task.Task):
    """Stream the image to the import lease and prove every byte landed.

    Proof is fourfold: vCenter answers the PUT with success, the stream we sent is a complete
    streamOptimized disk (end structure checked on the bytes that went by), its hash is the
    one the image service recorded at upload (a disk corrupted at rest would otherwise become
    the cached base disk of every later instance), and what vSAN offers agrees (the lease
    still ready after vCenter's answer; the VM's disk on the datastore with the image's
    capacity, read while the host stores the last bytes; vSAN has no data file whose size
    could be read). None of it waits on the writer's path. Any miss raises before the lease is
    completed, and the import subflow's revert aborts the lease and destroys the half-imported
    VM.
    """

    default_provides = "bytes_sent"

    #: A crash in the middle leaves a partial disk behind a lease that died with the process:
    #: the runtime fails this task on resume, so its subflow's Retry discards both and starts
    #: over with a fresh lease, instead of re-running it on the dead one.
    restart_after_crash = True

    def execute(self, vsphere, images, policy, image: dict, datastore: dict,
                import_lease: dict | None) -> int:
        if import_lease is None:
            return 0  # cache hit, nothing to send
        size = image["size"]
        last = [0.0]

        def on_progress(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or done == size:
                last[0] = now
                self.update_progress(done / size if size else 1.0)

        with images.open(image["id"]) as source:
            recorded = image.get("hash")  # absent in flows stored before it was recorded
            if recorded and _same_hash(getattr(source, "verifies_hash", None), recorded):
                recorded = None  # the source checks it at its end (a Glance download)
            tap = StreamTap(source, image_id=image["id"],
                            expected_hash=tuple(recorded) if recorded else None)
            verify = policy.verify_stored_size and import_lease.get("vm")
            # The VM's disk is read while the host stores the last bytes (our process
            # only waits then); the lease's state after vCenter's answer.
            vm_disk_check = functools.partial(
                imports.check_imported_vm_disk, vsphere, import_lease["vm"], datastore["name"],
                image["virtual_size"]) if verify else None
            sent = imports.upload(vsphere, import_lease["lease"], tap, size, on_progress,
                                  while_storing=vm_disk_check)
        tap.check_complete()
        if verify:
            imports.check_lease_ready(vsphere, import_lease["lease"])
        return sent


def _same_hash(a, b) -> bool:
    """Whether two (algorithm, hex digest) pairs name the same hash."""
    return bool(a and b and len(a) == len(b) == 2
                and all(str(x).lower() == str(y).lower() for x, y in zip(a, b, strict=True)))


class StreamDiskToImage(task.Task):
    """Read the export lease's disk and upload it as a streamOptimized image.

    The upload pulls through a tap that checks, at the very last read, that the stream is a
    whole streamOptimized disk (end structure, byte count as the lease announced it); a cut
    export makes that read raise, so the image service never turns the image active.
    """

    default_provides = "image_upload"

    #: A crash in the middle leaves a partial disk behind a lease that died with the process:
    #: the runtime fails this task on resume, so its subflow's Retry discards both and starts
    #: over with a fresh lease, instead of re-running it on the dead one.
    restart_after_crash = True

    def execute(self, vsphere, images, image_id: str, instance: dict, export_lease: dict,
                flow_token: str) -> dict:
        last = [0.0]
        reader = exports.open_export(vsphere, export_lease["lease"])
        total = reader.content_length
        # vCenter announces no export length (the stream is generated as it goes): progress
        # is then an estimate against the disk's capacity, held below 1.0 until the end.
        estimate = total or instance.get("capacity_bytes")
        ceiling = 1.0 if total else 0.99

        def on_progress(done: int) -> None:
            now = time.monotonic()
            if estimate and now - last[0] >= PROGRESS_INTERVAL:
                last[0] = now
                self.update_progress(min(done / estimate, ceiling))

        tap = StreamTap(reader, image_id=image_id, verify_at_eof=True, expected_bytes=total,
                        timeout_secs=vsphere.transfer_timeout, on_progress=on_progress)
        props = {
            "disk_format": "vmdk",
            "container_format": "bare",
            "vmware_disktype": "streamOptimized",
            "vmware_image_version": 1,
            "vmware_ostype": instance["guest_id"],
            "vmware_adaptertype": instance["adapter_type"],
            "vsan_flows_flow": flow_token,
        }
        try:
            done = images.upload(image_id, tap, props)
        except exceptions.ImageAlreadyHasData:
            # Asked only now, not before every upload (a Glance round trip per snapshot): the
            # upload refuses an image with data untouched, and only then is it worth knowing
            # whether this flow wrote it before a crash or a retry.
            meta = images.show(image_id)
            if meta.status == "active" and meta.properties.get("vsan_flows_flow") == flow_token:
                return {"size": meta.size}
            raise
        except exceptions.InvalidImage as exc:
            raise exceptions.IncompleteTransfer(
                f"The disk export (the stream is not a whole streamOptimized disk: "
                f"{exc.reason})", bytes_sent=tap.bytes_read, bytes_expected=total) from None
        finally:
            tap.close()
        return {"size": done.size}
