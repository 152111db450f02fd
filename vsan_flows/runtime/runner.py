"""Run flows by factory name on a persistence backend, and resume them after a restart.

Why this shape: a flow that must survive a restart is rebuilt from its factory name and JSON
arguments (saved in the flow detail by TaskFlow's load_from_factory), reads its facts from the
store, and gets live objects (vSphere session, image service, policy) injected as transient
values, which TaskFlow keeps in memory only. The logbook of every flow records the host that
owns it, the operation, the instance and the image, for resume and for the admin CLI.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import taskflow.engines
from taskflow import exceptions as tf_exc
from taskflow import states
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models
from taskflow.types import failure as tf_failure

from vsan_flows import exceptions, names
from vsan_flows.runtime import flowlock, legacy, persistence
from vsan_flows.runtime.listeners import FlowLogger
from vsan_flows.runtime.plan import Plan

LOG = logging.getLogger(__name__)

# Flow states that mean "started here and not finished": what a restart must pick up.
UNFINISHED = (states.RUNNING, states.RESUMING, states.REVERTING, states.SUSPENDED,
              states.SUSPENDING, states.PENDING)



def memory_backend():
    backend = tf_backends.fetch({"connection": "memory://"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def host_name() -> str:
    return socket.gethostname()


def new_book(backend, name: str, meta: Mapping[str, Any], *,
             book_uuid: str | None = None, save: bool = True) -> models.LogBook:
    """A logbook for one flow, recording this host as its owner; saved unless ``save`` is
    false (TaskFlow saves it with the flow detail it adds)."""
    book = models.LogBook(name, uuid=book_uuid)
    book.meta = {"host": host_name(), **meta}
    if save:
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
    return book


def engine_options(engine: str, max_workers: int | None) -> dict[str, Any]:
    """TaskFlow engine options: ``max_workers`` sizes the parallel engine's thread pool."""
    options: dict[str, Any] = {"engine": engine}
    if engine == "parallel" and max_workers:
        options["max_workers"] = max_workers
    return options


def prepare(plan: Plan, backend, *, host: str | None = None, engine: str = "serial",
            max_workers: int | None = None, book_uuid: str | None = None):
    """Save ``plan``'s logbook and flow detail (store injected) without running anything.

    Returns the logbook and the engine, ready to run here once live handles are injected, or
    to be dropped when the flow is handed to a conductor (which rebuilds it from the detail).
    """
    meta = dict(plan.book_meta)
    if host is not None:
        meta["host"] = host
    # Saved by load_from_factory, with the flow detail in it: one commit, not two, and never
    # a logbook without its flow.
    book = new_book(backend, plan.book_name, meta, book_uuid=book_uuid, save=False)
    return book, taskflow.engines.load_from_factory(
        plan.factory, factory_kwargs=dict(plan.factory_kwargs), store=dict(plan.store),
        book=book, backend=backend, **engine_options(engine, max_workers))


def run(plan: Plan, transients: Mapping[str, Any], *, backend=None, engine: str = "serial",
        max_workers: int | None = None, listeners: tuple = (), host: str | None = None,
        locks: flowlock.FlowLocks | None = None) -> dict:
    """Run a new flow to the end; returns its results, or raises one of our errors.

    ``host`` is the owner its logbook records (default: this machine's name); only that host
    resumes it after a restart. The flow's lock (``locks``) is taken before its logbook is
    saved, so no other process can see it unlocked while this one lives.
    """
    book_uuid = str(uuid.uuid4())
    with _locks(locks).hold(book_uuid, plan.book_name):
        _book, eng = prepare(plan, backend or memory_backend(), engine=engine,
                             max_workers=max_workers, host=host, book_uuid=book_uuid)
        eng.storage.inject(dict(transients), transient=True)
        return _run(eng, listeners)


def _locks(locks: flowlock.FlowLocks | None) -> flowlock.FlowLocks:
    return locks if locks is not None else flowlock.process_only()


def _book_of(backend, flow_detail: models.FlowDetail,
             book: models.LogBook | None) -> models.LogBook:
    if book is None:
        book, _ = persistence.find_flow_detail(backend, flow_detail.uuid)
    return book


