"""Unit tests of the flow views (runtime/inspect.py) and the CLI's guard rails (cmd/flows.py).

Flows here are small hand-made TaskFlow flows run by real engines on sqlite files (the
default backend, which has row timestamps) and on memory:// (which has none), so what is
checked is what TaskFlow really persists: retry histories, failures restored without their
exception object, states after revert.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import subprocess
import zlib

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import retry, states, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models

from vsan_flows import exceptions
from vsan_flows.cmd import flows as cli_flows
from vsan_flows.runtime import graph, inspect, persistence, runner

FACTORY = "tests.unit.test_inspect.make_demo_flow"
SECRET = "hunter2-not-for-eyes"
LEASE_URL = "https://esx-01.example/nfc/52d3a1f0-9be1-4c0e/disk-0.vmdk"

# Behaviour knobs for the hand-made tasks (reset per test).
KNOBS: dict[str, int] = {}


class Prepare(task.Task):
    """Returns facts plus things that must never be printed (a password, a lease URL)."""

    default_provides = "prepared"

    def execute(self) -> dict:
        return {"vm": "vm-1", "password": SECRET, "url": LEASE_URL,
                "cookie": "vmware_soap_session=abc123def"}


class Flaky(task.Task):
    """Fails KNOBS['flaky'] times (a cut transfer), then succeeds."""

    def execute(self, prepared: dict) -> int:
        if KNOBS.get("flaky", 0) > 0:
            KNOBS["flaky"] -= 1
            raise exceptions.TransferError("the transfer was cut after 1048576 bytes")
        return 42


class Finish(task.Task):
    def execute(self) -> None:
        return None


class Sticky(task.Task):
    """Its revert fails while KNOBS['sticky'] > 0 (a cleanup vCenter refused)."""

    def execute(self) -> str:
        return "made-something"

    def revert(self, *args, **kwargs) -> None:
        KNOBS["sticky_reverts"] = KNOBS.get("sticky_reverts", 0) + 1
        if KNOBS.get("sticky", 0) > 0:
            KNOBS["sticky"] -= 1
            raise exceptions.VSphereError("vCenter reported SystemError: cannot destroy vm-9")


class Boom(task.Task):
    """Fails when KNOBS['boom'] is set."""

    def execute(self) -> None:
        if KNOBS.get("boom"):
            raise exceptions.VSphereError("vCenter reported SystemError: injected into "
                                          "CreateVM_Task")


def make_demo_flow(retries: int = 2) -> linear_flow.Flow:
    """The factory the tests save with each flow (importable by name, like ours)."""
    copy = linear_flow.Flow("copy", retry=retry.Times(attempts=retries + 1, name="copy-retry",
                                                      revert_all=True))
    copy.add(Flaky(), Finish())
    flow = linear_flow.Flow("demo")
    flow.add(Prepare(), copy, Sticky(), Boom())
    return flow


@pytest.fixture(autouse=True)
def _knobs():
    KNOBS.clear()
    yield
    KNOBS.clear()


@pytest.fixture(params=["sqlite", "memory"])
def backend(request, tmp_path):
    url = f"sqlite:///{tmp_path}/flows.sqlite" if request.param == "sqlite" else "memory://"
    be = persistence.backend_from_url(url)
    persistence.upgrade_schema(be, url)
    yield be
    be.close()


@pytest.fixture
def sqlite_backend(tmp_path):
    url = f"sqlite:///{tmp_path}/flows.sqlite"
    be = persistence.backend_from_url(url)
    persistence.upgrade_schema(be, url)
    yield be
    be.close()


def run_flow(backend, *, instance="inst-1", host=None, run=True, **knobs) -> str:
    """Run (or only save, run=False) one demo flow the way our runner does; its uuid."""
    KNOBS.update(knobs)
    book = models.LogBook(f"spawn {instance}")
    book.meta = {"host": host or runner.host_name(), "operation": "spawn",
                 "instance": instance, "image": "img-" + instance}
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    eng = taskflow.engines.load_from_factory(
        FACTORY, factory_kwargs={"retries": 2}, store={"instance_name": instance},
        book=book, backend=backend)
    if run:
        with contextlib.suppress(Exception):
            eng.run()
    return eng.storage.flow_uuid


def atoms_by_short_name(report: dict) -> dict:
    return {a["short_name"]: a for a in report["atoms"]}


# --------------------------------------------------------------------------- list


def test_list_rows_have_the_fixed_keys_and_iso_times(backend):
    ok = run_flow(backend, instance="inst-ok", flaky=1)
    bad = run_flow(backend, instance="inst-bad", boom=1)
    rows = inspect.list_flows(backend)
    assert [r["id"] for r in rows] == [ok, bad]  # oldest first
    for row in rows:
        assert tuple(row) == inspect.LIST_FIELDS
        json.dumps(row)  # JSON-able as is
        started = dt.datetime.fromisoformat(row["started"])
        assert started.utcoffset() == dt.timedelta(0)
        assert row["host"] == runner.host_name()
    assert [r["state"] for r in rows] == [states.SUCCESS, states.REVERTED]
    assert rows[0]["operation"] == "spawn" and rows[0]["image"] == "img-inst-ok"


def test_sqlite_rows_give_last_change_and_duration(sqlite_backend):
    run_flow(sqlite_backend, flaky=1)
    (row,) = inspect.list_flows(sqlite_backend)
    assert row["last_change"] >= row["started"]
    assert isinstance(row["duration"], float) and row["duration"] >= 0


def test_memory_backend_has_no_row_times_and_says_so():
    be = persistence.backend_from_url("memory://")
    persistence.upgrade_schema(be)
    run_flow(be)
    (row,) = inspect.list_flows(be)
    assert row["started"] is not None
    assert row["last_change"] is None and row["duration"] is None


def test_list_filters(backend):
    run_flow(backend, instance="web-1")
    run_flow(backend, instance="db-1", boom=1)
    names = lambda **kw: [r["instance"] for r in inspect.list_flows(backend, **kw)]  # noqa: E731
    assert names(state=["reverted"]) == ["db-1"]
    assert names(state=["success,reverted"]) == ["web-1", "db-1"]
    assert names(instance="web-*") == ["web-1"]
    assert names(operation="snapshot") == []
    assert names(host="elsewhere") == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    assert names(older_than=dt.timedelta(hours=2), now=later) == ["web-1", "db-1"]
    assert names(older_than=dt.timedelta(hours=2)) == []
    assert names(newer_than=dt.timedelta(hours=2)) == ["web-1", "db-1"]
    assert names(newer_than=dt.timedelta(hours=2), now=later) == []


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900),
                                               ("2h", 7200), ("3d", 259200), ("1w", 604800),
                                               ("1.5h", 5400), (" 7D ", 604800)])
def test_parse_age(text, seconds):
    assert inspect.parse_age(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "2y", "-1d", "two days"])
def test_parse_age_rejects_nonsense(text):
    with pytest.raises(ValueError, match="not an age"):
        inspect.parse_age(text)


# --------------------------------------------------------------------------- show


def test_show_success_with_a_retried_subflow(backend):
    flow_id = run_flow(backend, flaky=1)
    report = inspect.show_flow(backend, flow_id)
    json.dumps(report)
    assert report["state"] == states.SUCCESS
    assert report["factory"] == {"name": FACTORY, "args": [], "kwargs": {"retries": 2}}
    assert report["inputs"] == {"instance_name": "inst-1"}
    # execution order, injector hidden, retry before the atoms it re-runs
    assert [a["short_name"] for a in report["atoms"]] == [
        "Prepare", "copy-retry", "Flaky", "Finish", "Sticky", "Boom"]
    atoms = atoms_by_short_name(report)
    assert atoms["copy-retry"]["kind"] == "retry" and atoms["copy-retry"]["attempts"] == 2
    assert atoms["Flaky"]["retried_by"] == "copy-retry" and atoms["Flaky"]["attempts"] is None
    assert atoms["Prepare"]["retried_by"] is None
    assert atoms["Flaky"]["result"] == "42"
    assert atoms["Flaky"]["progress"] == 1.0
    # no invented times
    assert all(a["started"] is None and a["finished"] is None for a in report["atoms"])
    (history,) = report["retries"]
    assert history["name"] == "copy-retry" and history["subflow"] == "copy"
    first, second = history["attempts"]
    assert first["attempt"] == 1 and second == {"attempt": 2, "failures": []}
    (failure,) = first["failures"]
    assert failure["atom"] == "Flaky"
    assert failure["type"] == "vsan_flows.exceptions.TransferError"
    assert "cut after 1048576 bytes" in failure["message"]
    assert "in execute" in failure["traceback"]


def test_show_failed_flow_names_the_atom_that_raised(backend):
    flow_id = run_flow(backend, boom=1)
    report = inspect.show_flow(backend, flow_id)
    assert report["state"] == states.REVERTED
    atoms = atoms_by_short_name(report)
    boom = atoms["Boom"]
    assert boom["state"] == states.REVERTED and boom["intention"] == states.REVERT
    assert boom["failure"]["type"] == "vsan_flows.exceptions.VSphereError"
    assert boom["failure"]["types"][-1] == "Exception"
    assert "injected into CreateVM_Task" in boom["failure"]["message"]
    assert "raise exceptions.VSphereError" in boom["failure"]["traceback"]
    assert atoms["Prepare"]["failure"] is None
    (history,) = report["retries"]
    assert history["attempts"] == [] and "clears" in history["note"]


def test_show_revert_failure(backend):
    flow_id = run_flow(backend, boom=1, sticky=1)
    report = inspect.show_flow(backend, flow_id)
    assert report["state"] == states.FAILURE
    sticky = atoms_by_short_name(report)["Sticky"]
    assert sticky["state"] == states.REVERT_FAILURE
    assert "cannot destroy vm-9" in sticky["revert_failure"]["message"]


def test_show_never_prints_secrets(backend):
    flow_id = run_flow(backend)
    text = json.dumps(inspect.show_flow(backend, flow_id))
    assert SECRET not in text
    assert "/nfc/52d3" not in text and "/nfc/***" in text
    assert "vmware_soap_session" not in text and "abc123def" not in text


def test_show_unknown_flow(backend):
    with pytest.raises(exceptions.FlowError, match="no such flow"):
        inspect.show_flow(backend, "0000-nope")


def test_show_without_the_factory_still_lists_stored_atoms(sqlite_backend):
    flow_id = run_flow(sqlite_backend)
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    fd.meta = {"factory": {"name": "tests.unit.no_such_module.gone", "kwargs": {}}}
    with contextlib.closing(sqlite_backend.get_connection()) as conn:
        conn.update_flow_details(fd)
    report = inspect.show_flow(sqlite_backend, flow_id)
    assert {a["short_name"] for a in report["atoms"]} == {
        "Prepare", "copy-retry", "Flaky", "Finish", "Sticky", "Boom"}
    with pytest.raises(exceptions.FlowError, match="cannot rebuild"):
        graph.flow_dot(sqlite_backend, flow_id)


@pytest.mark.parametrize("value", [
    {"password": "x" * 10, "lease": "httpnfclease-1"},
    {"nested": [{"Session": "v"}], "auth_token": "t"},
])
def test_masked_keys(value):
    text = inspect.summarize(value)
    assert "x" * 10 not in text and "'v'" not in text and "'t'" not in text
    assert "***" in text


def test_summarize_truncates():
    assert len(inspect.summarize("a" * 500, limit=50)) == 50


# --------------------------------------------------------------------------- graph


def _png_pixels(data: bytes) -> set[tuple[int, int, int]]:
    """The RGB colours of a non-interlaced 8-bit RGB/RGBA/palette PNG (what dot writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, palette = 8, b"", b""
    width = height = ctype = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8] == 8 and body[12] == 0, "8-bit, non-interlaced"
            ctype = body[9]
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat += body
    bpp = {2: 3, 6: 4, 3: 1}[ctype]
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours, i = bytearray(stride), set(), 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        for x in range(0, stride, bpp):
            if ctype == 3:
                k = line[x] * 3
                colours.add(tuple(palette[k:k + 3]))
            else:
                colours.add(tuple(line[x:x + 3]))
        prev = line
    return colours


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_dot_text_colours_atoms_by_state(backend):
    flow_id = run_flow(backend, boom=1, sticky=1)
    dot = graph.flow_dot(backend, flow_id)
    line = {m.group(1): m.group(0) for m in re.finditer(r'^\s*"([^"]+)" \[.*$', dot, re.M)}
    sticky = line["tests.unit.test_inspect.Sticky"]
    assert graph.STATE_COLOURS[states.REVERT_FAILURE] in sticky
    boom = line["tests.unit.test_inspect.Boom"]
    assert graph.STATE_COLOURS[states.REVERTED] in boom
    assert graph.FAILED_OUTLINE in boom and "raised VSphereError" in boom
    assert "shape=hexagon" in line["copy-retry"]
    assert "subgraph cluster_" in dot and "re-run as a whole by copy-retry" in dot
    assert '"copy-retry" -> "tests.unit.test_inspect.Flaky" [style=dashed' in dot
    for state in (states.SUCCESS, states.FAILURE, states.REVERTED, states.RUNNING,
                  states.PENDING, states.IGNORE):  # the legend
        assert state in dot
    assert SECRET not in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_png_shows_the_failed_atoms_colour(backend, tmp_path):
    flow_id = run_flow(backend, boom=1, sticky=1)
    dot = graph.flow_dot(backend, flow_id)
    out = tmp_path / "flow.png"
    assert graph.render(dot, str(out)) == "png"
    colours = _png_pixels(out.read_bytes())
    assert _rgb(graph.STATE_COLOURS[states.REVERT_FAILURE]) in colours
    assert _rgb(graph.FAILED_OUTLINE) in colours
    assert not list(tmp_path.glob(".vsan-flows-graph-*"))  # no temporary left behind
    svg = tmp_path / "flow.svg"
    graph.render(dot, str(svg))
    assert graph.STATE_COLOURS[states.REVERT_FAILURE] in svg.read_text()


