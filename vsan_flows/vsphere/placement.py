"""Pure datastore choice: candidates + policy + size -> one datastore, or every reason why not.

Kept free of SOAP so the policy can be tested exhaustively and explained: inventory.py reads the
facts from vCenter, this module decides. Compared with nova 34 (its ds_util/vmops choose the largest
free datastore among VMFS/NFS/NFS41/vsan whose name ``re.match``-es datastore_regex):

* the allowed types come from configuration and default to vsan only (nova allows VMFS, NFS,
  NFS41 and vsan for streamOptimized and never requires vsan);
* the datastore must have room for the image's *virtual* size (nova does not check at all);
  a thin disk may use less, but a datastore that cannot hold the disk it promises the guest
  would fail later, mid-write, with the instance half-built;
* every rejected datastore is reported with all its reasons, so an operator reading one error
  knows what to fix;
* ties on free space break by name, so the same inputs always give the same choice (nova keeps
  whichever came first in an unordered property-collector result).

The name regex keeps nova's ``re.match`` semantics (anchored at the start only): operators copy
``datastore_regex`` from nova.conf, and the same string must select the same datastores here.
Whole-name matching is one ``$`` away; silently changing the meaning of an existing setting is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vsan_flows.exceptions import NoSuitableDatastore, format_bytes

_USABLE_MAINTENANCE_MODES = (None, "", "normal")


@dataclass(frozen=True)
class DatastoreInfo:
    """What placement needs to know about one datastore, as read from ``summary``."""

    name: str
    moref: str
    type: str
    free_space: int
    capacity: int
    accessible: bool
    maintenance_mode: str | None = None


def rejection_reasons(
    ds: DatastoreInfo,
    *,
    allowed_types: Sequence[str],
    name_regex: re.Pattern[str] | str | None,
    required_bytes: int | None,
) -> list[str]:
    """Every rule ``ds`` breaks; empty means it is usable."""
    reasons = []
    allowed = {t.casefold() for t in allowed_types}
    if ds.type.casefold() not in allowed:
        reasons.append(
            f"type {ds.type} is not allowed (allowed: {', '.join(allowed_types) or 'none'})"
        )
    if name_regex is not None:
        pattern = re.compile(name_regex) if isinstance(name_regex, str) else name_regex
        if not pattern.match(ds.name):
            reasons.append(f"name does not match datastore_regex {pattern.pattern!r}")
    if not ds.accessible:
        reasons.append("not accessible from the cluster's hosts")
    if ds.maintenance_mode not in _USABLE_MAINTENANCE_MODES:
        reasons.append(f"in maintenance mode ({ds.maintenance_mode})")
    if required_bytes and ds.free_space < required_bytes:
        reasons.append(
            f"not enough free space: has {format_bytes(ds.free_space)} free, "
            f"needs {format_bytes(required_bytes)}"
        )
    return reasons


def choose_datastore(
    candidates: Iterable[DatastoreInfo],
    *,
    allowed_types: Sequence[str],
    name_regex: re.Pattern[str] | str | None = None,
    required_bytes: int | None = None,
) -> tuple[DatastoreInfo, list[tuple[str, str]]]:
    """Pick the usable datastore with the most free space (ties: lowest name).

    Returns the choice and the (name, reasons) of every rejected candidate, so callers can log
    why others were passed over. Raises ``NoSuitableDatastore`` listing every candidate when
    none is usable. ``required_bytes`` is the image's virtual size (``VmdkHeader.capacity_bytes``),
    not its file size.
    """
    usable: list[DatastoreInfo] = []
    rejected: list[tuple[str, str]] = []
    for ds in sorted(candidates, key=lambda d: (d.name, d.moref)):
        reasons = rejection_reasons(
            ds, allowed_types=allowed_types, name_regex=name_regex, required_bytes=required_bytes
        )
        if reasons:
            rejected.append((ds.name, "; ".join(reasons)))
        else:
            usable.append(ds)
    if not usable:
        raise NoSuitableDatastore(rejected, required_bytes=required_bytes)
    chosen = min(usable, key=lambda d: (-d.free_space, d.name, d.moref))
    return chosen, rejected