def unfinished(backend, host: str | None = None) -> list[tuple[models.LogBook,
                                                                 models.FlowDetail]]:
    """This host's flows that a crash or restart interrupted, oldest first."""
    host = host or host_name()
    found = []
    with contextlib.closing(backend.get_connection()) as conn:
        for book in conn.get_logbooks():
            if (book.meta or {}).get("host") != host:
                continue
            for fd in book:
                if fd.state in UNFINISHED and (fd.meta or {}).get("factory"):
                    found.append((book, fd))
    return sorted(found, key=lambda bf: bf[0].created_at or 0)


def load(backend, flow_detail: models.FlowDetail, transients: Mapping[str, Any], *,
         engine: str = "serial", max_workers: int | None = None,
         book: models.LogBook | None = None, resolve: bool = True):
    """An engine for a saved flow, rebuilt from its factory, with fresh live handles.

    Pass ``book`` when the caller has it: finding it means scanning logbooks. ``resolve=False``
    keeps the flow's Retry controllers out of it (TaskFlow's ``never_resolve``): a failure on
    record is then not offered to a Retry, which could decide to run its subflow again.
    """
    if book is None:
        book, _ = persistence.find_flow_detail(backend, flow_detail.uuid)
    flow_detail = legacy.upgraded(backend, flow_detail)
    options = engine_options(engine, max_workers)
    if not resolve:
        options["never_resolve"] = True
    eng = taskflow.engines.load_from_detail(flow_detail, backend=backend, book=book,
                                            **options)
    eng.storage.inject(dict(transients), transient=True)
    return eng


def resume(backend, flow_detail: models.FlowDetail, transients: Mapping[str, Any], *,
           engine: str = "serial", max_workers: int | None = None, listeners: tuple = (),
           book: models.LogBook | None = None,
           locks: flowlock.FlowLocks | None = None) -> dict:
    """Finish an interrupted flow: forward where that is safe, via its Retry where not.

    Raises FlowBusy, touching nothing, when a live process of this host runs the flow.
    """
    book = _book_of(backend, flow_detail, book)
    with _locks(locks).hold(book.uuid, flow_detail.uuid):
        return _resume(backend, _reread(backend, flow_detail), transients, engine,
                       max_workers, listeners, book)


def _resume(backend, flow_detail, transients, engine, max_workers, listeners, book) -> dict:
    eng = load(backend, flow_detail, transients, engine=engine, max_workers=max_workers,
               book=book)
    eng.compile()
    eng.prepare()
    fail_interrupted_transfers(eng)
    return _run(eng, listeners)


def _reread(backend, flow_detail: models.FlowDetail) -> models.FlowDetail:
    # What the caller read may predate the lock: the previous runner may have moved it on.
    with contextlib.closing(backend.get_connection()) as conn:
        return conn.get_flow_details(flow_detail.uuid, lazy=False)


def revert(backend, flow_detail: models.FlowDetail, transients: Mapping[str, Any], *,
           engine: str = "serial", max_workers: int | None = None, listeners: tuple = (),
           book: models.LogBook | None = None,
           locks: flowlock.FlowLocks | None = None) -> None:
    """Roll a flow back completely (an admin's choice), retrying undo steps that failed.

    TaskFlow has no "revert this saved flow" call: every task/retry atom that did anything
    gets the REVERT intention, an interrupted one is recorded as failed, what never ran is
    ignored, and REVERT_FAILURE (terminal for TaskFlow) is set back to FAILURE so its undo
    runs again. Success is judged by the final flow state: a complete revert still re-raises
    the failures on record.
    """
    book = _book_of(backend, flow_detail, book)
    with _locks(locks).hold(book.uuid, flow_detail.uuid):
        _revert(backend, _reread(backend, flow_detail), transients, engine, max_workers,
                listeners, book)