def test_render_dot_and_bad_names(backend, tmp_path):
    flow_id = run_flow(backend)
    dot = graph.flow_dot(backend, flow_id)
    assert graph.render(dot, str(tmp_path / "f.dot")) == "dot"
    assert (tmp_path / "f.dot").read_text() == dot
    with pytest.raises(ValueError, match="use a .png"):
        graph.render(dot, str(tmp_path / "f.jpeg"))
    if shutil.which("dot"):
        with pytest.raises(RuntimeError, match="Graphviz dot failed"):
            graph.render("digraph {", str(tmp_path / "broken.png"))
        assert not (tmp_path / "broken.png").exists()
        proc = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True)
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- purge


def _backdate(backend, flow_id: str, days: int) -> None:
    from taskflow.persistence.backends.sqlalchemy import tables

    t = tables.fetch(sa.MetaData())
    then = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)
    book, _fd = persistence.find_flow_detail(backend, flow_id)
    with backend.engine.begin() as conn:
        conn.execute(t.logbooks.update().where(t.logbooks.c.uuid == book.uuid)
                     .values(created_at=then))
        conn.execute(t.flowdetails.update().where(t.flowdetails.c.uuid == flow_id)
                     .values(updated_at=then))
        conn.execute(t.atomdetails.update().where(t.atomdetails.c.parent_uuid == flow_id)
                     .values(updated_at=then))


