"""Fencing: a conductor's engine acts for a flow only while the jobboard claim is its own.

The jobboard claim is an ephemeral ZooKeeper node: it belongs to a *session*. A conductor cut
off from ZooKeeper keeps running while the server expires its session and another conductor
claims the job and resumes the flow; without a check both engines then act on the same flow
(issue 11 saw each destroy the other's import VM). Three things stop the old one:

* **The session.** A kazoo connection-state listener trips the fence of every engine of the
  conductor as soon as the session is SUSPENDED (connection lost, session maybe alive) or
  LOST (expired), and asks those engines to suspend: a running task finishes, no next one
  starts, nothing is reverted (a revert would undo the new owner's work: the objects carry
  the same flow token).
* **The claim, before every scheduling round.** The engine's ``run_iter`` is wrapped: when
  the engine enters SCHEDULING (it is about to start the next tasks, or reverts), the claim
  node is read back from ZooKeeper and must name this conductor *and* belong to this
  client's current session (a session that expired and came back is another session). If
  not, the engine is suspended before the scheduler runs, so the round schedules nothing.
* **The flow record.** The engine persists through :class:`FencedBackend`: once its fence
  is tripped its state changes stay in memory and never reach the shared database, where
  the new owner writes the same flow.
* **At the act.** Tasks that create or destroy the import/export objects get the fence as a
  live handle (``names.FENCE``) and call :meth:`Fence.verify` right before acting on objects
  named by the flow token: an engine that is not the live owner refuses (:class:`Fenced`)
  instead of destroying what the owner is creating.

What remains possible is described in docs/concurrency.md ("Fencing"): a task that was
already running when the session went finishes its current vCenter call, and an act can
follow a successful check by the time of one ZooKeeper round trip plus the act's own start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import KazooState
from taskflow import states

from vsan_flows import exceptions

LOG = logging.getLogger(__name__)


class Fenced(exceptions.VsanFlowsError):
    """This engine is no longer the flow's owner; it must not act on the flow's objects."""

    def __init__(self, flow: str, reason: str) -> None:
        self.flow = flow
        self.reason = reason
        super().__init__(f"this engine no longer owns flow {flow} ({reason}); it stopped "
                         "without undoing anything, the conductor that holds the job now "
                         "runs the flow")


class Unfenced:
    """The fence of a flow that runs in its caller's process (no jobboard): always owner.

    A local run is protected from a second local runner by the per-flow lock of the runner,
    not by a jobboard claim.
    """

    tripped: str | None = None

    def verify(self) -> None:
        return None


UNFENCED = Unfenced()


class Fence:
    """Whether one engine may still act for its job's flow.

    ``check_claim`` returns None while the claim is this engine's, else why not; it is the
    only call that reaches ZooKeeper. Once tripped a fence stays tripped: an engine that lost
    its claim never gets it back (its conductor may claim the job again, with a new engine).
    """

    def __init__(self, flow: str, check_claim) -> None:
        self.flow = flow
        self._check_claim = check_claim
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._engine = None
        self.checks = 0  # claim reads done, for the figures in docs/concurrency.md

    @property
    def tripped(self) -> str | None:
        return self._reason

    def trip(self, reason: str) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            engine = self._engine
        LOG.warning("Fenced: flow %s stops before its next task (%s)", self.flow, reason)
        if engine is not None:
            # Asked from another thread: the caller may be kazoo's connection thread (which
            # must not block) or a task of this very engine (which may hold the storage
            # lock the suspension needs). The scheduling check suspends it anyway.
            threading.Thread(target=_suspend, args=(engine, self.flow), name="fence-suspend",
                             daemon=True).start()

    def verify(self) -> None:
        """Raise :class:`Fenced` unless the claim is (still) this engine's; reads ZooKeeper."""
        if self._reason is None:
            self.checks += 1
            try:
                reason = self._check_claim()
            except Exception as exc:  # noqa: BLE001 - any doubt about the claim is a "no"
                reason = f"the claim could not be read: {type(exc).__name__}: {exc}"
            if reason is not None:
                self.trip(reason)
        if self._reason is not None:
            raise Fenced(self.flow, self._reason)

    def guard(self, engine) -> None:
        """Verify the claim whenever ``engine`` is about to schedule; suspend it if lost.

        TaskFlow has no pre-schedule hook; its engines are state machines that yield each
        state from ``run_iter`` *before* running that state's reaction, so a check made when
        SCHEDULING is yielded runs before any task of the round starts, in the engine's own
        thread, and a suspension made there makes the round schedule nothing. Listeners
        cannot veto: TaskFlow logs and ignores their exceptions, and by the time a task's
        RUNNING notification is sent it has been submitted to run.
        """
        with self._lock:
            self._engine = engine
        run_iter = engine.run_iter

        def fenced_run_iter(timeout=None) -> Iterator[str]:
            for state in run_iter(timeout=timeout):
                if state == states.SCHEDULING:
                    with contextlib.suppress(Fenced):
                        self.verify()
                    if self._reason is not None:
                        engine.suspend()
                yield state

        engine.run_iter = fenced_run_iter


