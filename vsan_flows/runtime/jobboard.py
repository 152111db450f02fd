"""Flows as jobs on a ZooKeeper jobboard, run by conductors on any compute host.

How a job travels:

* :func:`post` builds the flow's logbook and flow detail in the shared persistence backend
  exactly as an in-process run would (factory name + JSON arguments via TaskFlow's
  ``load_from_factory``, the store injected), without running it, then posts a job whose
  details repeat the facts (factory, arguments, store, operation, instance, image; no
  secrets: they live in ZooKeeper and in the database).
* A conductor (:func:`run_conductor`) claims the job with an *ephemeral* ZooKeeper node, loads
  the flow from the backend, injects the live handles it built once at start (vSphere session,
  image service, policy; transient, never persisted) and runs it. A job whose flow ends
  (SUCCESS, REVERTED, or FAILURE after a failed undo) is consumed; its outcome (the flow's
  facts, or the error) is written to the flow detail's meta first, for :func:`wait`.
* A conductor that dies (kill -9, power loss) loses its ZooKeeper session after
  ``[vsan_flows] jobboard_session_timeout``; the claim node vanishes and another conductor
  claims the job and resumes the flow from the backend with the same semantics as
  ``runner.resume``: a transfer that was running is failed on purpose so its Retry discards
  the dead lease and the partial disk and starts over.
* A conductor asked to stop (SIGTERM, Ctrl-C) lets the running task finish, suspends the flow
  and releases (abandons) the job, which another conductor then resumes.

Ownership: the logbook meta ``host`` of a jobboard flow is ``jobboard:<path>``, never a host
name. ``api.resume_unfinished`` (a restarted compute service) only resumes flows whose ``host``
is its own name, so it can never race the conductor that took a job over; the ZooKeeper claim
is the one lock. The meta also records ``job`` (the job id) and ``conductor`` (the last
conductor that claimed it), so `vsan-flows flows list/show` tell who ran what.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import stevedore.driver
import taskflow.engines
from oslo_config import cfg
from taskflow import exceptions as tf_exc
from taskflow import states
from taskflow.conductors import backends as conductor_backends
from taskflow.jobs import backends as job_backends
from taskflow.listeners import base as listener_base
from taskflow.persistence import models

from vsan_flows import api, exceptions
from vsan_flows.runtime import persistence, runner

LOG = logging.getLogger(__name__)

OPTION = "[vsan_flows] jobboard_hosts"

#: Seconds to wait for the first ZooKeeper connection before calling the board unreachable.
CONNECT_TIMEOUT = 5.0

#: Flow states after which a job is done: consumed, never run again.
FINISHED = (states.SUCCESS, states.REVERTED, states.FAILURE)

#: The transient names: never in a job's details, a flow's meta or an outcome.
TRANSIENTS = ("vsphere", "images", "policy")


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


# --------------------------------------------------------------------------- operations

# --------------------------------------------------------------------------- the board

def conductor_name(conf: cfg.ConfigOpts) -> str:
    return conf.vsan_flows.conductor_name or socket.gethostname()


def _hosts(conf: cfg.ConfigOpts) -> str:
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
    hosts = _hosts(conf)
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


# --------------------------------------------------------------------------- posting

def post(conf: cfg.ConfigOpts, operation: str, instance_name: str, image_id: str, *,
         backend=None, board=None, **factory_kwargs: Any) -> str:
    """Post ``operation`` (spawn or snapshot) as a job; returns the job id.

    The flow detail is complete in the persistence backend before the job appears, so any
    conductor can run it; ``factory_kwargs`` are the factory's JSON arguments (spawn:
    ``power_on``).
    """
    try:
        p = api.plan(conf, operation, instance_name, image_id, **factory_kwargs)
    except exceptions.FlowError as exc:
        raise JobboardError(str(exc)) from None
    json.dumps(p.factory_kwargs)  # a job's arguments must survive ZooKeeper and the database
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = persistence.open_backend(conf)
            stack.callback(backend.close)
        if board is None:
            board = stack.enter_context(connect(conf, backend))
        meta = {**p.book_meta, "host": f"jobboard:{board_path(conf)}"}
        book = runner.new_book(backend, p.book_name, meta)
        # Builds the flow (composition only, no vCenter) to save its factory details and
        # inject the store; nothing runs here.
        eng = taskflow.engines.load_from_factory(
            p.factory, factory_kwargs=p.factory_kwargs, store=p.store, book=book,
            backend=backend, engine=conf.vsan_flows.engine)
        flow_uuid = eng.storage.flow_uuid
        details = {"flow_uuid": flow_uuid, "factory": p.factory,
                   "factory_kwargs": p.factory_kwargs, "store": p.store,
                   "operation": operation, "instance": instance_name, "image": image_id}
        job = board.post(f"{operation} {instance_name}", book=book, details=details)
        _update_book_meta(backend, book.uuid, {"job": job.uuid})
        LOG.info("Posted %s of %s (image %s) as job %s, flow %s", operation, instance_name,
                 image_id, job.uuid, flow_uuid)
        return job.uuid


def _update_book_meta(backend, book_uuid: str, update: Mapping[str, Any]) -> None:
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
        if backend is None:
            backend = persistence.open_backend(conf)
            stack.callback(backend.close)
        if board is None:
            board = stack.enter_context(connect(conf, backend))
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


# --------------------------------------------------------------------------- conductors

class _OutcomeRecorder(listener_base.Listener):
    """Writes how a flow ended into its flow detail's meta, before the job is consumed.

    Results are the flow's facts (what ``api.spawn`` returns); an error is kept as its class
    name and message (our messages carry no secrets by construction).
    """

    def __init__(self, engine) -> None:
        super().__init__(engine, task_listen_for=(), retry_listen_for=(),
                         flow_listen_for=FINISHED)

    def _flow_receiver(self, state, details):
        try:
            self._engine.storage.update_flow_metadata({"outcome": outcome_of(self._engine,
                                                                             state)})
        except Exception:  # noqa: BLE001 - bookkeeping must not turn into a flow failure
            LOG.warning("could not record how flow %s ended (%s); `vsan-flows jobs post "
                        "--wait` will not see it", self._engine.storage.flow_uuid, state,
                        exc_info=True)


def outcome_of(engine, state: str) -> dict[str, Any]:
    storage = engine.storage
    if state == states.SUCCESS:
        return {"state": state,
                "result": {k: v for k, v in storage.fetch_all().items() if k not in TRANSIENTS}}
    failures = list(storage.get_execute_failures().values()) + \
        list(storage.get_revert_failures().values())
    error_type, message = "", f"the flow ended in {state}"
    for fail in sorted(failures, key=lambda f: f.exception is None):
        if fail.exception is not None:
            err = runner.translate(fail.exception)
            error_type = f"{type(err).__module__}.{type(err).__qualname__}"
            message = str(err)
        else:  # restored from the database: only the text survives
            error_type = (fail.exception_type_names or [""])[0]
            message = fail.exception_str or message
        break
    if state == states.FAILURE:
        message += " (its undo failed too: see `vsan-flows flows show`, then revert it)"
    return {"state": state, "error_type": error_type, "error": message}


class _VsanFlowsConductorMixin:
    """What every vsan_flows conductor adds to a TaskFlow conductor, in one place.

    TaskFlow has no engine factory hook: a conductor builds each job's engine in
    ``_engine_from_job`` (its documented override point, like ``_listeners_from_job``), so
    that is where the transient live handles go in and where a taken-over flow is prepared
    for resume.
    """

    _vsan_transients: Mapping[str, Any] = {}

    def _flow_detail_from_job(self, job):
        # The book a job object carries is read once and may predate a takeover: reload.
        fd = super()._flow_detail_from_job(job)
        with contextlib.closing(self._persistence.get_connection()) as conn:
            return conn.get_flow_details(fd.uuid, lazy=False)

    def _engine_from_job(self, job):
        _update_book_meta(self._persistence, job.book_uuid,
                          {"conductor": self._name, "job": job.uuid})
        engine = super()._engine_from_job(job)
        engine.storage.inject(dict(self._vsan_transients), transient=True)
        engine.compile()
        engine.prepare()
        # Same resume semantics as runner.resume: a transfer caught RUNNING was cut off.
        runner.fail_interrupted_transfers(engine)
        return engine

    def _listeners_from_job(self, job, engine):
        return [*super()._listeners_from_job(job, engine), _OutcomeRecorder(engine)]

    def _dispatch_job(self, job):
        fd = self._flow_detail_from_job(job)
        if (fd.meta or {}).get("outcome") or fd.state in (states.REVERTED, states.FAILURE):
            # Finished, but its conductor died before consuming the job. Running it again
            # would start a reverted flow over (TaskFlow resets REVERTED flows): just consume.
            LOG.info("Job %s: flow %s already ended (%s); consuming it", job.uuid, fd.uuid,
                     fd.state)
            if not (fd.meta or {}).get("outcome"):
                engine = super()._engine_from_job(job)
                engine.storage.update_flow_metadata({"outcome": outcome_of(engine, fd.state)})
            self._vsan_count_dispatch()
            return True
        LOG.info("Conductor %s runs job %s (%s)", self._name, job.uuid, job.name)
        try:
            return super()._dispatch_job(job)
        finally:
            self._vsan_count_dispatch()

    _vsan_max_jobs: int | None = None
    _vsan_dispatched = 0

    def _vsan_count_dispatch(self) -> None:
        # TaskFlow's run(max_dispatches=N) dispatches N + 1 jobs (it counts after submitting,
        # and only stops when the counter overflows on the next job) and then idles on an
        # empty board; count here and stop once the job is done (it is still consumed).
        self._vsan_dispatched += 1
        if self._vsan_max_jobs is not None and self._vsan_dispatched >= self._vsan_max_jobs:
            self.stop()


def conductor_class(kind: str = "blocking") -> type:
    """TaskFlow's conductor ``kind`` (entry point taskflow.conductors), with our hooks.

    ``conductor_backends.fetch`` would instantiate the class itself, leaving no way to add
    the hooks; the class is therefore looked up through the same entry point and subclassed.
    """
    try:
        mgr = stevedore.driver.DriverManager(conductor_backends.CONDUCTOR_NAMESPACE, kind,
                                             invoke_on_load=False)
    except RuntimeError as exc:
        raise JobboardError(f"no TaskFlow conductor called {kind!r} ({exc})") from None
    return type(f"VsanFlows{mgr.driver.__name__}", (_VsanFlowsConductorMixin, mgr.driver), {})


def _count(counts: dict[str, int], key: str, _event: str, details=None) -> None:
    counts[key] += 1


def run_conductor(conf: cfg.ConfigOpts, *, stop_event: threading.Event | None = None,
                  max_jobs: int | None = None, kind: str = "blocking", transients=None,
                  backend=None) -> dict[str, int]:
    """Claim and run jobs until ``stop_event`` is set or ``max_jobs`` were dispatched.

    Live handles are built once, before the first claim (so a wrong vCenter setting fails at
    start, not job by job). On stop the running task finishes, the flow is suspended and its
    job released for another conductor. Returns counts of consumed and released jobs.
    """
    name = conductor_name(conf)
    counts = {"consumed": 0, "released": 0, "trashed": 0}
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = persistence.open_backend(conf)
            stack.callback(backend.close)
        board = stack.enter_context(connect(conf, backend, name=name))
        live = dict(transients) if transients is not None else api.live_handles(conf)
        cls = conductor_class(kind)
        conductor = cls(name, board, persistence=backend, engine=conf.vsan_flows.engine,
                        wait_timeout=conf.vsan_flows.conductor_wait_timeout)
        conductor._vsan_transients = live
        conductor._vsan_max_jobs = max_jobs
        for event, key in (("job_consumed", "consumed"), ("job_abandoned", "released"),
                           ("job_trashed", "trashed")):
            conductor.notifier.register(event, functools.partial(_count, counts, key))
        done = threading.Event()
        if stop_event is not None:
            def watch():
                while not done.is_set():
                    if stop_event.wait(0.2):
                        LOG.info("Conductor %s stopping: the current task finishes, then its "
                                 "job is released", name)
                        conductor.stop()
                        return
            threading.Thread(target=watch, name="conductor-stop", daemon=True).start()
        LOG.info("Conductor %s serving %s at %s", name, board_path(conf), _hosts(conf))
        try:
            conductor.run()
        finally:
            done.set()
            conductor.wait(5)
    return counts
