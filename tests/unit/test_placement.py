"""Datastore choice: the policy an operator relies on, and the reasons they read when it says no."""

import pickle
import re

import pytest

from vsan_flows.exceptions import NoSuitableDatastore
from vsan_flows.vsphere.placement import DatastoreInfo, choose_datastore

GIB = 1 << 30


def ds(name, type="vsan", free=100 * GIB, accessible=True, maintenance="normal", moref=None):
    return DatastoreInfo(
        name=name,
        moref=moref or f"datastore-{name}",
        type=type,
        free_space=free,
        capacity=1000 * GIB,
        accessible=accessible,
        maintenance_mode=maintenance,
    )


def choose(cands, types=("vsan",), regex=None, need=10 * GIB):
    return choose_datastore(cands, allowed_types=list(types), name_regex=regex, required_bytes=need)


def test_picks_most_free_space_and_reports_the_rest():
    chosen, rejected = choose([ds("a", free=20 * GIB), ds("b", free=50 * GIB), ds("v", "VMFS")])
    assert chosen.name == "b"
    assert rejected == [("v", "type VMFS is not allowed (allowed: vsan)")]


def test_tie_breaks_by_name_whatever_the_input_order():
    a, b = ds("alpha", free=50 * GIB), ds("beta", free=50 * GIB)
    assert choose([b, a])[0].name == "alpha"
    assert choose([a, b])[0].name == "alpha"


def test_vmfs_allowed_when_configured_and_types_compare_case_insensitively():
    chosen, _ = choose([ds("v", "VMFS", free=90 * GIB), ds("s", "vsan", free=10 * GIB)],
                       types=("VSAN", "vmfs"))
    assert chosen.name == "v"


def test_regex_is_anchored_at_the_start_like_nova():
    cands = [ds("vsanDatastore"), ds("vsanDatastore-old", free=500 * GIB), ds("my-vsan")]
    chosen, rejected = choose(cands, regex="vsanDatastore")
    assert chosen.name == "vsanDatastore-old"  # prefix match, as nova's re.match
    assert [name for name, _ in rejected] == ["my-vsan"]
    chosen, _ = choose(cands, regex=re.compile("vsanDatastore$"))
    assert chosen.name == "vsanDatastore"


def test_free_space_is_checked_against_the_virtual_size():
    with pytest.raises(NoSuitableDatastore) as info:
        choose([ds("small", free=5 * GIB)], need=8 * GIB)
    msg = str(info.value)
    assert "'small': not enough free space" in msg
    assert "has 5368709120 bytes (5.00 GiB) free" in msg
    assert "needs 8589934592 bytes (8.00 GiB)" in msg


def test_every_datastore_and_every_reason_is_listed():
    cands = [
        ds("nfs1", "NFS"),
        ds("gone", accessible=False),
        ds("maint", maintenance="inMaintenance"),
        ds("full", free=1 * GIB),
        ds("other-vsan"),
        ds("bad", "VMFS", accessible=False, free=0),
    ]
    with pytest.raises(NoSuitableDatastore) as info:
        choose(cands, regex="^(nfs|gone|maint|full|bad)")
    err = info.value
    reasons = dict(err.rejected)
    assert set(reasons) == {c.name for c in cands}
    assert reasons["nfs1"] == "type NFS is not allowed (allowed: vsan)"
    assert reasons["gone"] == "not accessible from the cluster's hosts"
    assert reasons["maint"] == "in maintenance mode (inMaintenance)"
    assert reasons["full"].startswith("not enough free space")
    assert "does not match datastore_regex" in reasons["other-vsan"]
    assert reasons["bad"].count(";") == 2  # type, accessibility and space, all named
    for c in cands:
        assert f"'{c.name}':" in str(err)
    assert "datastore_types" in str(err)  # says what to adjust


def test_entering_maintenance_is_not_usable_but_unset_mode_is():
    chosen, rejected = choose([ds("a", maintenance="enteringMaintenance", free=900 * GIB),
                               ds("b", maintenance=None)])
    assert chosen.name == "b"
    assert rejected[0][0] == "a"


def test_no_candidates_says_so():
    with pytest.raises(NoSuitableDatastore, match="no datastores"):
        choose([])


def test_zero_or_unknown_size_skips_the_space_check():
    assert choose([ds("a", free=0)], need=None)[0].name == "a"


def test_error_pickles_with_its_list():
    with pytest.raises(NoSuitableDatastore) as info:
        choose([ds("x", "NFS")])
    back = pickle.loads(pickle.dumps(info.value))
    assert back.rejected == info.value.rejected and str(back) == str(info.value)
