"""Conductors: claim jobs from the ZooKeeper jobboard and run their flows here.

* A conductor claims a job with an *ephemeral* ZooKeeper node, loads the flow from the shared
  backend, injects the live handles it was given (vSphere session, image service, policy;
  transient, never persisted) and runs it. A job whose flow ends (SUCCESS, REVERTED, or FAILURE
  after a failed undo) is consumed; its outcome (the flow's facts, or the error) is written to
  the flow detail's meta first, for :func:`vsan_flows.runtime.jobs.wait`.
* A conductor that dies (kill -9, power loss) loses its ZooKeeper session after
  ``[vsan_flows] jobboard_session_timeout``; the claim node vanishes and another conductor
  claims the job and resumes the flow with the same semantics as ``runner.resume``: a transfer
  that was running is failed on purpose so its Retry discards the dead lease and the partial
  disk and starts over.
* A conductor asked to stop (SIGTERM, Ctrl-C) lets the running task finish, suspends the flow
  and releases (abandons) the job, which another conductor then resumes.
* A conductor that is *cut off* (its ZooKeeper session suspended or lost, or its claim read
  back as someone else's) is fenced (:mod:`vsan_flows.runtime.fencing`): its engine stops
  before its next task without undoing anything, records no outcome, and leaves the flow to
  the conductor that holds the job now.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from oslo_config import cfg
from taskflow import engines, states
from taskflow.conductors.backends.impl_blocking import BlockingConductor
from taskflow.listeners import base as listener_base

from vsan_flows import exceptions, names
from vsan_flows.runtime import fencing, flowlock, jobs, legacy, persistence, runner
from vsan_flows.runtime.jobs import FINISHED
from vsan_flows.runtime.listeners import FlowLogger

LOG = logging.getLogger(__name__)


def conductor_name(conf: cfg.ConfigOpts) -> str:
    return conf.vsan_flows.conductor_name or socket.gethostname()


class _OutcomeRecorder(listener_base.Listener):
    """Writes how a flow ended into its flow detail's meta, before the job is consumed.

    Results are the flow's facts (what ``api.spawn`` returns); an error is kept as its class
    name and message (our messages carry no secrets by construction).
    """

    def __init__(self, engine, fence=fencing.UNFENCED) -> None:
        super().__init__(engine, task_listen_for=(), retry_listen_for=(),
                         flow_listen_for=FINISHED)
        self._fence = fence

    def _flow_receiver(self, state, details):
        if self._fence.tripped:
            # A fenced engine's ending is not the flow's: the job's owner now runs it.
            LOG.info("flow %s: not recording %s, this engine was fenced (%s)",
                     self._engine.storage.flow_uuid, state, self._fence.tripped)
            return
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
        return {"state": state, "result": runner.results(engine)}
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


#: How long a conductor leaves alone a job whose flow a local process runs: the first wait,
#: doubled on every new refusal up to the last figure.
BUSY_BACKOFF = (1.0, 30.0)


class _BusyJobs:
    """The jobs this conductor released because a local process runs their flow, and until when
    it leaves them alone.

    Why: a released job is unclaimed at once, and TaskFlow's conductor loop claims whatever
    it finds without pausing after a dispatch, so the same job was claimed, refused and
    released again in a tight loop (hundreds of ZooKeeper writes and log lines a second) for
    as long as that process ran the flow.
    """

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, float]] = {}  # job -> (not before, last wait)
        self._guard = threading.Lock()

    def refused(self, job_uuid: str) -> float:
        with self._guard:
            _, last = self._until.get(job_uuid, (0.0, 0.0))
            wait = min(BUSY_BACKOFF[1], last * 2 if last else BUSY_BACKOFF[0])
            self._until[job_uuid] = (time.monotonic() + wait, wait)
            return wait

    def ran(self, job_uuid: str) -> None:
        with self._guard:
            self._until.pop(job_uuid, None)

    def waiting(self, job_uuid: str) -> bool:
        with self._guard:
            until = self._until.get(job_uuid)
            return until is not None and time.monotonic() < until[0]


class _BoardSkippingBusy:
    """The jobboard as the conductor loop sees it: jobs it must leave alone for now are not
    listed (everything else is the real board)."""

    def __init__(self, board, busy: _BusyJobs) -> None:
        self._board = board
        self._busy = busy

    def iterjobs(self, *args, **kwargs):
        return (job for job in self._board.iterjobs(*args, **kwargs)
                if not self._busy.waiting(job.uuid))

    def __getattr__(self, name: str):
        return getattr(self._board, name)


class VsanFlowsConductor(BlockingConductor):
    """TaskFlow's blocking conductor, with what every vsan_flows conductor adds.

    TaskFlow has no engine factory hook: a conductor builds each job's engine in
    ``_engine_from_job`` (its documented override point, like ``_listeners_from_job``), so
    that is where the transient live handles go in and where a taken-over flow is prepared
    for resume. Our attributes carry a ``_vsan_`` prefix: TaskFlow's conductors keep private
    state under plain names (``_dispatched`` is theirs).
    """

    def __init__(self, name: str, board, *, transients: Mapping[str, Any], persistence,
                 engine: str, max_workers: int | None = None, wait_timeout: float | None = None,
                 max_jobs: int | None = None,
                 flow_locks: flowlock.FlowLocks | None = None,
                 session: fencing.SessionWatch | None = None) -> None:
        options = runner.engine_options(engine, max_workers)
        self._vsan_busy = _BusyJobs()
        super().__init__(name, _BoardSkippingBusy(board, self._vsan_busy),
                         persistence=persistence, engine=options.pop("engine"),
                         engine_options=options, wait_timeout=wait_timeout)
        self._vsan_transients = dict(transients)
        self._vsan_max_jobs = max_jobs
        self._vsan_dispatched = 0
        self._vsan_tokens: dict[str, str] = {}  # job -> its flow's token, while it runs here
        self._vsan_flow_locks = flow_locks or flowlock.process_only()
        self._vsan_session = session
        self._vsan_fences: dict[str, fencing.Fence] = {}  # job -> its engine's fence
        self._vsan_fenced: set[str] = set()  # jobs whose engine was fenced, until finished

    def _flow_detail_from_job(self, job):
        # The book a job object carries is read once and may predate a takeover: reload.
        fd = super()._flow_detail_from_job(job)
        with contextlib.closing(self._persistence.get_connection()) as conn:
            fd = conn.get_flow_details(fd.uuid, lazy=False)
        return legacy.upgraded(self._persistence, fd)

    def _engine_from_job(self, job):
        jobs.update_book_meta(self._persistence, job.book_uuid,
                              {"conductor": self._name, "job": job.uuid})
        live = dict(self._vsan_transients)
        if self._vsan_session is None:
            engine = super()._engine_from_job(job)
        else:
            # TaskFlow's own _engine_from_job (flow detail + store), with a backend that
            # stops persisting once the engine is fenced: a stale engine must not write
            # over the flow record its job's new owner is writing.
            fd = self._flow_detail_from_job(job)
            fence = self._vsan_session.fence(job, fd.uuid)
            store = {**((fd.meta or {}).get("store") or {}),
                     **((job.details or {}).get("store") or {})}
            engine = engines.load_from_detail(
                fd, store=store, engine=self._engine,
                backend=fencing.FencedBackend(self._persistence, fence),
                **self._engine_options)
            self._vsan_fences[job.uuid] = fence
            live[names.FENCE] = fence
            fence.guard(engine)
        engine.storage.inject(live, transient=True)
        engine.compile()
        engine.prepare()
        # Same resume semantics as runner.resume: a transfer caught RUNNING was cut off.
        runner.fail_interrupted_transfers(engine)
        with contextlib.suppress(Exception):  # a flow without a token holds no image lock
            self._vsan_tokens[job.uuid] = engine.storage.fetch(names.FLOW_TOKEN)
        return engine

    def _listeners_from_job(self, job, engine):
        fence = self._vsan_fences.get(job.uuid, fencing.UNFENCED)
        return [*super()._listeners_from_job(job, engine), _OutcomeRecorder(engine, fence),
                FlowLogger(engine)]

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
            self._count_dispatch()
            return True
        LOG.info("Conductor %s runs job %s (%s)", self._name, job.uuid, job.name)
        try:
            # A process of this host may run the flow outside the board (an admin's `flows
            # resume`): running it here too would make two engines. Release the job instead;
            # it is claimed again once that process is done with it.
            self._vsan_flow_locks.acquire(job.book_uuid, fd.uuid)
        except exceptions.FlowBusy as exc:
            wait = self._vsan_busy.refused(job.uuid)
            LOG.warning("Conductor %s releases job %s: flow %s is run by %s; it looks again "
                        "in %.0f s", self._name, job.uuid, fd.uuid, exc.holder, wait)
            return False
        self._vsan_busy.ran(job.uuid)
        try:
            return super()._dispatch_job(job)
        finally:
            self._vsan_flow_locks.release(job.book_uuid)
            fence = self._vsan_fences.pop(job.uuid, None)
            if fence is not None:
                self._vsan_session.forget(fence)
                if fence.tripped:
                    self._vsan_fenced.add(job.uuid)
                    LOG.warning("Conductor %s: job %s was fenced (%s); its flow is left to "
                                "the conductor that holds the job", self._name, job.uuid,
                                fence.tripped)
            # However the flow stopped here, the image import locks it took in this process
            # go (a flow that runs again takes them again).
            token = self._vsan_tokens.pop(job.uuid, None)
            locks = self._vsan_transients.get(names.IMAGE_LOCKS)
            if token and locks is not None:
                locks.release_owner(token)
            self._count_dispatch()

    def _try_finish_job(self, job, consume, trash=False):
        if job.uuid in self._vsan_fenced:
            # However a fenced engine ended, the flow is not done: never consume or trash
            # it. Releasing fails harmlessly when the claim is already someone else's, and
            # frees the job when the session came back with the claim still ours.
            self._vsan_fenced.discard(job.uuid)
            consume = trash = False
        return super()._try_finish_job(job, consume, trash)

    def _count_dispatch(self) -> None:
        # TaskFlow's run(max_dispatches=N) dispatches N + 1 jobs (it counts after submitting,
        # and only stops when the counter overflows on the next job) and then idles on an
        # empty board; count here and stop once the job is done (it is still consumed).
        self._vsan_dispatched += 1
        if self._vsan_max_jobs is not None and self._vsan_dispatched >= self._vsan_max_jobs:
            self.stop()


def _count(counts: dict[str, int], key: str, _event: str, details=None) -> None:
    counts[key] += 1


def run_conductor(conf: cfg.ConfigOpts, make_transients: Callable[[], Mapping[str, Any]], *,
                  stop_event: threading.Event | None = None, max_jobs: int | None = None,
                  backend=None) -> dict[str, int]:
    """Claim and run jobs until ``stop_event`` is set or ``max_jobs`` were dispatched.

    ``make_transients`` builds the live handles every job's flow gets; it is called once,
    after the board is reached and before the first claim (so an unreachable ZooKeeper or a
    wrong vCenter setting fails at start, not job by job). On stop the running task finishes,
    the flow is suspended and its job released for another conductor. Returns counts of
    consumed, released and trashed jobs.
    """
    name = conductor_name(conf)
    counts = {"consumed": 0, "released": 0, "trashed": 0}
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = persistence.open_backend(conf)
            stack.callback(backend.close)
        board = stack.enter_context(jobs.connect(conf, backend, name=name))
        session = fencing.SessionWatch(jobs.client_of(board), name)
        stack.callback(session.close)
        conductor = VsanFlowsConductor(
            name, board, transients=make_transients(), persistence=backend,
            engine=conf.vsan_flows.engine, max_workers=conf.vsan_flows.max_workers,
            wait_timeout=conf.vsan_flows.conductor_wait_timeout, max_jobs=max_jobs,
            flow_locks=flowlock.for_conf(conf), session=session)
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
        LOG.info("Conductor %s serving %s at %s", name, jobs.board_path(conf),
                 jobs.board_hosts(conf))
        try:
            conductor.run()
        finally:
            done.set()
            conductor.wait(5)
    return counts
