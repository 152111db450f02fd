"""Flows as jobs on a ZooKeeper jobboard: connect, post, wait, list (running them: .conductor).

How a job travels:

* :func:`post` saves a :class:`~vsan_flows.runtime.plan.Plan`'s logbook and flow detail in the
  shared persistence backend exactly as an in-process run would (factory name + JSON arguments,
  the store injected), without running it, then posts a job whose details repeat the facts
  (factory, arguments, store, operation, instance, image; no secrets: they live in ZooKeeper
  and in the database).
* A conductor (:mod:`vsan_flows.runtime.conductor`) claims and runs it, and writes how it ended
  into the flow detail's meta (``outcome``) before consuming the job, for :func:`wait`.

Ownership: the logbook meta ``host`` of a jobboard flow is ``jobboard:<path>``, never a host
name. ``api.resume_unfinished`` (a restarted compute service) only resumes flows whose ``host``
is its own name, so it can never race the conductor that took a job over; the ZooKeeper claim
is the one lock. The meta also records ``job`` (the job id) and ``conductor`` (the last
conductor that claimed it), so `vsan-flows flows list/show` tell who ran what.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from oslo_config import cfg
from taskflow import exceptions as tf_exc
from taskflow import states
from taskflow.jobs import backends as job_backends
from taskflow.persistence import models

from vsan_flows import exceptions
from vsan_flows.runtime import persistence, runner
from vsan_flows.runtime.plan import Plan

LOG = logging.getLogger(__name__)

OPTION = "[vsan_flows] jobboard_hosts"

#: Seconds to wait for the first ZooKeeper connection before calling the board unreachable.
CONNECT_TIMEOUT = 5.0

#: Flow states after which a job is done: consumed, never run again.
FINISHED = (states.SUCCESS, states.REVERTED, states.FAILURE)

class JobboardError(exceptions.VsanFlowsError):
    """The jobboard cannot be used, or a job did not end well; the message says what to do."""


class JobboardUnreachable(JobboardError):
    def __init__(self, hosts: str, reason: str) -> None:
        self.hosts = hosts
        super().__init__(
            f"cannot reach the ZooKeeper jobboard at {hosts} ({reason}). Check that ZooKeeper "
            f"runs there and accepts connections from this host (`echo ruok | nc HOST PORT` "
            f"answers imok when 4lw.commands.whitelist allows it), or correct {OPTION}.")


class JobFailed(JobboardError):
    """A job's flow ended without success; ``error_type`` names the original error class."""

    def __init__(self, job_id: str, state: str, error_type: str, message: str) -> None:
        self.job_id = job_id
        self.state = state
        self.error_type = error_type
        super().__init__(message)


class JobTimeout(JobboardError):
    def __init__(self, job_id: str, timeout: float, where: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} did not finish within {timeout:g} s ({where}); it keeps going. "
            "Watch it with `vsan-flows jobs list` and `vsan-flows flows list`.")


# --------------------------------------------------------------------------- the board

def board_hosts(conf: cfg.ConfigOpts) -> str:
    hosts = [h.strip() for h in conf.vsan_flows.jobboard_hosts or [] if h.strip()]
    if not hosts:
        raise exceptions.ConfigError(
            OPTION, "it is not set, so there is no jobboard to post jobs on or take them from",
            "Set it to the ZooKeeper servers, e.g. jobboard_hosts = 127.0.0.1:2181, on every "
            "host that posts jobs or runs `vsan-flows conductor`.")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise exceptions.ConfigError(OPTION, f"{host!r} is not host:port",
                                         "Write each server as host:port, e.g. 10.0.0.5:2181.")
    return ",".join(hosts)


def board_path(conf: cfg.ConfigOpts) -> str:
    return conf.vsan_flows.jobboard_path


@contextlib.contextmanager
def connect(conf: cfg.ConfigOpts, backend=None, *, name: str = "vsan-flows"):
    """A connected ZooKeeper jobboard (closed on exit); one clear error when unreachable."""
    hosts = board_hosts(conf)
    board = job_backends.fetch(name, {
        "board": "zookeeper", "hosts": hosts, "path": board_path(conf),
        "timeout": conf.vsan_flows.jobboard_session_timeout,
    }, persistence=backend)
    try:
        board.connect(timeout=CONNECT_TIMEOUT)
    except tf_exc.JobFailure as exc:
        # TaskFlow's text is "Failed to connect to zookeeper\n  <cause>"; a refused or
        # unroutable address shows up as kazoo's connection time-out.
        cause = exc.cause or exc.__cause__
        if cause is None or "timeout" in type(cause).__name__.lower():
            reason = f"no connection within {CONNECT_TIMEOUT:g} s"
        else:
            reason = str(cause).strip() or type(cause).__name__
        first = str(exc).splitlines()[0].strip()
        if first != "Failed to connect to zookeeper":
            reason = f"{first}: {reason}"
        with contextlib.suppress(Exception):
            board.close()
        raise JobboardUnreachable(hosts, reason) from None
    try:
        yield board
    finally:
        board.close()


def client_of(board):
    """The kazoo client under a ZooKeeper jobboard.

    TaskFlow keeps it private (``_client``) and offers no connection-state hook; fencing
    needs both the client's session state and its session id, so it is reached here, once.
    """
    return board._client


# --------------------------------------------------------------------------- posting

def _store_and_board(stack: contextlib.ExitStack, conf: cfg.ConfigOpts, backend, board):
    """The caller's backend and board, or ones opened here and closed with ``stack``."""
    if backend is None:
        backend = persistence.open_backend(conf)
        stack.callback(backend.close)
    if board is None:
        board = stack.enter_context(connect(conf, backend))
    return backend, board


