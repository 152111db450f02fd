"""Datastore paths of virtual disks.

There is deliberately no reader of a disk's stored bytes here: on vSAN a disk's data lives in
objects only NFC reaches, and the datastore browser lists no data file to measure (see
imports.check_imported_disk for the evidence vSAN does offer).
"""

from __future__ import annotations

import re

_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<rel>.*)$")


def split_path(ds_path: str) -> tuple[str, str]:
    """'[ds] dir/file.vmdk' -> ('ds', 'dir/file.vmdk')."""
    m = _DS_PATH.match(ds_path)
    if not m:
        raise ValueError(f"not a datastore path: {ds_path!r}")
    return m.group("ds"), m.group("rel")