def _revert(backend, flow_detail, transients, engine, max_workers, listeners, book) -> None:
    # No Retry decides anything here: the admin asked for a revert. On resume TaskFlow offers
    # every failure on record to the enclosing Retry, which could answer "run it again" (a
    # vanished cache entry, a cut transfer), and an undo set back to FAILURE below has no
    # failure on record at all (TaskFlow cleared it with REVERT_FAILURE) for one to read.
    eng = load(backend, flow_detail, transients, engine=engine, max_workers=max_workers,
               book=book, resolve=False)
    eng.compile()
    eng.prepare()
    reason = tf_failure.Failure.from_exception(
        exceptions.FlowError(flow_detail.name, "reverted on request",
                             "Its effects were undone; start the operation again if needed."))
    for atom, data in eng.compilation.execution_graph.nodes(data=True):
        kind = data.get("kind")
        if kind not in ("task", "retry"):
            continue  # flow start/end markers have no stored state
        name = atom.name
        state = eng.storage.get_atom_state(name)
        if state == states.REVERT_FAILURE:
            eng.storage.set_atom_state(name, states.FAILURE)
            state = states.FAILURE
        if state in (states.SUCCESS, states.RUNNING, states.FAILURE, states.RETRYING):
            eng.storage.set_atom_intention(name, states.REVERT)
        if state == states.RUNNING and kind == "task":
            eng.storage.save(name, reason, states.FAILURE)
        elif state == states.PENDING:
            eng.storage.set_atom_intention(name, states.IGNORE)
    try:
        _run(eng, listeners)
    except Exception:
        if eng.storage.get_flow_state() != states.REVERTED:
            raise


def resume_all(backend, make_transients: Callable[[], Mapping[str, Any]], *,
               engine: str = "serial", max_workers: int | None = None,
               host: str | None = None, locks: flowlock.FlowLocks | None = None,
               concurrency: int = 1) -> list[tuple[str, str, str]]:
    """Resume every unfinished flow of this host; returns (flow id, name, outcome) each.

    A flow whose logbook says ``on_restart: revert`` (an operation that is unsafe to finish
    late) is rolled back instead. Spawn and snapshot are safe to resume: every task looks its
    effects up by persisted identity before acting. A flow a live process of this host still
    runs (it holds the flow's lock) is left to it; one that process finished meanwhile too.

    Independent flows run ``concurrency`` at a time (each mostly waits on vCenter), each as one
    :func:`resume_one` under its own lock; outcomes come back oldest flow first, one per flow,
    a failure of one never stopping the others. Live handles are built once, only if there is
    something to resume, and shared.
    """
    todo = unfinished(backend, host)
    if not todo:
        return []
    transients = make_transients()

    def one(book_fd: tuple[models.LogBook, models.FlowDetail]) -> tuple[str, str, str]:
        book, fd = book_fd
        return (fd.uuid, fd.name, resume_one(backend, book, fd, transients, engine=engine,
                                             max_workers=max_workers, locks=locks))

    width = max(1, min(concurrency, len(todo)))
    if width == 1:
        return [one(bf) for bf in todo]
    order = spread_by_image(todo, most_work_first(todo))
    with futures.ThreadPoolExecutor(width, thread_name_prefix="vsan-flows-resume") as pool:
        done = dict(zip(order, pool.map(one, [todo[i] for i in order]), strict=True))
    return [done[i] for i in range(len(todo))]


_DONE = frozenset((states.SUCCESS, states.IGNORE, states.REVERTED))


def most_work_first(todo: list[tuple[models.LogBook, models.FlowDetail]]) -> list[int]:
    """Indexes of ``todo``, the flows with the most atoms still to run (or undo) first.

    Why: resumed ``width`` at a time, the whole batch ends when its last flow does. Started in
    age order, a flow with a whole spawn left may start last and run alone at the end; the
    longest first leaves the short ones to fill the gaps (the usual makespan rule). An atom
    stands for one vCenter wait, roughly: counting them needs no more than the flow detail
    already read. Equal counts keep age order.
    """
    def remaining(fd: models.FlowDetail) -> int:
        return sum(1 for ad in fd if ad.state not in _DONE)

    return sorted(range(len(todo)), key=lambda i: -remaining(todo[i][1]))


def spread_by_image(todo: list[tuple[models.LogBook, models.FlowDetail]],
                    order: list[int] | None = None) -> list[int]:
    """The order to start ``todo`` in (indexes): one flow per image in turn, in ``order``
    (default: oldest first) within an image and among images.

    Why: flows of one image share its import (one imports under the image's lock, the others
    wait for it and then link), so started side by side they fill the pool with waiters.
    Measured resuming 100 flows, 10 per image, 10 at a time under the ``vcenter`` latency
    profile: in age order each round was one import and nine waiters, one image after the
    other. Taking one flow of each image in turn lets the imports of different images overlap.
    """
    queues: dict[object, collections.deque] = {}
    for i in range(len(todo)) if order is None else order:
        book = todo[i][0]
        key = (book.meta or {}).get("image") or ("flow", i)
        queues.setdefault(key, collections.deque()).append(i)
    order: list[int] = []
    while queues:
        for key in list(queues):
            order.append(queues[key].popleft())
            if not queues[key]:
                del queues[key]
    return order


