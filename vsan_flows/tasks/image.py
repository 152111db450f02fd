"""Tasks that read the image service."""

from __future__ import annotations

import hashlib

from taskflow import task

from vsan_flows import exceptions, vmdk

# The most read_header may need: a descriptor may start at sector 2048 and span 2048 sectors.
# Asking for just this much is a ranged read, never a whole download held open.
HEADER_PEEK = (vmdk.MAX_DESCRIPTOR_OFFSET + vmdk.MAX_DESCRIPTOR_SECTORS) * vmdk.SECTOR


class ValidateStreamOptimizedImage(task.Task):
    """Refuse anything but a whole streamOptimized VMDK before a vCenter object exists.

    nova looks at no image byte before its lease exists, so a monolithicSparse or raw file
    tagged streamOptimized "deploys" as a 1 KB disk. We read the record and the header (and,
    for files with their grain tables up front, the tables) and stop here instead.
    """

    default_provides = "image"

    def execute(self, images, image_id: str) -> dict:
        meta = images.show(image_id)
        found = f"disk_format={meta.disk_format}, vmware_disktype={meta.vmware_disktype}"
        if meta.status != "active":
            raise exceptions.InvalidImage(f"the image is {meta.status}, not active",
                                          image_id=image_id, found=found)
        if meta.disk_format != "vmdk" or meta.vmware_disktype != "streamOptimized":
            raise exceptions.InvalidImage("its metadata does not say streamOptimized VMDK",
                                          image_id=image_id, found=found)
        with images.open(image_id, length=HEADER_PEEK) as f:
            header = vmdk.inspect_stream_optimized(f, image_id=image_id,
                                                   declared_size=meta.size)
        if not header.gd_at_end:
            with images.open(image_id, length=header.overhead_bytes) as f:
                self._check_grains_fit(f, header, image_id, meta.size)
        props = meta.properties
        return {
            "id": image_id,
            "name": meta.name,
            "size": int(meta.size),
            "virtual_size": header.capacity_bytes,
            "adapter_type": props.get("vmware_adaptertype") or _adapter(header.adapter_type),
            "os_type": props.get("vmware_ostype") or "otherGuest",
            # What the store recorded at upload; the stream is checked against it.
            "hash": _recorded_hash(meta),
        }

    @staticmethod
    def _check_grains_fit(f, header: vmdk.VmdkHeader, image_id: str, size: int) -> None:
        """A file with its grain tables in front says where its last grain is: is it there?"""
        first = vmdk.read_exact(f, header.overhead_bytes)
        if len(first) < header.overhead_bytes:
            raise exceptions.InvalidImage(
                "the file is truncated inside its grain tables", image_id=image_id,
                found=f"{len(first)} bytes, the tables need {header.overhead_bytes}")
        last = vmdk.last_grain_sector(first, header)
        if last is not None and (last + 1) * vmdk.SECTOR > size:
            raise exceptions.InvalidImage(
                "the file is truncated: its grain tables place data beyond its end",
                image_id=image_id,
                found=f"{size} bytes, last grain at byte {last * vmdk.SECTOR}")


def _recorded_hash(meta) -> list[str] | None:
    """(algorithm, hex digest) the image service recorded, if hashlib knows the algorithm."""
    algo, value = getattr(meta, "os_hash_algo", None), getattr(meta, "os_hash_value", None)
    if algo and value and algo.lower() in hashlib.algorithms_available:
        return [algo.lower(), value]
    return None


def _adapter(descriptor_value: str | None) -> str:
    """The descriptor's ddb.adapterType, spelled as vSphere's vmware_adaptertype values."""
    mapping = {"lsilogic": "lsiLogic", "buslogic": "busLogic", "lsisas1068": "lsiLogicsas",
               "pvscsi": "paraVirtual", "ide": "ide"}
    return mapping.get((descriptor_value or "").lower(), "lsiLogic")
