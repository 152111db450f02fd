"""Unit tests for the persistence backend helpers: URL handling, errors, sqlite files.

Everything here runs on sqlite files or memory://; the database servers are exercised in
tests/functional/test_persistence_backends.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sqlite3

import pytest
from oslo_config import cfg
from taskflow import task
from taskflow.persistence import models

from vsan_flows import conf as vconf
from vsan_flows import redaction
from vsan_flows.exceptions import ConfigError, FlowError
from vsan_flows.runtime import persistence


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:secret@host:5432/db?sslmode=require",
         "postgresql://user:***@host:5432/db?sslmode=require"),
        ("mysql+pymysql://root:pa%40ss%2Fw%3Ard@127.0.0.1:3306/test",
         "mysql+pymysql://root:***@127.0.0.1:3306/test"),
        # unencoded specials: still masked (the last @ ends the password)
        ("mysql://u:p@ss/w:rd@db.example/x", "mysql://u:***@db.example/x"),
        ("postgresql://u:@host/db", "postgresql://u:***@host/db"),
        ("postgresql://host/db?user=u&password=hunter22", "postgresql://host/db?user=u&password=***"),
        ("postgresql://u:s@h/db?PASSWORD=x&a=b", "postgresql://u:***@h/db?PASSWORD=***&a=b"),
        ("user:secret@host/db", "user:***@host/db"),
        # nothing to hide
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:////var/lib/vsan-flows/flows.sqlite", "sqlite:////var/lib/vsan-flows/flows.sqlite"),
        ("sqlite:////srv/a@b:c/flows.sqlite", "sqlite:////srv/a@b:c/flows.sqlite"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url, masked):
    assert redaction.mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "kind", "says"),
    [
        ("ftp://u:topsecret@h/x", "scheme", "unsupported scheme 'ftp'"),
        ("zookeeper://h:2181", "scheme", "unsupported scheme"),
        ("not a url", "malformed", "not a URL"),
        ("", "malformed", "empty"),
        ("postgresql://u:topsecret@h:abc/db", "malformed", "cannot be parsed"),
        ("postgresql://u:topsecret@h", "malformed", "no database name"),
        ("sqlite://", "malformed", "in-memory"),
        ("sqlite:///:memory:", "malformed", "in-memory"),
        ("postgresql+pg8000://u:topsecret@h/db", "driver", "'pg8000' is not installed"),
        ("mysql+mysqldb://u:topsecret@h/db", "driver", "'MySQLdb' is not installed"),
    ],
)
def test_bad_urls_give_one_clear_error(url, kind, says):
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.upgrade_schema(persistence.backend_from_url(url), url)
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.kind == kind
    assert err.option == "[vsan_flows] persistence_connection"
    assert says in str(err)
    assert "topsecret" not in str(err)
    # no SQLAlchemy traceback attached
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_error_survives_pickling_without_the_password():
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.backend_from_url("ftp://u:topsecret@h/x")
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.kind, str(again)) == ("scheme", str(info.value))
    assert "topsecret" not in pickle.dumps(info.value).decode("latin-1")


@pytest.mark.parametrize(
    ("scheme", "driver"),
    [("postgresql", "postgresql+psycopg2"), ("postgres", "postgresql+psycopg2"),
     ("mysql", "mysql+pymysql"), ("mariadb", "mysql+pymysql"),
     ("mysql+pymysql", "mysql+pymysql")],
)
def test_bare_schemes_use_the_drivers_we_ship(scheme, driver):
    backend = persistence.backend_from_url(f"{scheme}://u:p@127.0.0.1:1/db")
    try:
        assert backend.engine.url.drivername == driver
        assert backend.engine.url.password == "p"
    finally:
        backend.close()


def test_sqlite_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "flows.sqlite"
    backend = persistence.backend_from_url(f"sqlite:///{path}")
    try:
        persistence.upgrade_schema(backend)
    finally:
        backend.close()
    assert path.is_file()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    tables = {r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master")}
    assert {"logbooks", "flowdetails", "atomdetails"} <= tables


def test_sqlite_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.backend_from_url(f"sqlite:///{blocker}/sub/flows.sqlite")
    assert info.value.kind == "path"
    assert str(blocker) in str(info.value)


@pytest.mark.parametrize("setting, synchronous", [(None, 1), ("normal", 1), ("full", 2)])
def test_sqlite_file_is_in_wal_mode_with_the_configured_sync(tmp_path, setting, synchronous):
    # NORMAL (1) by default: durable through a process crash; FULL (2) through power loss.
    path = tmp_path / "flows.sqlite"
    kwargs = {} if setting is None else {"sqlite_synchronous": setting}
    backend = persistence.backend_from_url(f"sqlite:///{path}", **kwargs)
    try:
        persistence.upgrade_schema(backend)
        with backend.engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys")
            }
    finally:
        backend.close()
    assert pragmas == {"journal_mode": "wal", "synchronous": synchronous, "foreign_keys": 1}


@pytest.fixture
def conf(tmp_path):
    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows-test", default_config_files=[])
    c.set_override("state_dir", str(tmp_path / "state"), group="vsan_flows")
    return c


def test_open_backend_defaults_to_sqlite_in_state_dir_and_upgrades_twice(conf, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vsan_flows")
    for _ in range(2):  # the second start finds the schema current and changes nothing
        backend = persistence.open_backend(conf)
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(models.LogBook("b"))
            assert len(list(conn.get_logbooks())) >= 1
        backend.close()
    assert (tmp_path / "state" / "flows.sqlite").is_file()
    assert "schema up to date" in caplog.text


def test_open_backend_applies_sqlite_synchronous(conf):
    conf.set_override("sqlite_synchronous", "full", group="vsan_flows")
    backend = persistence.open_backend(conf)
    try:
        with backend.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    finally:
        backend.close()


def test_open_backend_masks_the_password_everywhere(conf, caplog):
    caplog.set_level(logging.DEBUG)
    conf.set_override("persistence_connection", "ftp://u:topsecret@h/x", group="vsan_flows")
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.open_backend(conf)
    assert "ftp://u:***@h/x" in str(info.value)
    assert "topsecret" not in caplog.text


def test_shared_connection_keeps_working_after_close(tmp_path):
    """We rely on TaskFlow's Connection.close() being a no-op; fail loudly if that changes."""
    backend = persistence.backend_from_url(f"sqlite:///{tmp_path}/flows.sqlite")
    persistence.upgrade_schema(backend)
    first = backend.get_connection()
    first.close()
    assert backend.get_connection() is first
    first.save_logbook(models.LogBook("after-close"))
    assert [b.name for b in first.get_logbooks()] == ["after-close"]
    backend.close()