def test_purge_candidates_are_old_finished_flows(sqlite_backend):
    old_ok = run_flow(sqlite_backend, instance="old-ok")
    old_bad = run_flow(sqlite_backend, instance="old-bad", boom=1)
    old_failed = run_flow(sqlite_backend, instance="old-failed", boom=1, sticky=1)
    old_pending = run_flow(sqlite_backend, instance="old-pending", run=False)
    run_flow(sqlite_backend, instance="new-ok")
    for flow_id in (old_ok, old_bad, old_failed, old_pending):
        _backdate(sqlite_backend, flow_id, days=8)
    week = dt.timedelta(days=7)
    found = [r["instance"] for r in inspect.purge_candidates(sqlite_backend, week)]
    assert found == ["old-ok", "old-bad"]  # never FAILURE (needs an admin) or unfinished


def test_revert_retries_a_failed_undo(sqlite_backend):
    flow_id = run_flow(sqlite_backend, boom=1, sticky=1)
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert fd.state == states.FAILURE and KNOBS["sticky_reverts"] == 1
    runner.revert(sqlite_backend, fd, {})
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert fd.state == states.REVERTED
    assert KNOBS["sticky_reverts"] == 2
    assert {ad.state for ad in fd if ad.name != inspect.INJECTOR} <= {
        states.REVERTED, states.PENDING, states.IGNORE}
    # the original failure stays on record
    boom = atoms_by_short_name(inspect.show_flow(sqlite_backend, flow_id))["Boom"]
    assert "injected into CreateVM_Task" in boom["failure"]["message"]


def test_revert_a_pending_flow(sqlite_backend):
    flow_id = run_flow(sqlite_backend, run=False)
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    runner.revert(sqlite_backend, fd, {})
    _book, fd = persistence.find_flow_detail(sqlite_backend, flow_id)
    assert fd.state == states.REVERTED


# --------------------------------------------------------------------------- CLI


def _args(**kw) -> argparse.Namespace:
    base = {"force": False, "take_over": None, "yes": False}
    return argparse.Namespace(**{**base, **kw})


def test_confirmation_refuses_without_a_terminal(monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(exceptions.VsanFlowsError, match="stdin is not a terminal.*--yes"):
        cli_flows._confirm(_args(), "abandon flow f-1", "Abandon?")
    assert cli_flows._confirm(_args(yes=True), "abandon flow f-1", "Abandon?")
