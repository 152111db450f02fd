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