def _book_with_flows(backend, *names):
    book = models.LogBook("book")
    for name in names:
        fd = models.FlowDetail(name, uuid=f"uuid-{name}")
        fd.add(models.TaskDetail(f"{name}-task", uuid=f"atom-{name}"))
        book.add(fd)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return book


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_maintenance_helpers(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/flows.sqlite" if kind == "sqlite" else "memory://"
    backend = persistence.backend_from_url(url)
    persistence.upgrade_schema(backend)
    lonely = _book_with_flows(backend, "lonely")
    shared = _book_with_flows(backend, "a", "b")

    listed = {(book.uuid, fd.uuid) for book, fd in persistence.list_flow_details(backend)}
    assert listed == {(lonely.uuid, "uuid-lonely"), (shared.uuid, "uuid-a"),
                      (shared.uuid, "uuid-b")}

    book, fd = persistence.find_flow_detail(backend, "uuid-a")
    assert (book.uuid, fd.name, [a.name for a in fd]) == (shared.uuid, "a", ["a-task"])
    with pytest.raises(FlowError, match="no such flow"):
        persistence.find_flow_detail(backend, "nope")

    persistence.destroy_flow_detail(backend, "uuid-lonely")  # whole logbook goes
    with contextlib.closing(backend.get_connection()) as conn:
        assert lonely.uuid not in {b.uuid for b in conn.get_logbooks()}
    if kind == "memory":
        with pytest.raises(FlowError, match="shares logbook"):
            persistence.destroy_flow_detail(backend, "uuid-a")
    else:
        persistence.destroy_flow_detail(backend, "uuid-a")  # only this flow and its atoms
        assert [fd.uuid for _, fd in persistence.list_flow_details(backend)] == ["uuid-b"]
        db = sqlite3.connect(tmp_path / "flows.sqlite")
        atoms = {r[0] for r in db.execute("select uuid from atomdetails")}
        flows = {r[0] for r in db.execute("select uuid from flowdetails")}
        assert (atoms, flows) == ({"atom-b"}, {"uuid-b"})  # nothing orphaned
    backend.close()


def test_sqlite_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "flows.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    backend = persistence.backend_from_url(f"sqlite:///{path}")
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.upgrade_schema(backend)
    assert info.value.kind == "path"
    assert f"cannot use the sqlite file {path}" in str(info.value)


def test_sqlite_read_only_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    backend = persistence.backend_from_url(f"sqlite:///{ro}/flows.sqlite")
    with pytest.raises(persistence.PersistenceError) as info:
        persistence.upgrade_schema(backend)
    assert info.value.kind == "path"


# ------------------------------------------------ our saves store what TaskFlow's store

class _Step(task.Task):
    def execute(self, value):
        return value + 1


class _Boom(task.Task):
    def execute(self):
        raise RuntimeError("boom on purpose")

    def revert(self, **kwargs):
        return None


class _FirstAttemptFails(task.Task):
    def execute(self, attempt):
        if attempt == 1:
            raise RuntimeError("first attempt fails on purpose")
        return {"attempt": attempt, "nested": [1, "two", None]}


def _flow(case: str):
    from taskflow import retry
    from taskflow.patterns import linear_flow

    flow = linear_flow.Flow("f")
    flow.add(_Step("one", inject={"value": 1}, provides="a"),
             _Step("two", rebind={"value": "a"}, provides="b"))
    if case == "revert":
        flow.add(_Boom("three"))
    if case == "retry":
        again = linear_flow.Flow("again", retry=retry.Times(3, name="times", provides="attempt"))
        again.add(_FirstAttemptFails("flaky"))
        flow.add(again, _Step("four", rebind={"value": "b"}, provides="c"))
    if case == "resume":
        flow.add(_Step("three", rebind={"value": "b"}, provides="c"),
                 _Step("four", rebind={"value": "c"}, provides="d"))
    return flow


def _run_flow(backend, case: str):
    from taskflow import engines, states

    book = models.LogBook("b", uuid="book-uuid")
    book.meta = {"host": "here", "operation": "spawn"}
    fd = models.FlowDetail("f", uuid="flow-uuid")
    book.add(fd)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    engine = engines.load(_flow(case), flow_detail=fd, book=book, backend=backend,
                          store={"stored": {"x": [1, 2]}})
    if case == "resume":
        # Stop after "two" succeeded, as a crash would (nothing more is saved), then resume
        # on a fresh engine from what is stored: RESUMING, SUSPENDED... over existing atoms.
        seen = []
        engine.atom_notifier.register("*", lambda state, details: seen.append(
            (details["atom_name"], state)))
        for _ in engine.run_iter():
            if ("two", states.SUCCESS) in seen:
                break
        with contextlib.closing(backend.get_connection()) as conn:
            fd = conn.get_flow_details("flow-uuid", lazy=False)
        engine = engines.load(_flow(case), flow_detail=fd, book=book, backend=backend)
    with contextlib.suppress(RuntimeError):
        engine.run()


def _stored(path):
    """Every column of the flow and atom rows but the timestamps (failures parsed)."""
    import json

    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        books = sorted(tuple(r) for r in db.execute("select uuid, name, meta from logbooks"))
        flows = sorted(tuple(r) for r in db.execute(
            "select uuid, parent_uuid, name, state, meta from flowdetails"))
        atoms = []
        for r in db.execute("select * from atomdetails order by name"):
            row = {k: r[k] for k in r.keys() if k not in ("created_at", "updated_at", "uuid")}
            for k in ("failure", "revert_failure", "results", "meta", "version",
                      "revert_results"):
                row[k] = json.loads(row[k]) if row[k] else row[k]
            atoms.append(row)
        return flows, atoms, books
    finally:
        db.close()


@pytest.mark.parametrize("case", ["success", "revert", "retry", "resume"])
def test_our_saves_store_what_taskflow_stores_in_fewer_statements(tmp_path, case):
    """The same flow on TaskFlow's SQL connection and on ours stores the same rows.

    Ours writes an atom without reading it first and a flow-state change without reading or
    rewriting its atoms (persistence._FewerWritesConnection): fewer statements, same rows.
    """
    import sqlalchemy as sa
    from taskflow.persistence.backends import impl_sqlalchemy

    stock_path, ours_path = tmp_path / "stock.sqlite", tmp_path / "ours.sqlite"
    stock = impl_sqlalchemy.SQLAlchemyBackend({"connection": f"sqlite:///{stock_path}"})
    ours = persistence.backend_from_url(f"sqlite:///{ours_path}")
    counts = {}
    for name, backend in (("stock", stock), ("ours", ours)):
        persistence.upgrade_schema(backend)
        count = counts.setdefault(name, {"atom updates": 0, "statements": 0})

        def counting(_c, _cur, statement, *_a, _count=count):
            _count["statements"] += 1
            if statement.lstrip().upper().startswith("UPDATE ATOMDETAILS"):
                _count["atom updates"] += 1

        sa.event.listen(backend.engine, "before_cursor_execute", counting)
        _run_flow(backend, case)
        backend.close()
    stored = _stored(ours_path)
    assert stored == _stored(stock_path)
    assert stored[0][0][3] == {"success": "SUCCESS", "revert": "REVERTED", "retry": "SUCCESS",
                               "resume": "SUCCESS"}[case]
    # Every atom write that is left is one of TaskFlow's own per-atom saves, and nothing is
    # read back before it is written.
    assert 0 < counts["ours"]["atom updates"] < counts["stock"]["atom updates"], counts
    assert counts["ours"]["statements"] < 0.6 * counts["stock"]["statements"], counts


def test_a_save_of_a_missing_atom_or_flow_is_not_found(tmp_path):
    from taskflow import exceptions as tf_exc

    backend = persistence.backend_from_url(f"sqlite:///{tmp_path / 'flows.sqlite'}")
    persistence.upgrade_schema(backend)
    conn = backend.get_connection()
    with pytest.raises(tf_exc.NotFound):
        conn.update_atom_details(models.TaskDetail("t", uuid="no-such-atom"))
    with pytest.raises(tf_exc.NotFound):
        conn.update_flow_details(models.FlowDetail("f", uuid="no-such-flow"))
    backend.close()
