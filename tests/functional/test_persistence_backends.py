"""The persistence backends against real databases: sqlite file, PostgreSQL, MariaDB.

Each module run creates its own throwaway databases (vsan_flows_test_<random>) on the servers
at 127.0.0.1 and drops them afterwards, so concurrent test runs never share state. Flows run
through real TaskFlow engines; results are always read back through a NEW backend object, the
way a restarted compute service would see them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import states, task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

from vsan_flows.runtime import persistence

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
SERVERS = {"postgresql": (PG_ADMIN, "postgresql://postgres@127.0.0.1:5432/{}"),
           "mysql": (MY_ADMIN, "mysql://root@127.0.0.1:3306/{}")}


class _Databases:
    """Creates uniquely named databases on one server and drops them all at the end."""

    def __init__(self, kind: str) -> None:
        admin_url, self.template = SERVERS[kind]
        self.kind = kind
        self.engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []
        try:
            with self.engine.connect():
                pass
        except sa.exc.OperationalError as exc:
            pytest.fail(f"{kind} server for the functional tests is not reachable: "
                        f"{exc.orig}. Run tools/test-setup.sh.", pytrace=False)

    def new(self) -> str:
        name = f"vsan_flows_test_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        self.names.append(name)
        return self.template.format(name)

    def drop_all(self) -> None:
        force = " WITH (FORCE)" if self.kind == "postgresql" else ""
        with self.engine.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        self.engine.dispose()


@pytest.fixture(scope="module")
def databases():
    made: dict[str, _Databases] = {}

    def get(kind: str) -> _Databases:
        if kind not in made:
            made[kind] = _Databases(kind)
        return made[kind]

    yield get
    for dbs in made.values():
        dbs.drop_all()


@pytest.fixture(scope="module")
def server_urls(databases):
    """One database per server for the whole module; tests use their own logbooks in it."""
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            cache[kind] = databases(kind).new()
        return cache[kind]

    return get


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request, tmp_path, server_urls):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/flows.sqlite"
    return server_urls(request.param)


@contextlib.contextmanager
def opened(url: str):
    backend = persistence.backend_from_url(url)
    try:
        persistence.upgrade_schema(backend, url)
        yield backend
    finally:
        backend.close()


# --------------------------------------------------------------------------- flows


class Add(task.Task):
    def execute(self, value):
        return value + 1

    def revert(self, value, **kwargs):
        return f"undid {self.name}"


class Boom(task.Task):
    def execute(self, value):
        raise RuntimeError(f"{self.name} failed on purpose")


def three_steps(second=Add) -> linear_flow.Flow:
    return linear_flow.Flow("three").add(
        Add("first", rebind={"value": "x"}, provides="a"),
        second("second", rebind={"value": "a"}, provides="b"),
        Add("third", rebind={"value": "b"}, provides="c"),
    )


def saved_flow_detail(backend, name: str) -> tuple[models.LogBook, models.FlowDetail]:
    book = models.LogBook(name)
    flow_detail = models.FlowDetail(name, uuid=str(uuid.uuid4()))
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return book, flow_detail


def test_flow_results_survive_in_a_new_backend(url):
    with opened(url) as backend:
        book, flow_detail = saved_flow_detail(backend, "ok")
        engine = taskflow.engines.load(three_steps(), store={"x": 1}, backend=backend,
                                       book=book, flow_detail=flow_detail)
        engine.run()

    with opened(url) as fresh:
        found_book, fd = persistence.find_flow_detail(fresh, flow_detail.uuid)
        assert found_book.uuid == book.uuid
        assert fd.state == states.SUCCESS
        atoms = {ad.name: (ad.state, ad.results) for ad in fd}
        assert atoms == {"first": (states.SUCCESS, 2), "second": (states.SUCCESS, 3),
                         "third": (states.SUCCESS, 4),
                         # the store is persisted too, as TaskFlow's injector atom
                         "_TaskFlow_INJECTOR": (states.SUCCESS, {"x": 1})}
        listed = [f.uuid for _, f in persistence.list_flow_details(fresh)]
        assert flow_detail.uuid in listed


def test_failed_flow_reverts_and_the_revert_is_persisted(url):
    with opened(url) as backend:
        book, flow_detail = saved_flow_detail(backend, "fails")
        engine = taskflow.engines.load(three_steps(second=Boom), store={"x": 1},
                                       backend=backend, book=book, flow_detail=flow_detail)
        with pytest.raises(RuntimeError, match="second failed on purpose"):
            engine.run()

    with opened(url) as fresh:
        _, fd = persistence.find_flow_detail(fresh, flow_detail.uuid)
        assert fd.state == states.REVERTED
        atoms = {ad.name: ad for ad in fd}
        assert atoms["first"].state == states.REVERTED
        assert atoms["first"].revert_results == "undid first"
        assert atoms["second"].state == states.REVERTED
        assert "second failed on purpose" in str(atoms["second"].failure)
        assert atoms["third"].state == states.PENDING  # never ran, nothing to undo

        persistence.destroy_flow_detail(fresh, flow_detail.uuid)
        assert flow_detail.uuid not in [f.uuid for _, f in persistence.list_flow_details(fresh)]


CRASHING_CHILD = textwrap.dedent("""
    import contextlib, os, signal, sys
    import taskflow.engines
    from taskflow import task
    from taskflow.patterns import linear_flow
    from taskflow.persistence import models
    from vsan_flows.runtime import persistence

    class Step(task.Task):
        def execute(self):
            return self.name + " done"

    class Die(task.Task):
        def execute(self):
            os.kill(os.getpid(), signal.SIGKILL)

    url, fd_uuid = sys.argv[1:3]
    backend = persistence.backend_from_url(url)
    persistence.upgrade_schema(backend)
    book = models.LogBook("crash")
    fd = models.FlowDetail("crash", uuid=fd_uuid)
    book.add(fd)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    flow = linear_flow.Flow("crash").add(Step("one"), Step("two"), Die("die"))
    taskflow.engines.load(flow, backend=backend, book=book, flow_detail=fd).run()
