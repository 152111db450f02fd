"""vmdk.py against real qemu-img files: the good kind and every bad kind we promise to name."""

import io
import os
import pickle
import struct

import pytest

from vsan_flows import vmdk
from vsan_flows.exceptions import InvalidImage
from vsan_flows.simulator import disks

MIB = 1 << 20
SIZE = 64 * MIB


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    return tmp_path_factory.mktemp("vmdk")


@pytest.fixture(scope="module")
def good(d):
    return disks.make_stream_optimized(d / "good.vmdk", SIZE, pattern=7)


@pytest.fixture(scope="module")
def stream(d, good):
    return disks.make_vmware_stream(good, d / "stream.vmdk")


def _inspect(path, **kw):
    with open(path, "rb") as f:
        return vmdk.inspect_stream_optimized(f, **kw)


def _invalid(path, **kw) -> InvalidImage:
    with pytest.raises(InvalidImage) as info:
        _inspect(path, image_id="img-42", **kw)
    return info.value


# ------------------------------------------------------------------ good images


@pytest.mark.parametrize("size", [64 * MIB, 2 << 30])
def test_good_image_reports_virtual_size_not_file_size(d, size):
    path = disks.make_stream_optimized(d / f"g{size}.vmdk", size)
    h = _inspect(path, declared_size=os.path.getsize(path))
    assert h.capacity_bytes == size
    assert os.path.getsize(path) < 5 * MIB  # the file is far smaller than the disk
    assert h.create_type == "streamOptimized"
    assert h.adapter_type == "lsilogic"
    assert h.grain_size == 64 * 1024
    assert h.version == 3 and h.compressed and h.has_markers
    assert 'createType="streamOptimized"' in h.descriptor


def test_read_header_reads_only_the_header_and_descriptor(good):
    f = open(good, "rb")
    with f:
        h = vmdk.read_header(f)
        assert f.tell() == h.header_bytes < 16 * 1024


def test_read_header_copes_with_short_reads(good):
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def read(self, n=-1):
            out, self.data = self.data[:7], self.data[7:]
            return out

    h = vmdk.read_header(Trickle(good.read_bytes()[:64 * 1024]))
    assert h.capacity_bytes == SIZE


def test_true_stream_layout_is_accepted_and_identical_to_source(good, stream):
    assert disks.images_identical(good, stream)
    h = _inspect(stream, declared_size=os.path.getsize(stream))
    assert h.gd_at_end and h.capacity_bytes == SIZE


def test_fixture_data_is_where_expected_regions_say(d, good):
    raw = d / "back.raw"
    disks._qemu_img("convert", "-O", "raw", str(good), str(raw))
    import hashlib

    with open(raw, "rb") as f:
        for off, length, digest in disks.expected_regions(SIZE, pattern=7):
            f.seek(off)
            assert hashlib.sha256(f.read(length)).hexdigest() == digest
    assert len(disks.expected_regions(SIZE, pattern=7)) == 3


# ------------------------------------------------------------------ bad images


def test_monolithic_sparse_is_named(d):
    err = _invalid(disks.make_monolithic_sparse(d / "ms.vmdk", SIZE))
    assert "monolithicSparse" in str(err)
    assert "img-42" in str(err)
    assert "subformat=streamOptimized" in str(err)
    assert "vmware_disktype=streamOptimized" in str(err)


def test_flat_descriptor_is_named(d):
    desc = disks.make_flat(d / "flat.vmdk", SIZE)
    assert desc.read_bytes().startswith(b"# Disk DescriptorFile")
    err = _invalid(desc)
    assert "descriptor text file" in err.reason
    assert "monolithicFlat" in str(err)


def test_raw_data_is_not_a_vmdk(d):
    err = _invalid(disks.make_raw_renamed(d / "raw.vmdk", 8 * MIB))
    assert "not a VMDK" in str(err)
    assert "raw" in str(err)


def test_qcow2_is_named(d):
    raw = disks.make_raw(d / "q.raw", 8 * MIB)
    disks._qemu_img("convert", "-O", "qcow2", str(raw), str(d / "q.qcow2"))
    assert "qcow2" in str(_invalid(d / "q.qcow2"))


@pytest.mark.parametrize(
    "keep, words",
    [
        (0, "truncated or empty"),
        (300, "header is truncated"),
        (2048, "before the end of its descriptor"),
    ],
)
def test_truncated_head_is_named(d, good, keep, words):
    cut = disks.make_truncated(good, d / f"cut{keep}.vmdk", keep)
    assert os.path.getsize(cut) == keep
    assert words in str(_invalid(cut))


