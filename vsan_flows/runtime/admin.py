"""An admin's state changes to stored flows: take over, abandon, un-abandon, and their guards.

These write TaskFlow's models directly (TaskFlow has no API for "never resume this flow"), so
they live here, beside the runner, and the CLI only asks, confirms and prints. The rules:

* **Ownership.** Every flow's logbook names the host that runs it; that host's compute service
  resumes it on restart. Acting on another host's flow would race it, so actions refuse unless
  the admin names that host (take-over) to say it is gone for good; the flow then belongs here.
* **Running right now.** A process of this host that runs a flow holds the flow's lock
  (runtime/flowlock.py): while a live process holds it, every action is refused, ``--force``
  or not. The store itself records no process id, so a RUNNING flow whose lock is free (its
  runner died, or ran with another state_dir) still needs ``--force``: the admin says no
  process runs it.
* **Abandon keeps the record.** Abandon sets the flow's state to FAILURE (terminal: the restart
  path only resumes unfinished states) and records who, when, why and the previous state in the
  flow detail's meta under ``abandoned``. The stored results (VM ids, datastore paths) are what
  an admin needs to clean up by hand, so nothing is destroyed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from taskflow import states
from taskflow.persistence import models

from vsan_flows.exceptions import FlowBusy, FlowError
from vsan_flows.runtime import runner

#: Flow states in which a process may be executing the flow at this moment.
ACTIVE = (states.RUNNING, states.RESUMING, states.REVERTING, states.SUSPENDING)


def is_abandoned(fd: models.FlowDetail) -> bool:
    """Abandoned and still in the FAILURE abandon put it in (not forced on since)."""
    return bool((fd.meta or {}).get("abandoned")) and fd.state == states.FAILURE


def check_may_act(book: models.LogBook, fd: models.FlowDetail, action: str, *,
                  force: bool = False, take_over: str | None = None,
                  running_by: str | None = None) -> None:
    """Refuse (FlowError: problem + fix) what could race another process or host.

    ``running_by``: the live process of this host holding the flow's lock, if any.
    """
    if running_by:
        raise FlowBusy(fd.uuid, running_by)
    me = runner.host_name()
    owner = (book.meta or {}).get("host")
    taking_over = bool(take_over) and owner not in (None, me)
    if owner not in (None, me) and take_over != owner:
        raise FlowError(fd.uuid, f"belongs to host {owner} (state {fd.state}), not {me}",
                        f"Run `vsan-flows flows {action} {fd.uuid}` on {owner}; if {owner} is "
                        f"gone for good, add --take-over {owner}.")
    if take_over and owner in (None, me):
        raise FlowError(fd.uuid, f"already belongs to this host ({me}); --take-over is for "
                        "flows of another host", "Drop --take-over.")
    if fd.state in ACTIVE and not taking_over and not force:
        raise FlowError(fd.uuid, f"is {fd.state} on this host and may be running right now "
                        "(no process with this state_dir holds its lock, but one with another "
                        "state_dir might run it)",
                        f"If no nova-compute/vsan-flows process runs it (it crashed, or the "
                        f"service is stopped), add --force to {action} it.")
    abandoned = (fd.meta or {}).get("abandoned") if is_abandoned(fd) else None
    if abandoned and not force:
        raise FlowError(fd.uuid, f"was abandoned at {abandoned.get('at')} by "
                        f"{abandoned.get('by')}", f"Add --force to {action} it anyway.")


def check_resumable(fd: models.FlowDetail) -> None:
    if fd.state in (states.SUCCESS, states.REVERTED):
        raise FlowError(fd.uuid, f"already finished ({fd.state}); there is nothing to resume")
    if fd.state == states.FAILURE and not is_abandoned(fd):
        raise FlowError(fd.uuid, "ended in FAILURE (an undo step failed)",
                        f"Retry the undo with `vsan-flows flows revert {fd.uuid}`.")


def check_revertable(fd: models.FlowDetail) -> None:
    if fd.state == states.REVERTED:
        raise FlowError(fd.uuid, "is already REVERTED; there is nothing to undo")
    if fd.state == states.SUCCESS:
        raise FlowError(fd.uuid, "finished successfully; reverting it would destroy what it "
                        "built, which belongs to the instance/image now",
                        "Delete the instance or image through nova/glance instead.")


def check_abandonable(fd: models.FlowDetail) -> None:
    if is_abandoned(fd):
        raise FlowError(fd.uuid, "is already abandoned")
    if fd.state in (states.SUCCESS, states.REVERTED):
        raise FlowError(fd.uuid, f"already finished ({fd.state}); nothing would resume it",
                        "Remove finished flows with `vsan-flows flows purge`.")


def take_over(backend: Any, book: models.LogBook, from_host: str) -> None:
    """Record this host as the flow's owner, so this host's restarts resume it from now on."""
    book.meta = {**(book.meta or {}), "host": runner.host_name(),
                 "taken_over_from": from_host}
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)


def abandon(backend: Any, fd: models.FlowDetail, *, by: str, reason: str = "") -> str:
    """Make ``fd`` terminal (FAILURE) with an ``abandoned`` record; returns its old state."""
    previous = fd.state
    fd.meta = {**(fd.meta or {}), "abandoned": {
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "by": by,
        "previous_state": previous,
        "reason": reason,
    }}
    fd.state = states.FAILURE
    _save(backend, fd)
    return previous


def unabandon(backend: Any, fd: models.FlowDetail) -> None:
    """Put an abandoned flow back where it was (kept as ``abandoned_earlier``)."""
    meta = dict(fd.meta or {})
    record = meta.pop("abandoned", None) or {}
    fd.state = record.get("previous_state") or states.SUSPENDED
    meta["abandoned_earlier"] = record
    fd.meta = meta
    _save(backend, fd)


def _save(backend: Any, fd: models.FlowDetail) -> None:
    with contextlib.closing(backend.get_connection()) as conn:
        conn.update_flow_details(fd)