def post(conf: cfg.ConfigOpts, plan: Plan, *, backend=None, board=None) -> str:
    """Post ``plan`` as a job; returns the job id.

    The flow detail is complete in the persistence backend before the job appears, so any
    conductor can run it.
    """
    json.dumps(dict(plan.factory_kwargs))  # a job's arguments must survive ZooKeeper and SQL
    with contextlib.ExitStack() as stack:
        backend, board = _store_and_board(stack, conf, backend, board)
        # Builds the flow (composition only, no vCenter) to save its factory details and
        # inject the store; nothing runs here.
        book, eng = runner.prepare(plan, backend, host=f"jobboard:{board_path(conf)}",
                                   engine=conf.vsan_flows.engine)
        flow_uuid = eng.storage.flow_uuid
        meta = plan.book_meta
        details = {"flow_uuid": flow_uuid, "factory": plan.factory,
                   "factory_kwargs": dict(plan.factory_kwargs), "store": dict(plan.store),
                   "operation": plan.operation, "instance": meta.get("instance"),
                   "image": meta.get("image")}
        job = board.post(plan.book_name, book=book, details=details)
        update_book_meta(backend, book.uuid, {"job": job.uuid})
        LOG.info("Posted %s of %s (image %s) as job %s, flow %s", plan.operation,
                 meta.get("instance"), meta.get("image"), job.uuid, flow_uuid)
        return job.uuid


def update_book_meta(backend, book_uuid: str, update: Mapping[str, Any]) -> None:
    """Merge ``update`` into a logbook's meta without re-saving (stale) flow details."""
    with contextlib.closing(backend.get_connection()) as conn:
        fresh = conn.get_logbook(book_uuid, lazy=True)
        book = models.LogBook(fresh.name, uuid=fresh.uuid)
        book.meta = {**(fresh.meta or {}), **update}
        conn.save_logbook(book)


# --------------------------------------------------------------------------- waiting

def _find_flow(backend, job_id: str) -> str | None:
    with contextlib.closing(backend.get_connection()) as conn:
        for book in conn.get_logbooks(lazy=True):
            if (book.meta or {}).get("job") == job_id:
                flows = list(conn.get_flows_for_book(book.uuid, lazy=True))
                return flows[0].uuid if flows else None
    return None


def _find_job(board, job_id: str):
    for job in board.iterjobs(ensure_fresh=True):
        if job.uuid == job_id:
            return job
    return None


def wait(conf: cfg.ConfigOpts, job_id: str, timeout: float | None = None, *, backend=None,
         board=None, poll: float = 0.5) -> dict:
    """Block until job ``job_id`` ends; its flow's facts, or the flow's error raised.

    Raises :class:`JobFailed` (the original error's message; ``error_type`` names its class)
    when the flow was rolled back, :class:`JobTimeout` when ``timeout`` passes first (the job
    goes on), :class:`JobboardError` when the job left the board without an outcome (a
    conductor trashed it: its flow could not be built).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        backend, board = _store_and_board(stack, conf, backend, board)
        job = _find_job(board, job_id)
        flow_uuid = _find_flow(backend, job_id)
        if job is None and flow_uuid is None:
            raise JobboardError(f"no job {job_id} on the board at {board_path(conf)} and no "
                                "flow for it in the persistence backend; list jobs with "
                                "`vsan-flows jobs list`")
        gone_seen = False
        while True:
            if flow_uuid is None:
                flow_uuid = _find_flow(backend, job_id)
            if flow_uuid is not None:
                with contextlib.closing(backend.get_connection()) as conn:
                    fd = conn.get_flow_details(flow_uuid, lazy=True)
                outcome = (fd.meta or {}).get("outcome")
                if outcome:
                    return _result_of(job_id, outcome)
            gone = job is None or job.state == states.COMPLETE
            if gone and gone_seen:  # re-read once after it went: the outcome precedes it
                raise JobboardError(
                    f"job {job_id} left the board without a result (a conductor trashed it "
                    "because its flow could not be built or loaded); see that conductor's log"
                    + (f" and `vsan-flows flows show {flow_uuid}`" if flow_uuid else ""))
            gone_seen = gone
            if deadline is not None and time.monotonic() >= deadline:
                where = "unclaimed"
                if job is not None and job.state == states.CLAIMED:
                    where = f"claimed by {board.find_owner(job)}"
                raise JobTimeout(job_id, timeout or 0, where)
            time.sleep(poll if deadline is None else
                       max(0.0, min(poll, deadline - time.monotonic())))


def _result_of(job_id: str, outcome: Mapping[str, Any]) -> dict:
    if outcome.get("state") == states.SUCCESS:
        return dict(outcome.get("result") or {})
    raise JobFailed(job_id, outcome.get("state", "?"), outcome.get("error_type", ""),
                    outcome.get("error") or f"job {job_id} ended in {outcome.get('state')}")


# --------------------------------------------------------------------------- listing

def list_jobs(conf: cfg.ConfigOpts) -> list[dict[str, Any]]:
    """Every job on the board: id, state (claimed/unclaimed), owner, what it does, when."""
    rows = []
    with connect(conf) as board:
        for job in board.iterjobs(ensure_fresh=True):
            state = job.state
            if state == states.COMPLETE:
                continue
            details = job.details or {}
            created = job.created_on
            rows.append({
                "id": job.uuid,
                "state": state.lower(),
                "owner": board.find_owner(job) if state == states.CLAIMED else None,
                "operation": details.get("operation"),
                "instance": details.get("instance"),
                "image": details.get("image"),
                "flow": details.get("flow_uuid"),
                # TaskFlow gives the node's ctime as a naive local datetime.
                "posted": created.astimezone().isoformat(timespec="seconds")
                if created else None,
            })
    return rows


