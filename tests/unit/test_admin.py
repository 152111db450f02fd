"""The admin's state changes (runtime.admin): guards, take-over, abandon and un-abandon."""

from __future__ import annotations

import contextlib
import datetime as dt
from types import SimpleNamespace

import pytest
from taskflow import states

from tests.unit.test_inspect import run_flow, sqlite_backend  # noqa: F401 - fixture
from vsan_flows import exceptions
from vsan_flows.runtime import admin, inspect, persistence, runner


def _flow(state: str, host: str | None = None, abandoned: bool = False):
    book = SimpleNamespace(meta={"host": host or runner.host_name()})
    fd = SimpleNamespace(uuid="f-1", state=state,
                         meta={"abandoned": {"at": "then", "by": "me"}} if abandoned else {})
    return book, fd


def test_guard_refuses_another_hosts_flow():
    book, fd = _flow(states.SUSPENDED, host="compute-07")
    with pytest.raises(exceptions.FlowError, match="belongs to host compute-07.*--take-over"):
        admin.check_may_act(book, fd, "resume", force=True)
    admin.check_may_act(book, fd, "resume", take_over="compute-07")
    with pytest.raises(exceptions.FlowError, match="belongs to host compute-07"):
        admin.check_may_act(book, fd, "resume", take_over="compute-08")


def test_guard_take_over_of_own_flow_is_refused():
    with pytest.raises(exceptions.FlowError, match="already belongs to this host"):
        admin.check_may_act(*_flow(states.SUSPENDED), "resume", take_over="compute-07")


def test_guard_running_on_this_host_needs_force():
    book, fd = _flow(states.RUNNING)
    with pytest.raises(exceptions.FlowError, match="may be running right now.*--force"):
        admin.check_may_act(book, fd, "revert")
    admin.check_may_act(book, fd, "revert", force=True)
    admin.check_may_act(*_flow(states.SUSPENDED), "revert")


def test_guard_abandoned_needs_force():
    book, fd = _flow(states.FAILURE, abandoned=True)
    with pytest.raises(exceptions.FlowError, match="abandoned"):
        admin.check_may_act(book, fd, "revert")
    admin.check_may_act(book, fd, "revert", force=True)


@pytest.mark.parametrize(("check", "state", "says"), [
    (admin.check_resumable, states.SUCCESS, "nothing to resume"),
    (admin.check_resumable, states.FAILURE, "flows revert"),
    (admin.check_revertable, states.REVERTED, "nothing to undo"),
    (admin.check_revertable, states.SUCCESS, "belongs to the instance/image"),
    (admin.check_abandonable, states.REVERTED, "flows purge"),
])
def test_state_checks_refuse_with_the_fix(check, state, says):
    with pytest.raises(exceptions.FlowError, match=says):
        check(_flow(state)[1])


def test_abandon_then_unabandon_round_trip(sqlite_backend):  # noqa: F811 - fixture
    flow_id = run_flow(sqlite_backend, run=False)
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    fd.state = states.SUSPENDED  # as a stopped conductor leaves it
    assert admin.abandon(sqlite_backend, fd, by="ops@here", reason="disk gone") == \
        states.SUSPENDED
    _book, stored = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert stored.state == states.FAILURE and admin.is_abandoned(stored)
    record = stored.meta["abandoned"]
    assert record["by"] == "ops@here" and record["reason"] == "disk gone"
    assert dt.datetime.fromisoformat(record["at"]).tzinfo is not None
    # terminal for the restart path
    assert flow_id not in {fd.uuid for _b, fd in runner.unfinished(sqlite_backend)}
    with pytest.raises(exceptions.FlowError, match="already abandoned"):
        admin.check_abandonable(stored)

    admin.unabandon(sqlite_backend, stored)
    _book, back = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert back.state == states.SUSPENDED and not admin.is_abandoned(back)
    assert flow_id in {fd.uuid for _b, fd in runner.unfinished(sqlite_backend)}
    assert back.meta["abandoned_earlier"]["reason"] == "disk gone"


def test_take_over_makes_this_host_the_owner(sqlite_backend):  # noqa: F811 - fixture
    flow_id = run_flow(sqlite_backend, run=False, host="compute-07")
    book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    fd.state = states.SUSPENDED
    with contextlib.closing(sqlite_backend.get_connection()) as conn:
        conn.update_flow_details(fd)
    assert flow_id not in {f.uuid for _b, f in runner.unfinished(sqlite_backend)}
    admin.take_over(sqlite_backend, book, "compute-07")
    book, _fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert book.meta["host"] == runner.host_name()
    assert book.meta["taken_over_from"] == "compute-07"
    assert flow_id in {f.uuid for _b, f in runner.unfinished(sqlite_backend)}


def test_abandoned_means_failure_with_the_record(sqlite_backend):  # noqa: F811 - fixture
    flow_id = run_flow(sqlite_backend, run=False)
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    admin.abandon(sqlite_backend, fd, by="admin")
    (row,) = inspect.list_flows(sqlite_backend, state=["abandoned"])
    assert row["abandoned"] and admin.is_abandoned(fd)
    assert inspect.purge_candidates(sqlite_backend, dt.timedelta(0)) == []
    assert inspect.purge_candidates(sqlite_backend, dt.timedelta(0),
                                    include_abandoned=True)[0]["id"] == flow_id
    runner.revert(sqlite_backend, fd, {})  # revert --force
    (row,) = inspect.list_flows(sqlite_backend)
    assert row["state"] == states.REVERTED and not row["abandoned"]
    assert inspect.show_flow(sqlite_backend, flow_id)["abandoned_details"]["by"] == "admin"
