"""Disk fixtures made on demand with qemu-img, good and bad, never committed as binaries.

Tests and the demo need real streamOptimized VMDKs (the simulator stores uploaded bytes as-is,
so a fake would prove nothing) and real examples of every way an image can be wrong. Each maker
writes a sparse raw file with a little recognizable data and lets qemu-img do the conversion, so
a 2 GiB virtual disk takes a fraction of a second and a few MiB of disk.

The data is deterministic: ``pattern`` seeds a PRNG, and :func:`expected_regions` tells a test
where the non-zero data sits and what it hashes to, so a round trip through vCenter can be
checked byte for byte after converting back to raw.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

from vsan_flows import vmdk

MIB = 1 << 20
REGION = MIB

_INSTALL_HINT = "install qemu-utils: run tools/test-setup.sh (or apt-get install qemu-utils)"


class QemuImgError(RuntimeError):
    """qemu-img is missing or failed; fixtures cannot be made."""


def _qemu_img(*args: str) -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise QemuImgError(f"qemu-img not found on PATH; {_INSTALL_HINT}")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise QemuImgError(f"qemu-img {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _region_offsets(size_bytes: int, data_mib: int) -> list[int]:
    """Offsets of the 1 MiB data regions: the first MiB, the last, and evenly between."""
    slots = size_bytes // REGION
    count = max(1, min(data_mib, slots))
    if count == 1:
        return [0]
    return [((slots - 1) * i // (count - 1)) * REGION for i in range(count)]


def _region_data(pattern: int, offset: int) -> bytes:
    tag = f"vsan-flows fixture pattern={pattern} offset={offset}\n".encode()
    body = random.Random(pattern * 1_000_003 + offset).randbytes(REGION - len(tag))
    return tag + body


def expected_regions(
    size_bytes: int, pattern: int = 1, data_mib: int = 3
) -> list[tuple[int, int, str]]:
    """(offset, length, sha256) of every non-zero region a maker wrote; the rest is zeros."""
    return [
        (off, REGION, hashlib.sha256(_region_data(pattern, off)).hexdigest())
        for off in _region_offsets(size_bytes, data_mib)
    ]


def _check_size(size_bytes: int) -> None:
    if size_bytes < REGION or size_bytes % REGION:
        raise ValueError(f"size_bytes must be a positive multiple of 1 MiB, got {size_bytes}")


def make_raw(
    path: str | os.PathLike[str], size_bytes: int, pattern: int = 1, data_mib: int = 3
) -> Path:
    """A sparse raw disk with ``data_mib`` pseudo-random 1 MiB regions (the source of the rest)."""
    _check_size(size_bytes)
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        for off in _region_offsets(size_bytes, data_mib):
            f.seek(off)
            f.write(_region_data(pattern, off))
    return path


def _convert(
    path: str | os.PathLike[str],
    size_bytes: int,
    subformat: str,
    pattern: int,
    data_mib: int,
    adapter_type: str,
    extra_opts: str = "",
) -> Path:
    path = Path(path)
    raw = path.with_name(path.name + ".raw.tmp")
    try:
        make_raw(raw, size_bytes, pattern, data_mib)
        _qemu_img(
            "convert", "-f", "raw", "-O", "vmdk",
            "-o", f"subformat={subformat},adapter_type={adapter_type}{extra_opts}",
            str(raw), str(path),
        )  # fmt: skip
    finally:
        raw.unlink(missing_ok=True)
    return path


def make_stream_optimized(
    path: str | os.PathLike[str],
    size_bytes: int,
    pattern: int = 1,
    *,
    data_mib: int = 3,
    adapter_type: str = "lsilogic",
) -> Path:
    """A valid streamOptimized VMDK (qemu layout) of virtual size ``size_bytes``."""
    return _convert(path, size_bytes, "streamOptimized", pattern, data_mib, adapter_type)


def make_qemu_compat6(
    path: str | os.PathLike[str], size_bytes: int, pattern: int = 1, *, data_mib: int = 3
) -> Path:
    """A streamOptimized VMDK as qemu-img writes it with compat6 (hardware version 6) and an
    lsilogic adapter: a foreign variant of the format, as users bring them."""
    return _convert(path, size_bytes, "streamOptimized", pattern, data_mib, "lsilogic",
                    ",compat6=on")


_VMDKSTREAM = "import sys, VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])"


def make_vmdkstream(
    path: str | os.PathLike[str], size_bytes: int, pattern: int = 1, *, data_mib: int = 3
) -> Path:
    """A streamOptimized VMDK written by Ubuntu's VMDKstream (Debian python3-vmdkstream), the
    converter cloud images are made with: not qemu's layout, so flows meet a foreign writer."""
    path = Path(path)
    raw = path.with_name(path.name + ".raw.tmp")
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    try:
        make_raw(raw, size_bytes, pattern, data_mib)
        proc = subprocess.run([python, "-c", _VMDKSTREAM, str(raw), str(path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise QemuImgError(f"VMDKstream failed ({last}); install python3-vmdkstream: run "
                               "tools/test-setup.sh")
    finally:
        raw.unlink(missing_ok=True)
    return path


def make_monolithic_sparse(
    path: str | os.PathLike[str], size_bytes: int, pattern: int = 1, *, data_mib: int = 3
) -> Path:
    """A hosted-format sparse VMDK: 'KDMV' magic but version 1, no compression, no markers."""
    return _convert(path, size_bytes, "monolithicSparse", pattern, data_mib, "lsilogic")


def make_flat(
    path: str | os.PathLike[str], size_bytes: int, pattern: int = 1, *, data_mib: int = 3
) -> Path:
    """A monolithicFlat disk: returns the descriptor (text) path; data is in <name>-flat.vmdk."""
    return _convert(path, size_bytes, "monolithicFlat", pattern, data_mib, "lsilogic")


def make_raw_renamed(path: str | os.PathLike[str], size_bytes: int, pattern: int = 1) -> Path:
    """Raw disk data under a .vmdk name: what an upload with the wrong disk_format looks like."""
    return make_raw(path, size_bytes, pattern)


def make_truncated(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_bytes: int
) -> Path:
    """The first ``keep_bytes`` of ``src``: an upload or export cut short."""
    dst = Path(dst)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        remaining = keep_bytes
        while remaining > 0:
            chunk = fin.read(min(MIB, remaining))
            if not chunk:
                break
            fout.write(chunk)
            remaining -= len(chunk)
    return dst


# byte offsets inside the SparseExtentHeader
_OFF_CAPACITY = 12
_OFF_GRAIN = 20
_OFF_DESC_OFFSET = 28
_OFF_GD = 56
_OFF_NEWLINE = 73

CORRUPTIONS = ("newline", "grain_size", "descriptor_offset")


def _patch(src: str | os.PathLike[str], dst: str | os.PathLike[str], at: int, data: bytes) -> Path:
    dst = Path(dst)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(at)
        f.write(data)
    return dst


def make_corrupt_header(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], kind: str = "newline"
) -> Path:
    """Copy ``src`` with one header field damaged.

    ``newline``: the newline-detection bytes as a text-mode transfer leaves them ("\\n" turned
    into "\\r\\n"); ``grain_size``: grainSize 3 sectors (not a power of two);
    ``descriptor_offset``: the descriptor placed at sector 10**9.
    """
    if kind == "newline":
        return _patch(src, dst, _OFF_NEWLINE, b"\r\n \r")
    if kind == "grain_size":
        return _patch(src, dst, _OFF_GRAIN, struct.pack("<Q", 3))
    if kind == "descriptor_offset":
        return _patch(src, dst, _OFF_DESC_OFFSET, struct.pack("<Q", 10**9))
    raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")


def make_size_lying(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], capacity_bytes: int | None = None
) -> Path:
    """Copy ``src`` with a header whose capacity lies about the disk's size.

    "Metadata that lies about the size" here means the sparse header's capacity disagrees with
    the disk the file really describes: the descriptor's extent (written by the same tool as the
    data) still says the true size, and grains may exist beyond the claimed end. Default claim:
    half the real size. The other kind of lie, the image service's ``size`` not matching the
    file, is made by editing LocalImageService metadata, not the file.
    """
    with open(src, "rb") as f:
        header = vmdk.read_header(f)
    claim = capacity_bytes if capacity_bytes is not None else header.capacity_bytes // 2
    return _patch(src, dst, _OFF_CAPACITY, struct.pack("<Q", claim // vmdk.SECTOR))


def make_vmware_stream(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Rewrite a qemu streamOptimized file in the true-stream layout ESXi exports produce.

    qemu-img keeps the grain directory up front; VMware's writer emits grains first and then
    grain tables, directory, footer and end-of-stream marker, with gdOffset = GD_AT_END in the
    header. qemu-img reads both, so ``qemu-img compare src dst`` proves the rewrite is right,
    and tests of the footer check run against a real layout instead of a hand-made tail.
    Reads ``src`` into memory: meant for fixtures of a few hundred MiB of data at most.
    """
    data = Path(src).read_bytes()
    header = vmdk.read_header(data)
    vmdk.validate_stream_optimized(header)
    if header.gd_at_end:
        raise ValueError(f"{src} is already a true stream")
    sec = vmdk.SECTOR
    n_gt, n_gte = header.num_grain_tables, header.num_gtes_per_gt
    gd = struct.unpack_from(f"<{n_gt}I", data, header.gd_offset * sec)

    out = bytearray()
    desc_end = header.descriptor_offset + header.descriptor_sectors
    overhead = -(-desc_end // 128) * 128
    hdr = bytearray(data[:sec])
    flags = header.flags & ~vmdk.FLAG_REDUNDANT_GT
    struct.pack_into("<I", hdr, 8, flags)
    struct.pack_into("<Q", hdr, 48, 0)  # no redundant GD in a stream
    struct.pack_into("<Q", hdr, _OFF_GD, vmdk.GD_AT_END)
    struct.pack_into("<Q", hdr, 64, overhead)
    out += hdr + data[sec : desc_end * sec]
    out += bytes(overhead * sec - len(out))

    def pad() -> None:
        out.extend(bytes(-len(out) % sec))

    new_gts: list[list[int]] = []
    for gt_sector in gd:
        entries = (
            list(struct.unpack_from(f"<{n_gte}I", data, gt_sector * sec))
            if gt_sector
            else [0] * n_gte
        )
        new = []
        for entry in entries:
            if entry <= 1:
                new.append(entry)
                continue
            lba, size = struct.unpack_from("<QI", data, entry * sec)
            new.append(len(out) // sec)
            out += struct.pack("<QI", lba, size) + data[entry * sec + 12 : entry * sec + 12 + size]
            pad()
        new_gts.append(new)

    gt_sectors = -(-n_gte * 4 // sec)
    new_gd = []
    for entries in new_gts:
        if not any(entries):
            new_gd.append(0)
            continue
        out += struct.pack("<QII", gt_sectors, 0, vmdk.MARKER_GT).ljust(sec, b"\0")
        new_gd.append(len(out) // sec)
        out += struct.pack(f"<{n_gte}I", *entries).ljust(gt_sectors * sec, b"\0")
    gd_sectors = -(-n_gt * 4 // sec)
    out += struct.pack("<QII", gd_sectors, 0, vmdk.MARKER_GD).ljust(sec, b"\0")
    gd_at = len(out) // sec
    out += struct.pack(f"<{n_gt}I", *new_gd).ljust(gd_sectors * sec, b"\0")
    out += struct.pack("<QII", 1, 0, vmdk.MARKER_FOOTER).ljust(sec, b"\0")
    footer = bytearray(hdr)
    struct.pack_into("<Q", footer, _OFF_GD, gd_at)
    out += footer
    out += bytes(sec)  # end-of-stream marker: val 0, size 0, type 0
    dst = Path(dst)
    dst.write_bytes(out)
    return dst


def qemu_img_info(path: str | os.PathLike[str]) -> str:
    """qemu-img's own opinion of a file, for test failure messages."""
    return _qemu_img("info", str(path))


def images_identical(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two disk images have the same guest-visible content (any formats)."""
    exe = shutil.which("qemu-img")
    if exe is None:
        raise QemuImgError(f"qemu-img not found on PATH; {_INSTALL_HINT}")
    proc = subprocess.run([exe, "compare", str(a), str(b)], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise QemuImgError(f"qemu-img compare failed: {proc.stderr.strip()}")
    return proc.returncode == 0
