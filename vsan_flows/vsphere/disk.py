"""Datastore files and virtual disks: what is stored, and deleting what we made.

The size check exists because "the PUT returned" is not proof that the bytes landed: we ask
the datastore browser what it holds and compare it with what we sent.
"""

from __future__ import annotations

import posixpath
import re

from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from vsan_flows.vsphere import faults

_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<rel>.*)$")


def split_path(ds_path: str) -> tuple[str, str]:
    """'[ds] dir/file.vmdk' -> ('ds', 'dir/file.vmdk')."""
    m = _DS_PATH.match(ds_path)
    if not m:
        raise ValueError(f"not a datastore path: {ds_path!r}")
    return m.group("ds"), m.group("rel")


def file_size(session, datastore_ref, ds_path: str) -> int | None:
    """Bytes the datastore holds at ds_path, or None when there is no such file."""
    ds_name, rel = split_path(ds_path)
    folder, name = posixpath.split(rel)
    browser = session.invoke_api(vim_util, "get_object_property", session.vim, datastore_ref,
                                 "browser")
    cf = session.vim.client.factory
    flags = cf.create("ns0:FileQueryFlags")
    flags.fileSize = True
    flags.fileType = True
    flags.modification = False
    flags.fileOwner = False
    spec = cf.create("ns0:HostDatastoreBrowserSearchSpec")
    spec.matchPattern = [name]
    spec.details = flags
    try:
        task = session.invoke_api(session.vim, "SearchDatastore_Task", browser,
                                  datastorePath=f"[{ds_name}] {folder}", searchSpec=spec)
        info = session.wait_for_task(task)
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return None
        raise
    for f in getattr(info.result, "file", None) or []:
        if f.path == name:
            return int(f.fileSize)
    return None