@pytest.mark.parametrize(
    "kind, words",
    [
        ("newline", "newline-detection bytes are mangled"),
        ("grain_size", "impossible grain size"),
        ("descriptor_offset", "descriptor position is beyond reason"),
    ],
)
def test_corrupt_header_is_named(d, good, kind, words):
    bad = disks.make_corrupt_header(good, d / f"corrupt-{kind}.vmdk", kind)
    err = _invalid(bad)
    assert "corrupted" in str(err) and words in str(err)


def test_size_lying_header_is_caught(d, good):
    bad = disks.make_size_lying(good, d / "lie.vmdk")
    # qemu-img believes the header; we do not
    assert "32 MiB" in disks.qemu_img_info(bad)
    err = _invalid(bad)
    assert "capacity" in str(err) and str(SIZE) in str(err) and str(SIZE // 2) in str(err)


def test_wrong_version_is_named(d, good):
    bad = disks._patch(good, d / "v2.vmdk", 4, struct.pack("<I", 2))
    assert "version 2" in str(_invalid(bad))


def test_missing_marker_flags_are_named(d, good):
    bad = disks._patch(good, d / "noflags.vmdk", 8, struct.pack("<I", 0x3))
    assert "lacks the compressed-grain and marker flags" in str(_invalid(bad))


def test_declared_size_smaller_than_header_means_truncated(good):
    err = _invalid(good, declared_size=1000)
    assert "declared size 1000" in str(err)


def test_declared_size_is_not_compared_with_virtual_size(good):
    # a 3 MB file honestly describes a 64 MiB disk; and a file somewhat larger than its
    # compressed data (padding) is fine too
    _inspect(good, declared_size=os.path.getsize(good))
    _inspect(good, declared_size=SIZE)


def test_declared_size_larger_than_possible_is_a_lie(good):
    err = _invalid(good, declared_size=10 * SIZE)
    assert "larger than any streamOptimized file" in str(err)


def test_declared_size_zero_is_rejected(good):
    assert "declared size 0" in str(_invalid(good, declared_size=0))


def test_invalid_image_survives_pickling(d):
    err = _invalid(disks.make_monolithic_sparse(d / "ms2.vmdk", SIZE))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InvalidImage and str(back) == str(err) and back.image_id == "img-42"


# ------------------------------------------------------------------ stream end


def _end_check(data: bytes, h):
    vmdk.check_stream_end(
        data[-vmdk.TAIL_BYTES :], header=h, total_bytes=len(data), head=data[: h.overhead_bytes]
    )


def test_complete_streams_pass_the_end_check(good, stream):
    for path in (good, stream):
        data = path.read_bytes()
        _end_check(data, vmdk.read_header(data))


def test_true_stream_footer_is_read(stream):
    data = stream.read_bytes()
    footer = vmdk.read_footer(data[-4096:])
    assert footer.capacity_sectors * 512 == SIZE
    assert footer.gd_offset * 512 < len(data)
    vmdk.check_stream_end(data[-1536:])  # tail alone is enough for a true stream


def test_zero_padding_after_end_of_stream_is_accepted(stream):
    data = stream.read_bytes() + bytes(4096)
    vmdk.read_footer(data[-8192:])


@pytest.mark.parametrize("cut_by", [1, 512, 1536, 4096, 70000, 1 * MIB])
def test_cut_streams_are_rejected(good, stream, cut_by):
    for path in (good, stream):
        full = path.read_bytes()
        h = vmdk.read_header(full)
        cut = full[: len(full) - cut_by]
        with pytest.raises(InvalidImage, match="cut|incomplete"):
            _end_check(cut, h)


def test_qemu_layout_needs_head_to_check_the_end(good):
    data = good.read_bytes()
    h = vmdk.read_header(data)
    with pytest.raises(ValueError, match="head"):
        vmdk.check_stream_end(data[-4096:], header=h, total_bytes=len(data))


def test_all_zero_disk_end_check(d):
    path = d / "zero.vmdk"
    raw = d / "zero.raw"
    with open(raw, "wb") as f:
        f.truncate(SIZE)
    disks._qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(path))
    data = path.read_bytes()
    h = vmdk.read_header(data)
    _end_check(data, h)
    with pytest.raises(InvalidImage, match="cut inside its metadata"):
        _end_check(data[:1024], h)


# ------------------------------------------------------------------ hostile input (bounded)


