"""Fencing on real TaskFlow engines: a lost claim stops the engine before its next task,
nothing is reverted, and nothing more reaches the flow record.

The claim check is a function here (the ZooKeeper half runs in
tests/functional/test_partition.py); the engines, storage and sqlite backend are TaskFlow's.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from taskflow import engines, states, task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends, models

from vsan_flows.runtime import fencing


class Step(task.Task):
    def __init__(self, name, log, on_execute=None):
        super().__init__(name=name)
        self._log = log
        self._on_execute = on_execute

    def execute(self):
        self._log.append(("execute", self.name))
        if self._on_execute:
            self._on_execute()

    def revert(self, **kwargs):
        self._log.append(("revert", self.name))


@pytest.fixture(params=["serial", "parallel"])
def engine_kind(request):
    return request.param


def _saved_flow(tmp_path, flow_uuid: str):
    """A sqlite backend holding an empty logbook and flow detail, as a posted job has."""
    backend = backends.fetch({"connection": f"sqlite:///{tmp_path}/flows.sqlite"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    book = models.LogBook("b")
    fd = models.FlowDetail("f", uuid=flow_uuid)
    book.add(fd)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return backend, book, fd


def _run(tmp_path, engine_kind, claim, steps=3, lose_after=None):
    """Run a linear flow of ``steps`` tasks; the claim is lost after task ``lose_after``."""
    log: list = []
    lost = {"now": False}

    def lose():
        lost["now"] = True

    flow = linear_flow.Flow("f")
    for i in range(steps):
        hook = lose if i == lose_after else None
        flow.add(Step(f"t{i}", log, hook))
    backend, book, fd = _saved_flow(tmp_path, "flow-1")
    fence = fencing.Fence("flow-1", lambda: claim(lost["now"]))
    engine = engines.load(flow, flow_detail=fd, book=book, engine=engine_kind,
                          backend=fencing.FencedBackend(backend, fence))
    fence.guard(engine)
    error = None
    try:
        engine.run()
    except Exception as exc:  # noqa: BLE001 - asserted by the tests
        error = exc
    with contextlib.closing(backend.get_connection()) as conn:
        stored = conn.get_flow_details("flow-1", lazy=False)
    backend.close()
    return log, engine, fence, stored, error


def _claim(lost: bool):
    return "the job is claimed by 'conductor-b' now" if lost else None


def test_a_lost_claim_stops_the_engine_before_its_next_task(tmp_path, engine_kind):
    log, engine, fence, stored, error = _run(tmp_path, engine_kind, _claim, lose_after=0)
    assert error is None
    assert log == [("execute", "t0")], "a task ran after the claim was lost, or a revert ran"
    assert engine.storage.get_flow_state() == states.SUSPENDED
    assert "conductor-b" in fence.tripped
    # The record keeps what was true while the claim was ours: t0 done, nothing after.
    assert stored.state == states.RUNNING
    assert {ad.name: ad.state for ad in stored} == {"t0": states.SUCCESS,
                                                     "t1": states.PENDING,
                                                     "t2": states.PENDING}


def test_a_fenced_engine_neither_reverts_nor_records_the_failure(tmp_path, engine_kind):
    """The running task fails because the new owner replaced its objects (issue 11): the
    old engine must not revert (its undo would destroy the owner's objects, same names)."""
    fence_box: list = []

    def lose_then_fail():
        # The session listener trips the fence when the session goes; then the new owner
        # replaces the import and this engine's stream fails.
        fence_box[0].trip("the ZooKeeper session was lost")
        raise RuntimeError("stream cut by the new owner")

    log: list = []
    flow = linear_flow.Flow("f").add(Step("t0", log), Step("t1", log, lose_then_fail),
                                      Step("t2", log))
    backend, book, fd = _saved_flow(tmp_path, "flow-2")
    fence = fencing.Fence("flow-2", lambda: None)
    fence_box.append(fence)
    engine = engines.load(flow, flow_detail=fd, book=book, engine=engine_kind,
                          backend=fencing.FencedBackend(backend, fence))
    fence.guard(engine)
    with contextlib.suppress(Exception):
        engine.run()
    with contextlib.closing(backend.get_connection()) as conn:
        stored = conn.get_flow_details("flow-2", lazy=False)
    backend.close()
    assert [e for e in log if e[0] == "revert"] == []
    assert ("execute", "t2") not in log
    assert stored.state == states.RUNNING
    assert {ad.name: ad.state for ad in stored} == {"t0": states.SUCCESS,
                                                     "t1": states.RUNNING,
                                                     "t2": states.PENDING}


def test_an_unreadable_claim_counts_as_lost(tmp_path, engine_kind):
    def claim(lost):
        if lost:
            raise ConnectionError("ZooKeeper did not answer")
        return None

    log, engine, fence, _stored, _ = _run(tmp_path, engine_kind, claim, lose_after=1)
    assert log == [("execute", "t0"), ("execute", "t1")]
    assert "could not be read" in fence.tripped
    with pytest.raises(fencing.Fenced) as caught:
        fence.verify()
    assert "no longer owns flow flow-1" in str(caught.value)


def test_an_engine_whose_claim_holds_runs_to_the_end(tmp_path, engine_kind):
    log, engine, fence, stored, error = _run(tmp_path, engine_kind, _claim)
    assert error is None and fence.tripped is None
    assert log == [("execute", f"t{i}") for i in range(3)]
    assert stored.state == states.SUCCESS
    assert fence.checks >= 3  # one read of the claim per scheduling round at least


def test_a_session_trip_from_another_thread_suspends_the_running_engine(tmp_path,
                                                                        engine_kind):
    fence_box: list = []

    def trip_from_kazoo_thread():
        # As kazoo's connection thread does, while this task still runs.
        t = threading.Thread(target=fence_box[0].trip, args=("the ZooKeeper session is "
                                                             "suspended",))
        t.start()
        t.join(30)
        assert not t.is_alive(), "tripping a fence blocked its caller"

    log: list = []
    flow = linear_flow.Flow("f").add(Step("t0", log, trip_from_kazoo_thread),
                                      Step("t1", log))
    fence = fencing.Fence("flow-3", lambda: None)
    fence_box.append(fence)
    engine = engines.load(flow, engine=engine_kind)
    fence.guard(engine)
    engine.run()
    assert log == [("execute", "t0")]
    assert engine.storage.get_flow_state() == states.SUSPENDED
