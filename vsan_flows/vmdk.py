"""Read and validate streamOptimized VMDK headers and stream ends, from bytes only.

Why this exists: vSphere's import lease accepts whatever bytes it is sent, and nova sends image
bytes without looking at them first. A monolithicSparse file, a flat descriptor or raw data
tagged ``vmware_disktype=streamOptimized`` then "imports" as a 1 KB disk and leaves a shadow VM
behind. Reading the first few KiB *before* any vCenter object exists turns that into a clear
``InvalidImage`` that costs nothing to clean up.

Layout (VMware "Virtual Disk Format 1.1", section on hosted sparse extents and stream-optimized
compressed extents; all integers little-endian, sizes in 512-byte sectors):

* sector 0: the SparseExtentHeader (magic ``KDMV``, version 3 for streamOptimized, flags with
  compressed-grain and marker bits, capacity, grainSize, descriptor position, GD position,
  overHead, the newline-detection bytes ``\\n \\r\\n`` and the compression algorithm);
* the embedded text descriptor (``createType="streamOptimized"``, one SPARSE extent, ``ddb.*``);
* grains, each behind a 12-byte grain marker (LBA, compressed size), sector-aligned;
* for a true stream (VMware's writer, an ESXi export): grain tables and the grain directory
  behind metadata markers, then a footer marker, a footer (a copy of the header whose gdOffset
  is real) and an end-of-stream marker; the header's gdOffset is ``GD_AT_END``.

qemu-img writes a *different but readable* streamOptimized file: its grain directory and tables
are preallocated right after the descriptor (the header's gdOffset is a real sector), and there
is no footer or end-of-stream marker. vSphere accepts both, so do we; :func:`check_stream_end`
checks completeness in the way that fits each layout.

Virtual size (``capacity``) and file size are different things: a 2 GiB disk with 4 MiB of data
is a ~4.5 MB file. Placement needs the virtual size; the image service's ``size`` is the file
size and can only be checked against bounds the header implies (see
:func:`validate_stream_optimized`).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from vsan_flows.exceptions import InvalidImage

SECTOR = 512
MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
NEWLINE_BYTES = b"\n \r\n"

FLAG_VALID_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZERO_GTE = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

COMPRESSION_DEFLATE = 1

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

STREAM_OPTIMIZED = "streamOptimized"

# Bounds a sane writer stays far inside. The descriptor normally sits at sector 1 with 20
# sectors; a header pointing megabytes away is damage, and following it would make the
# validator read (and buffer) arbitrary amounts of a hostile stream.
MAX_DESCRIPTOR_SECTORS = 2048
MAX_DESCRIPTOR_OFFSET = 2048
# Grain size must be a power of two of at least 8 sectors (4 KiB) per the spec; VMware and qemu
# use 128 (64 KiB). Above 1 MiB, the compressed-grain buffers of the importer are not sized for it.
MIN_GRAIN_SECTORS = 8
MAX_GRAIN_SECTORS = 2048
# Tail to keep from a stream for check_stream_end: the end markers plus one whole worst-case
# compressed grain (1 MiB grains plus deflate and marker overhead).
TAIL_BYTES = (1 << 20) + 8 * SECTOR
# vSphere's largest virtual disk (62 TB): a header claiming more is not a disk vSphere can hold,
# and every size derived from it (tables, overhead) would be unbounded.
MAX_CAPACITY_SECTORS = (62 << 40) // 512

# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
# rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline bytes, compressAlgorithm (+433 pad)
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QII")  # val (LBA or sector count), size, type (only when size == 0)
_GRAIN_MARKER = struct.Struct("<QI")

_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?(?:\s+(\d+))?\s*$'
)
_KEY_RE = re.compile(r'^([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?\s*$')
_DESCRIPTOR_SIGNATURE = b"# Disk DescriptorFile"


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str
    filename: str | None


@dataclass(frozen=True)
class VmdkHeader:
    """What the first bytes of a sparse VMDK say about the disk (see the module docstring)."""

    version: int
    flags: int
    capacity_sectors: int
    grain_sectors: int
    descriptor_offset: int
    descriptor_sectors: int
    num_gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead_sectors: int
    unclean_shutdown: bool
    newline_bytes: bytes
    compress_algorithm: int
    descriptor: str | None
    create_type: str | None
    adapter_type: str | None
    extents: tuple[Extent, ...]

    @property
    def capacity_bytes(self) -> int:
        """The virtual disk size: what the guest sees and what a datastore must hold."""
        return self.capacity_sectors * SECTOR

    @property
    def grain_size(self) -> int:
        return self.grain_sectors * SECTOR

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def has_markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)

    @property
    def gd_at_end(self) -> bool:
        """True for a true stream whose grain directory is found through the footer."""
        return self.gd_offset == GD_AT_END

    @property
    def header_bytes(self) -> int:
        """Bytes that must be read to see the header and the whole embedded descriptor."""
        return max(SECTOR, (self.descriptor_offset + self.descriptor_sectors) * SECTOR)

    @property
    def overhead_bytes(self) -> int:
        """Bytes before the first grain (header, descriptor and, for qemu files, GD and GTs)."""
        return self.overhead_sectors * SECTOR

    @property
    def num_grains(self) -> int:
        if not self.grain_sectors:
            return 0
        return -(-self.capacity_sectors // self.grain_sectors)

    @property
    def num_grain_tables(self) -> int:
        if not self.num_gtes_per_gt:
            return 0
        return -(-self.num_grains // self.num_gtes_per_gt)

    def descriptor_value(self, key: str) -> str | None:
        """A ``key = "value"`` entry of the embedded descriptor (e.g. ddb.virtualHWVersion)."""
        return _descriptor_fields(self.descriptor or "").get(key)


@dataclass(frozen=True)
class VmdkFooter:
    """The footer of a true stream: a header copy whose gdOffset points at the real GD."""

    capacity_sectors: int
    grain_sectors: int
    gd_offset: int
    num_gtes_per_gt: int


# --------------------------------------------------------------------------- reading


def _describe(image_id: str | None) -> dict[str, str | None]:
    return {"image_id": image_id}


def read_exact(source: BinaryIO, n: int) -> bytes:
    """Read up to n bytes from a stream that may return short reads (sockets, HTTP bodies)."""
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = source.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Source:
    """Bytes or a file-like, read forward only and never more than asked for."""

    def __init__(self, source: bytes | bytearray | memoryview | BinaryIO) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._buf = bytes(source)
            self._stream: BinaryIO | None = None
        else:
            self._buf = b""
            self._stream = source

    def upto(self, n: int) -> bytes:
        if self._stream is not None and len(self._buf) < n:
            self._buf += read_exact(self._stream, n - len(self._buf))
        return self._buf[:n]


def _descriptor_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _KEY_RE.match(line)
        if m:
            fields[m.group(1)] = m.group(2)
    return fields


def _parse_extents(text: str) -> tuple[Extent, ...]:
    extents = []
    for line in text.splitlines():
        m = _EXTENT_RE.match(line.strip())
        if m:
            extents.append(Extent(m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return tuple(extents)


def _sniff_other_format(head: bytes) -> str:
    """Name what the data is when it is not a sparse VMDK, so the operator knows what to convert."""
    if head.startswith(b"\x1f\x8b"):
        return ("gzip-compressed data (decompress it first, e.g. `gunzip disk.vmdk.gz`, and "
                "upload the .vmdk inside)")
    if head.startswith(b"QFI\xfb"):
        return "a qcow2 image"
    if head.startswith(b"COWD"):
        return "an ESX 'COWD' sparse extent (VMDK version 1, not streamOptimized)"
    if head.startswith(b"vhdxfile"):
        return "a VHDX image"
    if head and not any(head):
        return "raw data (the first sector is all zeros)"
    return f"raw or unknown data (first bytes {head[:8].hex()})"


def read_header(
    source: bytes | bytearray | memoryview | BinaryIO, *, image_id: str | None = None
) -> VmdkHeader:
    """Parse the sparse header and embedded descriptor from the first bytes of an image.

    Reads at most ``header_bytes`` (normally 10.5 KiB) from a stream, so it can run on the
    image service's download before anything is created in vCenter. Raises ``InvalidImage``
    when the data cannot be parsed as a sparse VMDK at all (not a VMDK, a descriptor-only text
    file, truncated, a descriptor position beyond reason); whether a parsable header is a
    deployable streamOptimized disk is :func:`validate_stream_optimized`'s job.
    """
    src = _Source(source)
    head = src.upto(SECTOR)

    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_DESCRIPTOR_SIGNATURE):
        text = src.upto(64 * 1024).split(b"\0")[0].decode("utf-8", "replace")
        create_type = _descriptor_fields(text).get("createType", "unknown")
        raise InvalidImage(
            "the data is a VMDK descriptor text file without the disk data (flat and split "
            "disks keep their data in separate -flat/-sNNN files that an image cannot carry)",
            found=f'a text descriptor with createType="{create_type}"',
            **_describe(image_id),
        )
    if len(head) < len(MAGIC):
        raise InvalidImage(
            "the data is truncated or empty",
            found=f"{len(head)} bytes; a VMDK header alone is {SECTOR} bytes",
            **_describe(image_id),
        )
    if head[:4] != MAGIC:
        raise InvalidImage(
            "the data is not a VMDK (no 'KDMV' sparse-extent magic)",
            found=_sniff_other_format(head),
            **_describe(image_id),
        )
    if len(head) < SECTOR:
        raise InvalidImage(
            "the VMDK header is truncated",
            found=f"{len(head)} bytes; the header alone is {SECTOR} bytes",
            **_describe(image_id),
        )

    (
        _magic,
        version,
        flags,
        capacity,
        grain,
        desc_off,
        desc_size,
        gtes,
        rgd,
        gd,
        overhead,
        unclean,
        newline,
        compress,
    ) = _HEADER.unpack_from(head)

    descriptor: str | None = None
    if desc_off and desc_size:
        if desc_off > MAX_DESCRIPTOR_OFFSET or desc_size > MAX_DESCRIPTOR_SECTORS:
            raise InvalidImage(
                "the VMDK header is corrupted: its descriptor position is beyond reason",
                found=f"descriptorOffset={desc_off} sectors, descriptorSize={desc_size} sectors "
                f"(sane files use about 1 and 20; limits {MAX_DESCRIPTOR_OFFSET} and "
                f"{MAX_DESCRIPTOR_SECTORS})",
                **_describe(image_id),
            )
        need = (desc_off + desc_size) * SECTOR
        data = src.upto(need)
        if len(data) < need:
            raise InvalidImage(
                "the VMDK is truncated before the end of its descriptor",
                found=f"{len(data)} bytes; header and descriptor need {need}",
                **_describe(image_id),
            )
        raw = data[desc_off * SECTOR : need].split(b"\0")[0]
        descriptor = raw.decode("utf-8", "replace")

    fields = _descriptor_fields(descriptor or "")
    return VmdkHeader(
        version=version,
        flags=flags,
        capacity_sectors=capacity,
        grain_sectors=grain,
        descriptor_offset=desc_off,
        descriptor_sectors=desc_size,
        num_gtes_per_gt=gtes,
        rgd_offset=rgd,
        gd_offset=gd,
        overhead_sectors=overhead,
        unclean_shutdown=bool(unclean),
        newline_bytes=newline,
        compress_algorithm=compress,
        descriptor=descriptor,
        create_type=fields.get("createType"),
        adapter_type=fields.get("ddb.adapterType"),
        extents=_parse_extents(descriptor or ""),
    )


# --------------------------------------------------------------------------- validation


def max_overhead_sectors(header: VmdkHeader) -> int:
    """The largest metadata area (``overHead``) this geometry can honestly need.

    Header and descriptor, then the grain directory and every grain table, twice (writers may
    keep a redundant copy), rounded up to a grain plus one grain of alignment. Readers hold
    the metadata area in memory, so this bound is also what keeps a lying header from making
    them allocate without limit.
    """
    desc_end = header.descriptor_offset + header.descriptor_sectors
    gt_sectors = -(-header.num_gtes_per_gt * 4 // SECTOR)
    gd_sectors = -(-header.num_grain_tables * 4 // SECTOR)
    tables = 2 * (gd_sectors + header.num_grain_tables * gt_sectors)
    grain = max(header.grain_sectors, 1)
    return -(-(max(desc_end, 1) + tables) // grain) * grain + grain


def max_file_bytes(header: VmdkHeader) -> int:
    """The largest a streamOptimized file of this geometry can honestly be.

    Incompressible grains cost their size plus a marker and deflate's stored-block overhead,
    rounded up to a sector, i.e. at most one extra sector each; grain tables and the directory
    may appear twice (redundant copies); plus the overhead area, the end markers and 1 MiB of
    slack for writers that pad.
    """
    gt_bytes = -(-header.num_gtes_per_gt * 4 // SECTOR) * SECTOR + SECTOR
    gd_bytes = -(-header.num_grain_tables * 4 // SECTOR) * SECTOR + SECTOR
    return (
        header.overhead_bytes
        + header.num_grains * (header.grain_size + SECTOR)
        + 2 * (header.num_grain_tables * gt_bytes + gd_bytes)
        + 3 * SECTOR
        + (1 << 20)
    )


def _flags_text(flags: int) -> str:
    names = []
    for bit, name in (
        (FLAG_VALID_NEWLINE_TEST, "newline-test"),
        (FLAG_REDUNDANT_GT, "redundant-GT"),
        (FLAG_ZERO_GTE, "zeroed-GTE"),
        (FLAG_COMPRESSED, "compressed"),
        (FLAG_MARKERS, "markers"),
    ):
        if flags & bit:
            names.append(name)
    return f"0x{flags:x} ({', '.join(names) or 'none'})"


def validate_stream_optimized(
    header: VmdkHeader, image_id: str | None = None, declared_size: int | None = None
) -> None:
    """Raise ``InvalidImage`` naming the first reason this header cannot be imported.

    ``declared_size`` is the image service's byte size of the *file*. It is never compared to
    the virtual size (a sparse, compressed file is legitimately far smaller, and incompressible
    data slightly larger); it is checked only against what the header proves: it must hold the
    header and descriptor, and cannot exceed :func:`max_file_bytes`.
    """
    ident = _describe(image_id)
    ct = header.create_type
    if ct is None:
        raise InvalidImage(
            "the sparse extent has no embedded descriptor (an extent of a split or hosted "
            "disk, not a standalone streamOptimized disk)",
            found=f"descriptorOffset={header.descriptor_offset}",
            **ident,
        )
    if ct != STREAM_OPTIMIZED:
        what = (
            "a monolithicSparse VMDK (the hosted/Workstation format, uncompressed and without "
            "markers); the vSphere import only accepts streamOptimized"
            if ct == "monolithicSparse"
            else f"a {ct} VMDK, not streamOptimized"
        )
        raise InvalidImage(
            what,
            found=f'createType="{ct}", version {header.version}, flags '
            f"{_flags_text(header.flags)}",
            **ident,
        )
    if not (header.compressed and header.has_markers):
        raise InvalidImage(
            "the descriptor says streamOptimized but the header lacks the compressed-grain "
            "and marker flags (the data is laid out like monolithicSparse)",
            found=f"flags {_flags_text(header.flags)}",
            **ident,
        )
    if header.version != 3:
        raise InvalidImage(
            "wrong sparse-extent version for streamOptimized",
            found=f"version {header.version}; streamOptimized is version 3",
            **ident,
        )
    if header.compress_algorithm != COMPRESSION_DEFLATE:
        raise InvalidImage(
            "unsupported grain compression",
            found=f"compressAlgorithm={header.compress_algorithm}; only 1 (deflate) exists",
            **ident,
        )
    if header.flags & FLAG_VALID_NEWLINE_TEST and header.newline_bytes != NEWLINE_BYTES:
        raise InvalidImage(
            "the VMDK header is corrupted: its newline-detection bytes are mangled, typically "
            "by a text-mode (ASCII) transfer that rewrote line endings in the binary file",
            found=f"{header.newline_bytes!r}, expected {NEWLINE_BYTES!r}",
            **ident,
        )
    g = header.grain_sectors
    if g < MIN_GRAIN_SECTORS or g > MAX_GRAIN_SECTORS or g & (g - 1):
        raise InvalidImage(
            "the VMDK header is corrupted: impossible grain size",
            found=f"grainSize={g} sectors; it must be a power of two from "
            f"{MIN_GRAIN_SECTORS} to {MAX_GRAIN_SECTORS} (normally 128)",
            **ident,
        )
    if not 1 <= header.num_gtes_per_gt <= 65536:
        raise InvalidImage(
            "the VMDK header is corrupted: impossible grain-table size",
            found=f"numGTEsPerGT={header.num_gtes_per_gt} (normally 512)",
            **ident,
        )
    if header.capacity_sectors == 0:
        raise InvalidImage("the disk's virtual size is 0", found="capacity=0 sectors", **ident)
    if header.capacity_sectors > MAX_CAPACITY_SECTORS:
        raise InvalidImage(
            "the disk's virtual size is larger than vSphere's largest virtual disk (62 TB)",
            found=f"capacity={header.capacity_sectors} sectors "
            f"({header.capacity_sectors * SECTOR} bytes)",
            **ident,
        )
    desc_end = header.descriptor_offset + header.descriptor_sectors
    if header.overhead_sectors > max_overhead_sectors(header):
        raise InvalidImage(
            "the VMDK header is corrupted: its metadata area is larger than this disk's grain "
            "directory and tables can need",
            found=f"overHead={header.overhead_sectors} sectors; at most "
            f"{max_overhead_sectors(header)} for this geometry",
            **ident,
        )
    if header.overhead_sectors < desc_end:
        raise InvalidImage(
            "the VMDK header is corrupted: the grain area starts inside the descriptor",
            found=f"overHead={header.overhead_sectors} sectors, descriptor ends at {desc_end}",
            **ident,
        )
    if not header.gd_at_end and not desc_end <= header.gd_offset < header.overhead_sectors:
        raise InvalidImage(
            "the VMDK header is corrupted: the grain directory is outside the metadata area",
            found=f"gdOffset={header.gd_offset}, metadata area sectors {desc_end}.."
            f"{header.overhead_sectors}",
            **ident,
        )
    sparse = [e for e in header.extents if e.kind == "SPARSE"]
    if len(header.extents) != 1 or not sparse:
        kinds = ", ".join(f"{e.kind} {e.sectors}" for e in header.extents) or "none"
        raise InvalidImage(
            "the descriptor must describe exactly one SPARSE extent",
            found=f"extents: {kinds}",
            **ident,
        )
    if sparse[0].sectors != header.capacity_sectors:
        raise InvalidImage(
            "the disk's size metadata is inconsistent: the header's capacity and the "
            "descriptor's extent size disagree, so the virtual size cannot be trusted",
            found=f"header capacity {header.capacity_bytes} bytes, descriptor extent "
            f"{sparse[0].sectors * SECTOR} bytes",
            **ident,
        )
    if declared_size is not None:
        if declared_size < header.header_bytes:
            raise InvalidImage(
                "the image service's size for this image is smaller than the VMDK's own "
                "header and descriptor: the upload was truncated or the size is wrong",
                found=f"declared size {declared_size} bytes; header and descriptor alone need "
                f"{header.header_bytes}",
                **ident,
            )
        if declared_size % SECTOR:
            raise InvalidImage(
                "the file is truncated: a streamOptimized file is a whole number of 512-byte "
                "sectors",
                found=f"{declared_size} bytes ({declared_size % SECTOR} past the last sector "
                "boundary)",
                **ident,
            )
        limit = max_file_bytes(header)
        if declared_size > limit:
            raise InvalidImage(
                "the image service's size for this image is larger than any streamOptimized "
                "file of this virtual size can be: the metadata is wrong or the file carries "
                "extra data",
                found=f"declared size {declared_size} bytes, virtual size "
                f"{header.capacity_bytes} bytes, largest possible file {limit} bytes",
                **ident,
            )


def inspect_stream_optimized(
    source: bytes | bytearray | memoryview | BinaryIO,
    *,
    image_id: str | None = None,
    declared_size: int | None = None,
) -> VmdkHeader:
    """Read and validate in one call: the usual entry point before an import."""
    header = read_header(source, image_id=image_id)
    validate_stream_optimized(header, image_id=image_id, declared_size=declared_size)
    return header


# --------------------------------------------------------------------------- stream end


def _sectors(data: bytes) -> list[bytes]:
    return [data[i : i + SECTOR] for i in range(0, len(data), SECTOR)]


def read_footer(tail: bytes, *, image_id: str | None = None) -> VmdkFooter:
    """Parse the end of a true stream: footer marker, footer, end-of-stream marker.

    ``tail`` is the last bytes of the stream, a multiple of 512 long (at least 1536). All-zero
    sectors after the end-of-stream marker are accepted as padding (an EOS marker is itself an
    all-zero sector). Raises ``InvalidImage`` when the end is missing: the stream was cut.
    """
    ident = _describe(image_id)
    if len(tail) < 3 * SECTOR or len(tail) % SECTOR:
        raise InvalidImage(
            "the stream is cut: its end is too short or not sector-aligned to hold the footer "
            "and end-of-stream marker",
            found=f"last {len(tail)} bytes",
            **ident,
        )
    sectors = _sectors(tail)
    i = len(sectors) - 1
    while i >= 2 and not any(sectors[i]) and not any(sectors[i - 1]):
        i -= 1  # skip zero padding; sectors[i] stays the (all-zero) EOS candidate
    eos, footer, marker = sectors[i], sectors[i - 1], sectors[i - 2]
    val, size, mtype = _MARKER.unpack_from(eos)
    if val or size or mtype != MARKER_EOS:
        # Whatever the last sector holds (grain data, usually) is not worth quoting as a marker.
        raise InvalidImage(
            "the stream is cut: it ends before its end-of-stream marker",
            found=f"{len(tail)} bytes at the end examined, no footer and end-of-stream marker",
            **ident,
        )
    val, size, mtype = _MARKER.unpack_from(marker)
    if size or mtype != MARKER_FOOTER or footer[:4] != MAGIC:
        raise InvalidImage(
            "the stream is cut or damaged: no footer before the end-of-stream marker",
            found=f"marker type {mtype} size {size}, footer magic {footer[:4]!r}",
            **ident,
        )
    fields = _HEADER.unpack_from(footer)
    gd = fields[9]
    if gd == GD_AT_END or gd == 0:
        raise InvalidImage(
            "the stream's footer does not locate the grain directory",
            found=f"footer gdOffset=0x{gd:x}",
            **ident,
        )
    return VmdkFooter(
        capacity_sectors=fields[3], grain_sectors=fields[4], gd_offset=gd, num_gtes_per_gt=fields[7]
    )


def last_grain_span(header: VmdkHeader) -> int:
    """Bytes from a grain's start that hold all of it: marker, deflate data (a stored block
    never exceeds the grain by more than a few bytes), rounded up to a sector."""
    return header.grain_size + 2 * SECTOR


def last_grain_sector(head: bytes, header: VmdkHeader) -> int | None:
    """File sector of the last-placed grain, from the GD/GTs qemu-style files keep up front.

    ``head`` must hold the first ``header.overhead_bytes`` of the file. Returns None for a disk
    with no allocated grain. Only meaningful when the header's gdOffset is a real sector.
    """
    if header.gd_at_end:
        raise ValueError("the grain directory of a true stream is at its end, not in its head")
    if len(head) < header.overhead_bytes:
        raise ValueError(f"need the first {header.overhead_bytes} bytes, got {len(head)}")
    n_gt = header.num_grain_tables
    gd_pos = header.gd_offset * SECTOR
    if gd_pos + n_gt * 4 > len(head):
        raise InvalidImage(
            "the VMDK header is corrupted: its grain directory does not fit in the metadata "
            "area",
            found=f"gdOffset={header.gd_offset}, {n_gt} entries, metadata area "
            f"{len(head)} bytes",
        )
    gd = struct.unpack_from(f"<{n_gt}I", head, gd_pos)
    last = None
    for gt_sector in gd:
        if not gt_sector:
            continue
        pos = gt_sector * SECTOR
        if pos + header.num_gtes_per_gt * 4 > len(head):
            raise InvalidImage(
                "the VMDK is corrupted: a grain table lies beyond the metadata area",
                found=f"grain table at sector {gt_sector}, metadata area {len(head)} bytes",
            )
        entries = struct.unpack_from(f"<{header.num_gtes_per_gt}I", head, pos)
        top = max(entries)
        if top > 1 and (last is None or top > last):
            last = top
    return last


def check_stream_end(
    tail: bytes,
    *,
    header: VmdkHeader | None = None,
    total_bytes: int | None = None,
    head: bytes | None = None,
    last_grain: bytes | None = None,
    image_id: str | None = None,
) -> None:
    """Raise ``InvalidImage`` if a complete streamOptimized stream was not received.

    For a true stream (header gdOffset == GD_AT_END, or no header given) the tail must end with
    footer marker + footer + end-of-stream marker, and the footer must agree with the header.
    For a qemu-style file (real gdOffset, no footer) the last-placed grain is found through the
    grain tables in ``head`` (the first ``header.overhead_bytes``) and must be whole in the
    ``tail`` (keep :data:`TAIL_BYTES`), or in ``last_grain`` (the bytes from the last grain's
    position on, as a reader that knew it captured them: then any amount of padding may follow
    it): its compressed data must fit in ``total_bytes`` and inflate to its end. A stream cut
    anywhere after the metadata fails one of these.
    """
    ident = _describe(image_id)
    if total_bytes is not None and total_bytes % SECTOR:
        raise InvalidImage(
            "the stream is cut: a streamOptimized file is a whole number of 512-byte sectors",
            found=f"{total_bytes} bytes ({total_bytes % SECTOR} past the last sector boundary)",
            **ident,
        )
    if header is None or header.gd_at_end:
        footer = read_footer(tail, image_id=image_id)
        if header is not None and footer.capacity_sectors != header.capacity_sectors:
            raise InvalidImage(
                "the stream's footer and header disagree about the virtual size",
                found=f"header {header.capacity_sectors} sectors, footer "
                f"{footer.capacity_sectors}",
                **ident,
            )
        if total_bytes is not None and footer.gd_offset * SECTOR >= total_bytes:
            raise InvalidImage(
                "the stream's footer points beyond the end of the stream",
                found=f"gdOffset sector {footer.gd_offset}, stream {total_bytes} bytes",
                **ident,
            )
        return

    if head is None or total_bytes is None:
        raise ValueError("a qemu-style stream needs head= and total_bytes= to check its end")
    if total_bytes < header.overhead_bytes:
        raise InvalidImage(
            "the stream is cut inside its metadata",
            found=f"{total_bytes} bytes, metadata needs {header.overhead_bytes}",
            **ident,
        )
    last = last_grain_sector(head, header)
    if last is None:
        return
    pos = last * SECTOR
    if pos + _GRAIN_MARKER.size > total_bytes:
        raise InvalidImage(
            "the stream is cut: its last grain starts beyond the received bytes",
            found=f"{total_bytes} bytes received, last grain at byte {pos}",
            **ident,
        )
    if last_grain is None:
        tail_start = total_bytes - len(tail)
        if pos < tail_start:
            raise ValueError(f"the last grain (byte {pos}) is before the kept tail "
                             f"(from byte {tail_start}): pass last_grain=")
        last_grain = tail[pos - tail_start:]
    _lba, size = _GRAIN_MARKER.unpack_from(last_grain)
    end = pos + _GRAIN_MARKER.size + size
    if size == 0 or end > total_bytes:
        raise InvalidImage(
            "the stream is cut: its last grain is incomplete",
            found=f"{total_bytes} bytes received, last grain needs {end}",
            **ident,
        )
    data = last_grain[_GRAIN_MARKER.size : _GRAIN_MARKER.size + size]
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(data, header.grain_size + 1)
    except zlib.error as exc:
        raise InvalidImage(
            "the stream's last grain is damaged (deflate data does not decode)",
            found=str(exc),
            **ident,
        ) from exc
    if not inflater.eof:
        raise InvalidImage(
            "the stream is cut: its last grain's compressed data ends early",
            found=f"{size} compressed bytes without the end of the deflate stream",
            **ident,
        )