def resume_one(backend, book: models.LogBook, fd: models.FlowDetail,
               transients: Mapping[str, Any], *, engine: str = "serial",
               max_workers: int | None = None,
               locks: flowlock.FlowLocks | None = None) -> str:
    """What restart does with one unfinished flow; the outcome in words, never raises."""
    try:
        with _locks(locks).hold(book.uuid, fd.uuid):
            fd = _reread(backend, fd)
            if fd.state not in UNFINISHED:
                return f"left alone: its previous runner ended it ({fd.state})"
            if (book.meta or {}).get("on_restart") == "revert":
                _revert(backend, fd, transients, engine, max_workers, (), book)
                return "reverted (its flow asks for that)"
            _resume(backend, fd, transients, engine, max_workers, (), book)
            return "completed"
    except exceptions.FlowBusy as exc:
        LOG.info("flow %s (%s) not resumed: %s", fd.uuid, fd.name, exc.holder)
        return f"left alone: {exc.holder} runs it"
    except Exception as exc:  # noqa: BLE001 - one bad flow must not stop the others
        LOG.warning("resumed flow %s (%s) ended in failure: %s", fd.uuid, fd.name, exc)
        return f"rolled back: {exc}"


def fail_interrupted_transfers(eng) -> None:
    """Fail every task marked ``restart_after_crash`` that a crash caught RUNNING.

    Such a task (a transfer) left a partial disk behind a lease that died with the process;
    re-running it on that lease cannot work. Failed, it makes its subflow's Retry abort the
    lease, destroy the half-import and start over with a fresh one.
    """
    reason = tf_failure.Failure.from_exception(exceptions.TransferError(
        "the transfer was interrupted by a restart; its lease and partial disk are discarded "
        "and the transfer starts again"))
    for atom, data in eng.compilation.execution_graph.nodes(data=True):
        if data.get("kind") != "task":
            continue
        if getattr(atom, "restart_after_crash", False) and \
                eng.storage.get_atom_state(atom.name) == states.RUNNING:
            eng.storage.save(atom.name, reason, states.FAILURE)


def _run(eng, listeners: tuple = ()) -> dict:
    eng.compile()  # listeners may need the compiled atoms (progress notifiers); cached
    persist_progress_sparingly(eng.storage)
    with contextlib.ExitStack() as stack:
        stack.enter_context(FlowLogger(eng))
        for make in listeners:
            stack.enter_context(make(eng))
        try:
            eng.run()
        except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
            raise translate(exc) from None
    return results(eng)


def persist_progress_sparingly(storage) -> None:
    """Do not commit the 0 % and 100 % TaskFlow's executor reports around every task.

    Each progress report is its own committed transaction, and these two say nothing the
    task's state does not (RUNNING is saved before it starts, SUCCESS with its result after):
    two of the four or five commits of every task. Progress a task reports itself (a transfer,
    once a second) is kept, so a stuck transfer still shows how far it got.
    """
    save = storage.set_task_progress

    def set_task_progress(task_name, progress, details=None):
        if not details and progress in (0.0, 1.0):
            return
        save(task_name, progress, details=details)

    storage.set_task_progress = set_task_progress


def results(eng) -> dict:
    """A finished flow's facts: everything it stored, without the live handles."""
    return {k: v for k, v in eng.storage.fetch_all().items() if k not in names.TRANSIENTS}


def translate(exc: BaseException) -> Exception:
    """Our error for whatever a flow raised; a WrappedFailure yields its first cause."""
    if isinstance(exc, tf_exc.WrappedFailure):
        for failure in exc:
            if failure.exception is not None:
                return translate(failure.exception)
        return exceptions.FlowError("run", f"failed: {exc}")
    if isinstance(exc, exceptions.VsanFlowsError):
        return exc
    # Imported here: oslo.vmware (and eventlet under it) is heavy, and the admin CLI's views
    # import the runtime without ever talking to vCenter.
    from vsan_flows.vsphere import faults

    ours = faults.to_error(exc)
    if ours is not None:
        return ours
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