""")


def test_sigkill_right_after_a_task_loses_nothing(url):
    """A task marked done is committed before the next one starts (the tuning keeps this)."""
    fd_uuid = str(uuid.uuid4())
    proc = subprocess.run([sys.executable, "-c", CRASHING_CHILD, url, fd_uuid], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with opened(url) as fresh:
        _, fd = persistence.find_flow_detail(fresh, fd_uuid)
        atoms = {ad.name: (ad.state, ad.results) for ad in fd}
    assert atoms["one"] == (states.SUCCESS, "one done")
    assert atoms["two"] == (states.SUCCESS, "two done")
    assert atoms["die"][0] == states.RUNNING
    assert fd.state == states.RUNNING  # what a resume will pick up


# --------------------------------------------------------------------------- schema races


def _upgrade_in_child(url: str, barrier, results) -> None:
    try:
        backend = persistence.backend_from_url(url)
        barrier.wait(timeout=30)
        persistence.upgrade_schema(backend, url)
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(models.LogBook("after-upgrade"))
        backend.close()
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_two_processes_upgrade_a_fresh_database_at_once(kind, tmp_path, databases):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):  # a race that loses only sometimes must still never lose
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path}/race{attempt}/flows.sqlite"
        else:
            url = databases(kind).new()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_upgrade_in_child, args=(url, barrier, results))
                 for _ in range(2)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert outcomes == ["ok", "ok"], f"attempt {attempt}: {outcomes}"
        with opened(url) as fresh:
            assert len(persistence.list_flow_details(fresh)) == 0
            with contextlib.closing(fresh.get_connection()) as conn:
                assert [b.name for b in conn.get_logbooks()] == ["after-upgrade"] * 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("scheme", "label"), [("postgresql", "PostgreSQL"),
                                               ("mysql+pymysql", "MySQL/MariaDB")])
def test_unreachable_database_is_one_clear_error(scheme, label, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"{scheme}://flows:topsecret@127.0.0.1:1/flows"
    started = time.monotonic()
    with pytest.raises(persistence.PersistenceError) as info:
        with opened(url):
            pass
    err = info.value
    assert err.kind == "unreachable"
    assert f"cannot connect to {label} at 127.0.0.1:1" in str(err)
    assert "refused" in str(err).lower()
    assert f"{scheme}://flows:***@127.0.0.1:1/flows" in str(err)
    assert "topsecret" not in str(err) + caplog.text
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("kind", ["mysql", "postgresql"])
def test_wrong_credentials_are_one_clear_error(kind, server_urls, caplog):
    caplog.set_level(logging.DEBUG)
    good = server_urls(kind)
    url = good.replace("root@", "nobody:secret@").replace("postgres@", "nobody:secret@")
    with pytest.raises(persistence.PersistenceError) as info:
        with opened(url):
            pass
    err = info.value
    assert err.kind == "auth"
    assert "rejected user 'nobody'" in str(err)
    assert "nobody:***@127.0.0.1" in str(err)
    assert "secret" not in str(err) + caplog.text
    if kind == "mysql":
        assert "Access denied" in str(err)


@pytest.mark.parametrize("kind", ["mysql", "postgresql"])
def test_missing_database_is_one_clear_error(kind):
    url = SERVERS[kind][1].format(f"vsan_flows_test_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(persistence.PersistenceError) as info:
        with opened(url):
            pass
    assert info.value.kind == "no-database"
    assert "CREATE DATABASE vsan_flows_test_missing_" in str(info.value)


# --------------------------------------------------------------------------- speed


def _eight_task_flow_ms(backend) -> float:
    book, flow_detail = saved_flow_detail(backend, "bench")
    flow = linear_flow.Flow("bench").add(
        *(Add(f"t{i}", rebind={"value": "x"}, provides=f"r{i}") for i in range(8)))
    engine = taskflow.engines.load(flow, store={"x": 1}, backend=backend, book=book,
                                   flow_detail=flow_detail)
    started = time.perf_counter()
    engine.run()
    return (time.perf_counter() - started) * 1000


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
@pytest.mark.parametrize("second", [Add, Boom], ids=["success", "revert"])
def test_our_saves_store_what_taskflow_stores(kind, second, databases):
    """Our connection's saves (persistence._FewerWritesConnection) leave the same rows as
    TaskFlow's own SQL connection on the servers too (the sqlite case, with retry and resume,
    is in tests/unit/test_persistence.py)."""
    from taskflow.persistence.backends import impl_sqlalchemy

    driver = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}[kind]
    rows = {}
    for name in ("stock", "ours"):
        url = databases(kind).new()
        if name == "stock":
            backend = impl_sqlalchemy.SQLAlchemyBackend(
                {"connection": driver + url[url.index("://"):]})
            with contextlib.closing(backend.get_connection()) as conn:
                conn.upgrade()
        else:
            backend = persistence.backend_from_url(url)
            persistence.upgrade_schema(backend, url)
        try:
            book = models.LogBook("compare", uuid="book-uuid")
            book.meta = {"host": "here"}
            flow_detail = models.FlowDetail("three", uuid="flow-uuid")
            book.add(flow_detail)
            with contextlib.closing(backend.get_connection()) as conn:
                conn.save_logbook(book)
            engine = taskflow.engines.load(three_steps(second=second), store={"x": 1},
                                           backend=backend, book=book, flow_detail=flow_detail)
            with contextlib.suppress(RuntimeError):
                engine.run()
            with backend.engine.connect() as sql:
                rows[name] = [
                    sorted(tuple(r) for r in sql.exec_driver_sql(
                        "SELECT uuid, name, meta FROM logbooks")),
                    sorted(tuple(r) for r in sql.exec_driver_sql(
                        "SELECT uuid, parent_uuid, name, state, meta FROM flowdetails")),
                    sorted(tuple(r) for r in sql.exec_driver_sql(
                        "SELECT parent_uuid, name, atom_type, state, intention, results, failure,"
                        " revert_results, revert_failure, meta, version FROM atomdetails")),
                ]
        finally:
            backend.close()
    assert rows["ours"] == rows["stock"]
    assert [r[3] for r in rows["ours"][1]] == ["SUCCESS" if second is Add else "REVERTED"]


def test_sqlite_tuning_pays_for_itself(tmp_path, capsys):
    """Ours vs TaskFlow's defaults on sqlite files, interleaved in the same run."""
    default = tf_backends.fetch({"connection": f"sqlite:///{tmp_path}/default.sqlite"})
    with contextlib.closing(default.get_connection()) as conn:
        conn.upgrade()
    with opened(f"sqlite:///{tmp_path}/tuned.sqlite") as tuned:
        timings: dict[str, list[float]] = {"default": [], "tuned": []}
        for backend in (default, tuned):  # warm up imports and caches
            _eight_task_flow_ms(backend)
        for _ in range(7):
            timings["default"].append(_eight_task_flow_ms(default))
            timings["tuned"].append(_eight_task_flow_ms(tuned))
    default.close()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    with capsys.disabled():
        print(f"\n8-task flow on sqlite, median ms: TaskFlow defaults {medians['default']:.0f}, "
              f"vsan_flows {medians['tuned']:.0f}")
    assert medians["tuned"] < 0.8 * medians["default"], medians