def _with_header_field(data: bytes, fmt: str, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# Byte offsets of header fields (see vmdk._HEADER): capacity 12, grainSize 20, numGTEsPerGT 44,
# gdOffset 56, overHead 64.
def test_metadata_area_beyond_what_the_tables_need_is_refused(good):
    data = good.read_bytes()
    lying = _with_header_field(data, "<Q", 64, (1 << 30) // 512)  # "1 GiB of metadata"
    with pytest.raises(InvalidImage, match="metadata area is larger"):
        vmdk.inspect_stream_optimized(lying, declared_size=len(data))


def test_capacity_beyond_vsphere_is_refused_without_allocating(good):
    data = good.read_bytes()
    huge = _with_header_field(data, "<Q", 12, 1 << 40)  # 2^40 sectors = 512 TiB
    with pytest.raises(InvalidImage, match="largest virtual disk"):
        vmdk.inspect_stream_optimized(huge, declared_size=len(data))


def test_gzip_is_named_with_the_fix(d, good):
    import gzip

    path = d / "good.vmdk.gz"
    path.write_bytes(gzip.compress(good.read_bytes()[:65536]))
    err = _invalid(path)
    assert "gzip-compressed" in str(err) and "gunzip" in str(err)


def test_size_that_is_not_whole_sectors_is_truncated_before_any_lease(good):
    size = os.path.getsize(good) - 100
    err = _invalid(good, declared_size=size)
    assert "whole number of 512-byte sectors" in str(err)


def test_padding_after_the_last_grain_is_accepted_by_the_stream_tap(good):
    from vsan_flows.streamcheck import StreamTap

    padded = good.read_bytes() + bytes(2 * MIB)  # more than the tail the tap keeps
    tap = StreamTap(io.BytesIO(padded))
    while tap.read(256 * 1024):
        pass
    tap.check_complete()


def test_cut_stream_is_still_caught_by_the_tap_when_padding_is_allowed(good):
    from vsan_flows.streamcheck import StreamTap

    data = good.read_bytes()
    h = vmdk.read_header(data)
    last = vmdk.last_grain_sector(data[: h.overhead_bytes], h) * 512
    _lba, size = struct.unpack_from("<QI", data, last)
    assert size > 512
    tap = StreamTap(io.BytesIO(data[: last + 512]))  # inside the last grain, sector-aligned
    while tap.read(65536):
        pass
    with pytest.raises(InvalidImage, match="last grain"):
        tap.check_complete()


def test_crafted_grain_directory_is_invalid_image_not_struct_error(good):
    data = good.read_bytes()
    h = vmdk.read_header(data)
    head = bytearray(data[: h.overhead_bytes])
    struct.pack_into("<I", head, h.gd_offset * 512, 0x7FFFFFFF)  # a table far outside
    with pytest.raises(InvalidImage, match="grain table lies beyond"):
        vmdk.last_grain_sector(bytes(head), h)
    outside = _with_header_field(data, "<Q", 56, h.overhead_sectors)  # GD past the area
    h2 = vmdk.read_header(outside)
    with pytest.raises(InvalidImage, match="grain directory does not fit"):
        vmdk.last_grain_sector(outside[: h2.overhead_bytes], h2)


def test_vmware_stream_cut_at_a_sector_boundary_says_so(stream):
    data = stream.read_bytes()
    cut = data[: len(data) - 3 * 512]
    with pytest.raises(InvalidImage, match="ends before its end-of-stream marker") as info:
        vmdk.check_stream_end(cut[-4096:], total_bytes=len(cut))
    assert "val=" not in str(info.value)  # no garbage "marker" numbers quoted


# Property-based: whatever a file's first bytes are, the parser answers InvalidImage (or a
# header), within a bounded time and memory, never another exception class.
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@pytest.fixture(scope="module")
def good_head(good):
    data = good.read_bytes()
    return data[: vmdk.read_header(data).overhead_bytes + 4096], len(data)


_FIELDS = [("<I", 4), ("<I", 8), ("<Q", 12), ("<Q", 20), ("<Q", 28), ("<Q", 36), ("<I", 44),
           ("<Q", 48), ("<Q", 56), ("<Q", 64), ("<B", 72), ("<H", 77)]


@hypothesis.settings(max_examples=300, deadline=2000,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    edits=st.lists(st.tuples(st.sampled_from(_FIELDS), st.integers(0, 2**64 - 1)), max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    declared=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_any_header_is_a_header_or_invalid_image(good_head, edits, flips, declared):
    import tracemalloc

    head, _size = good_head
    data = bytearray(head)
    for (fmt, offset), value in edits:
        struct.pack_into(fmt, data, offset, value % (1 << (8 * struct.calcsize(fmt))))
    for offset, value in flips:
        data[offset] = value
    tracemalloc.start()
    try:
        try:
            h = vmdk.inspect_stream_optimized(bytes(data), declared_size=declared)
        except InvalidImage:
            return
        if not h.gd_at_end:
            try:
                vmdk.last_grain_sector(bytes(data).ljust(h.overhead_bytes, b"\0"), h)
            except InvalidImage:
                pass
        _cur, peak = tracemalloc.get_traced_memory()
        assert peak < 64 * MIB, f"parsing this header took {peak} bytes"
    finally:
        tracemalloc.stop()
