"""Contracts between the layers: what flows need and give, how the Retry decides, faults.

A stored flow is rebuilt from its factory and fed from the store and the live handles; if a
flow's needs drift from what the API puts in the store, it fails on the first host that runs
it, or worse, after a restart. These tests pin the contract in one place.
"""

from __future__ import annotations

import pytest
from oslo_vmware import exceptions as vexc
from taskflow import retry as tf_retry
from taskflow.patterns import linear_flow
from taskflow.types import failure as tf_failure

from vsan_flows import api, exceptions, names
from vsan_flows.flows import root_disk as root_disk_flow
from vsan_flows.flows import snapshot as snapshot_flow
from vsan_flows.flows import spawn as spawn_flow
from vsan_flows.flows.retry import NOT_RETRYABLE, CacheEntryRetry, TransferRetry
from vsan_flows.runtime import runner
from vsan_flows.vsphere import faults

# The live handles each flow reads (all of names.TRANSIENTS are injected into every flow).
LIVE = {"spawn": {names.VSPHERE, names.IMAGES, names.POLICY, names.IMAGE_LOCKS, names.FENCE},
        "snapshot": {names.VSPHERE, names.IMAGES, names.FENCE},
        "nova-root-disk": {names.VSPHERE, names.IMAGES, names.POLICY, names.IMAGE_LOCKS,
                           names.FENCE}}
# What each flow hands back to its caller (api.spawn/snapshot results, nova's driver).
RESULTS = {"spawn": {"instance_vm", "shadow_vm", "bytes_sent", "datastore"},
           "snapshot": {"image_upload"},
           "nova-root-disk": {"root_disk", "bytes_sent"}}


def _flows():
    return [("spawn", spawn_flow.make_spawn_flow(power_on=False), spawn_flow.STORE_KEYS),
            ("spawn", spawn_flow.make_spawn_flow(power_on=True), spawn_flow.STORE_KEYS),
            ("snapshot", snapshot_flow.make_snapshot_flow(), snapshot_flow.STORE_KEYS),
            ("nova-root-disk", root_disk_flow.make_root_disk_flow(root_bytes=2 ** 30),
             root_disk_flow.STORE_KEYS)]


def _atoms(flow) -> list:
    """Atoms (tasks and retries) in execution order of a tree of linear flows."""
    out = []
    if getattr(flow, "retry", None) is not None:
        out.append(flow.retry)
    for item in flow:
        out += _atoms(item) if isinstance(item, linear_flow.Flow) else [item]
    return out


@pytest.mark.parametrize(("operation", "flow", "store_keys"), _flows())
def test_flow_requires_exactly_the_plan_store_and_the_live_handles(conf, operation, flow,
                                                                   store_keys):
    plan = api.plan(conf, operation, "inst", "img")
    assert set(plan.store) == set(store_keys)
    assert set(flow.requires) == set(plan.store) | LIVE[operation]
    assert LIVE[operation] <= set(names.TRANSIENTS)


@pytest.mark.parametrize(("operation", "flow", "store_keys"), _flows())
def test_every_input_is_there_before_it_is_read_and_every_output_is_used(
        operation, flow, store_keys):
    available = set(store_keys) | set(names.TRANSIENTS)
    provided_by: dict[str, str] = {}
    read: set[str] = set()
    for atom in _atoms(flow):
        if isinstance(atom, tf_retry.Retry):
            continue
        missing = set(atom.requires) - available
        assert not missing, f"{atom.name} reads {missing} before anything provides it"
        read |= set(atom.requires)
        for name in atom.provides:
            assert name not in provided_by, f"{name} provided twice"
            provided_by[name] = atom.name
            available.add(name)
    unused = set(provided_by) - read - RESULTS[operation]
    assert not unused, f"provided but never read nor returned: {unused}"


@pytest.mark.parametrize(("operation", "flow", "store_keys"), _flows())
def test_atom_names_are_the_stable_ones(operation, flow, store_keys):
    stable = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    for atom in _atoms(flow):
        assert atom.name in stable, f"{atom.name} is not a name from vsan_flows.names"
        assert "." not in atom.name, "a dotted (class path) name moves with the code"


def test_legacy_names_map_onto_todays_atoms():
    todays = {a.name for _op, f, _k in _flows() for a in _atoms(f)}
    assert set(names.LEGACY_ATOM_NAMES.values()) <= todays
    assert all(old.startswith("vsan_flows.tasks.") for old in names.LEGACY_ATOM_NAMES)


def test_only_the_transfers_restart_after_a_crash():
    marked = {a.name for _op, f, _k in _flows() for a in _atoms(f)
              if getattr(a, "restart_after_crash", False)}
    assert marked == {names.STREAM_DISK_TO_LEASE, names.STREAM_DISK_TO_IMAGE}


# --------------------------------------------------------------------------- TransferRetry


def _history(*failures: tf_failure.Failure) -> tf_retry.History:
    return tf_retry.History([(n + 1, {"StreamDiskToLease": f})
                             for n, f in enumerate(failures)])


def _failure(exc: Exception) -> tf_failure.Failure:
    try:
        raise exc
    except Exception:  # noqa: BLE001 - building a Failure from a live exception
        return tf_failure.Failure()