class FencedBackend:
    """A persistence backend as one engine sees it: no writes once its fence is tripped.

    TaskFlow's storage saves every atom and flow change with ``update_atom_details`` /
    ``update_flow_details`` and copies back what they return into its in-memory details; a
    fenced connection returns the change itself, so the engine's memory stays consistent
    (it can still wind down) while the database keeps the new owner's writes only.
    """

    def __init__(self, backend, fence) -> None:
        self._backend = backend
        self._fence = fence

    def get_connection(self):
        return _FencedConnection(self._backend.get_connection(), self._fence)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


class _FencedConnection:
    def __init__(self, conn, fence) -> None:
        self._conn = conn
        self._fence = fence

    def update_flow_details(self, flow_detail, *args, **kwargs):
        if self._fence.tripped:
            return flow_detail
        return self._conn.update_flow_details(flow_detail, *args, **kwargs)

    def update_atom_details(self, atom_detail, *args, **kwargs):
        if self._fence.tripped:
            return atom_detail
        return self._conn.update_atom_details(atom_detail, *args, **kwargs)

    def close(self) -> None:
        self._conn.close()

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def _suspend(engine, flow: str) -> None:
    try:
        engine.suspend()
    except Exception:  # noqa: BLE001 - the SCHEDULING check suspends it anyway
        LOG.warning("could not ask the engine of flow %s to suspend; it stops at its next "
                    "scheduling check", flow, exc_info=True)


class SessionWatch:
    """Trips the fences of a conductor's running engines when its ZooKeeper session goes.

    kazoo calls listeners in its connection thread, which must not block: tripping a fence
    only records why and hands the engine's suspension to a thread of its own.
    """

    def __init__(self, client, name: str) -> None:
        self._client = client
        self._name = name
        self._fences: set[Fence] = set()
        self._lock = threading.Lock()
        client.add_listener(self._listener)

    def close(self) -> None:
        self._client.remove_listener(self._listener)

    def fence(self, job, flow: str) -> Fence:
        """A fence for running ``job``'s flow here, tripped when the session goes."""
        client, name, lock_path = self._client, self._name, job.lock_path
        session = client.client_id[0] if client.client_id else None

        def check_claim() -> str | None:
            # What TaskFlow's find_owner reads (sync, then get), plus the node's session:
            # our name on a node of an older session means the claim was lost and remade.
            client.sync(lock_path)
            try:
                data, stat = client.get(lock_path)
            except NoNodeError:
                return "the job is no longer claimed"
            owner = _owner_of(data)
            if owner != name:
                return f"the job is claimed by {owner!r} now"
            if session is not None and stat.ephemeralOwner != session:
                return "the claim belongs to an expired ZooKeeper session"
            return None

        fence = Fence(flow, check_claim)
        state = self._client.state
        if state != KazooState.CONNECTED:
            fence.trip(f"the ZooKeeper session is {state}")
        with self._lock:
            self._fences.add(fence)
        return fence

    def forget(self, fence: Fence) -> None:
        with self._lock:
            self._fences.discard(fence)

    def _listener(self, state) -> None:
        if state == KazooState.CONNECTED:
            return
        with self._lock:
            fences = list(self._fences)
        if not fences:
            return
        reason = ("the ZooKeeper session is suspended (connection lost)"
                  if state == KazooState.SUSPENDED else "the ZooKeeper session was lost")
        for fence in fences:
            fence.trip(reason)


def _owner_of(raw: bytes) -> str | None:
    try:
        return json.loads(raw.decode()).get("owner")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
