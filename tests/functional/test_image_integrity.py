"""An image corrupted at rest (local store: its bytes changed after upload, same size).

The spawn must fail and roll back before the import VM can become a cache entry. (Glance's
variant - a flipped byte in glance-api's store - is in test_glance.py: there the download's
own hash check catches it.)
"""

from __future__ import annotations

import uuid

import pytest

from vsan_flows import api, exceptions, imagecache
from vsan_flows.simulator import disks

MiB = 1024 * 1024


def _add(images, path, **kw):
    return images.add_file(path, name=path.name, **kw)


def _name(prefix="inst"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _spawn(sim_conf, vsphere, images, name, image_id, **kw):
    return api.spawn(sim_conf, name, image_id, vsphere=vsphere, images=images, **kw)


@pytest.mark.parametrize(("where", "error", "says"), [
    # bit rot the disk format cannot notice: only the recorded hash tells
    ("descriptor", exceptions.InvalidImage, "does not match the hash"),
    # 4 KiB flipped inside the compressed grains: vCenter refuses to store it, or the hash
    ("grains", exceptions.VsanFlowsError, ""),
])
def test_image_corrupted_at_rest_never_becomes_a_cache_entry(where, error, says, sim_conf,
                                                             vsphere, images, control,
                                                             tmp_path):
    """An active image whose stored bytes changed after upload (same size): the spawn fails
    and is rolled back before the import VM can become a cache entry."""
    path = disks.make_stream_optimized(tmp_path / "rot.vmdk", 64 * MiB, data_mib=8)
    image_id = _add(images, path)
    data_file = images.directory / f"{image_id}.data"
    data = bytearray(data_file.read_bytes())
    if where == "descriptor":
        at = data.index(b"# Disk DescriptorFile") + len("# Disk Descriptor")
        data[at] ^= 0x20  # "File" -> "file": still a valid descriptor
    else:
        mid = len(data) // 2
        data[mid: mid + 4096] = bytes(b ^ 0xFF for b in data[mid: mid + 4096])
    data_file.write_bytes(bytes(data))
    imports = control.calls("ImportVApp")
    with pytest.raises(error, match=says):
        _spawn(sim_conf, vsphere, images, _name(), image_id)
    if where == "descriptor":
        assert control.calls("ImportVApp") == imports + 1, "one import, not retried"
    assert not [vm for vm in control.status()["vms"]
                if vm["name"].startswith(imagecache.name_prefix(image_id))]