def _restored(exc: Exception) -> tf_failure.Failure:
    """As after a restart: from the database, type names and text only, no exception."""
    restored = tf_failure.Failure.from_dict(_failure(exc).to_dict())
    assert restored.exception is None
    return restored


RETRYABLE = [exceptions.TransferError("cut"), exceptions.IncompleteTransfer(
    "The upload", bytes_sent=1, bytes_expected=2), exceptions.LeaseError("lease died"),
    exceptions.VSphereError("vCenter hiccup"), RuntimeError("unknown")]
FINAL = [exceptions.InvalidImage("bad", image_id="i"), exceptions.ImageNotFound("i"),
         exceptions.ImageAlreadyHasData("i"), exceptions.NoSuitableDatastore([]),
         exceptions.ConfigError("[x] y", "bad"), exceptions.VCenterAuthError("h", "u"),
         exceptions.InstanceNotFound("i"),
         exceptions.TransferTimeout("The upload", 1, bytes_done=0),
         exceptions.ImageServiceRefused("i", "upload", 415, "format", "convert it")]


def test_every_not_retryable_class_is_in_the_table():
    assert {type(e) for e in FINAL} == set(NOT_RETRYABLE)


@pytest.mark.parametrize("make", [_failure, _restored], ids=["live", "restored"])
@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(e).__name__)
def test_retryable_failures_retry_until_attempts_run_out(make, exc):
    r = TransferRetry(attempts=3, name="import-retry", revert_all=True)
    assert r.on_failure(_history(make(exc))) == tf_retry.RETRY
    assert r.on_failure(_history(make(exc), make(exc))) == tf_retry.RETRY
    assert r.on_failure(_history(make(exc), make(exc), make(exc))) == tf_retry.REVERT_ALL


@pytest.mark.parametrize("make", [_failure, _restored], ids=["live", "restored"])
@pytest.mark.parametrize("exc", FINAL, ids=lambda e: type(e).__name__)
def test_final_failures_revert_at_once(make, exc):
    r = TransferRetry(attempts=3, name="import-retry", revert_all=True)
    assert r.on_failure(_history(make(exc))) == tf_retry.REVERT_ALL


def test_only_the_latest_failure_decides():
    r = TransferRetry(attempts=5, name="import-retry", revert_all=True)
    history = _history(_failure(exceptions.InvalidImage("bad", image_id="i")),
                       _failure(exceptions.TransferError("cut")))
    assert r.on_failure(history) == tf_retry.RETRY


GONE = exceptions.CacheEntryGone("vsanflows-image-i-datastore-1", "i", "was destroyed")


@pytest.mark.parametrize("make", [_failure, _restored], ids=["live", "restored"])
def test_cache_entry_retry_looks_again_only_for_a_vanished_entry(make):
    r = CacheEntryRetry(attempts=3, name="cache-entry-retry")
    assert r.on_failure(_history(make(GONE))) == tf_retry.RETRY
    assert r.on_failure(_history(make(GONE), make(GONE))) == tf_retry.RETRY
    # bounded: the third vanished entry fails the spawn
    assert r.on_failure(_history(make(GONE), make(GONE), make(GONE))) == tf_retry.REVERT_ALL


@pytest.mark.parametrize("make", [_failure, _restored], ids=["live", "restored"])
@pytest.mark.parametrize("exc", [*RETRYABLE, *FINAL], ids=lambda e: type(e).__name__)
def test_cache_entry_retry_reverts_any_other_failure_at_once(make, exc):
    """A link refused for another reason (no space, a bad spec), or an import that failed,
    is not fixed by looking the cache up again: the flow reverts as it did before."""
    r = CacheEntryRetry(attempts=3, name="cache-entry-retry")
    assert r.on_failure(_history(make(exc))) == tf_retry.REVERT_ALL
    assert r.on_failure(_history(make(GONE), make(exc))) == tf_retry.REVERT_ALL


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("exc", "says"), [
    (vexc.VimFaultException(["InvalidState", "TaskInProgress"], "busy"),
     "vCenter reported InvalidState, TaskInProgress: busy"),
    (vexc.VimFaultException([], "odd"), "vCenter reported unknown fault: odd"),
    (vexc.VimConnectionException("reset by peer"), "lost the connection to vCenter"),
    (vexc.VimException("too many sessions"), "vCenter call failed: too many sessions"),
])
def test_vim_faults_become_our_vsphere_errors(exc, says):
    ours = faults.to_error(exc)
    assert isinstance(ours, exceptions.VSphereError) and says in str(ours)
    assert isinstance(runner.translate(exc), exceptions.VSphereError)


def test_other_errors_pass_through_translation():
    assert faults.to_error(ValueError("x")) is None
    ours = exceptions.InvalidImage("bad", image_id="i")
    assert runner.translate(ours) is ours
    plain = ValueError("x")
    assert runner.translate(plain) is plain


@pytest.mark.parametrize(("exc", "gone"), [
    (vexc.ManagedObjectNotFoundException("gone"), True),
    (vexc.FileNotFoundException("gone"), True),
    (vexc.VimFaultException(["ManagedObjectNotFound"], "gone"), True),
    (vexc.VimFaultException(["InvalidState"], "busy"), False),
    (RuntimeError("x"), False),
])
def test_already_gone_is_told_apart(exc, gone):
    assert faults.is_gone(exc) is gone
