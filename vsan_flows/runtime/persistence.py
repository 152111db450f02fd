"""The TaskFlow persistence backend: where flow state lives so flows resume after a restart.

Why this module exists instead of a bare ``taskflow.persistence.backends.fetch(url)``:

* **Errors a person can act on.** A wrong URL, a database that is down, a wrong password or a
  missing driver all surface from SQLAlchemy as long tracebacks. Here each becomes one
  :class:`PersistenceError` (a :class:`~vsan_flows.exceptions.ConfigError`) that names the
  option, the problem (host:port, user, database) and what to do.
* **The password never leaks.** Database URLs carry passwords and end up in messages and logs;
  every URL we print is masked (:mod:`vsan_flows.redaction`), and driver text is scrubbed of
  the password.
* **Drivers we ship.** SQLAlchemy 2.1 maps ``postgresql://`` to psycopg (v3) and ``mysql://`` to
  mysqlclient; we install psycopg2 and PyMySQL, so bare schemes are pointed at those.
* **Schema upgrades that tolerate company.** Two compute services starting at once on a fresh
  database would race TaskFlow's ``create_all``/alembic; the upgrade runs under a
  cross-process lock (file lock for sqlite, advisory lock for PostgreSQL and MariaDB).
* **Speed without giving up durability.** TaskFlow's storage calls ``get_connection()`` for every
  state change (~35 per 8-task flow) and its SQLAlchemy backend builds a fresh ``MetaData`` and
  table set each time, so every statement is recompiled: that, not fsync or connecting, is most
  of the ~400 ms a trivial 8-task flow costs on sqlite. We hand out one shared connection object
  per backend (it is stateless apart from the engine and table objects, and thread-safe), pool
  sqlite connections and run sqlite in WAL mode: every state change is still its own committed
  transaction, so a SIGKILL right after a task is marked done cannot lose it (with
  ``[vsan_flows] sqlite_synchronous = full``, a power loss cannot either). See
  :func:`backend_from_url` for the measured figures. Each save is then one prebuilt statement
  without reading the row back first (:class:`_FewerWritesConnection`), and TaskFlow's pool
  no longer yields the thread after each one unless eventlet runs the threads
  (:func:`_green_threads`): a spawn's ~25 saves went from ~0.8 ms to ~0.1 ms each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from taskflow import exceptions as tf_exc
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import base as tf_base
from taskflow.persistence import models
from taskflow.persistence.backends import impl_sqlalchemy
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from vsan_flows import conf as vconf
from vsan_flows import redaction
from vsan_flows.exceptions import ConfigError, FlowError, VsanFlowsError

LOG = logging.getLogger(__name__)

OPTION = "[vsan_flows] persistence_connection"

#: Seconds a process waits for another one's schema upgrade before giving up.
UPGRADE_LOCK_TIMEOUT = 120.0

#: Seconds a sqlite statement waits for another connection's write transaction (its busy
#: timeout) before "database is locked". sqlite admits one writer at a time and waiters poll
#: with back-off, not in a queue: with 20 flows writing state at once on a loaded host (fsync
#: per commit) the stress test saw a save_logbook wait out the driver's default of 5 s
#: (issue 11). A longer wait only delays a real lock-up, which is reported the same way.
SQLITE_BUSY_TIMEOUT = 60.0

#: Seconds a PostgreSQL connection attempt may take; psycopg2's default is to wait forever,
#: which turns a firewalled database into a compute service that hangs at start.
CONNECT_TIMEOUT = 10

# scheme (before any "+driver") -> (SQLAlchemy dialect+driver we use, human name, default port)
_SQL_SCHEMES = {
    "sqlite": ("sqlite", "sqlite", None),
    "postgresql": ("postgresql+psycopg2", "PostgreSQL", 5432),
    "postgres": ("postgresql+psycopg2", "PostgreSQL", 5432),
    "mysql": ("mysql+pymysql", "MySQL/MariaDB", 3306),
    "mariadb": ("mysql+pymysql", "MySQL/MariaDB", 3306),
}
_TEST_SCHEMES = ("memory",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SUPPORTED = "sqlite:////path/flows.sqlite, postgresql://user:pass@host/db, " \
    "mysql+pymysql://user:pass@host/db (or memory:// for tests)"

# Driver module -> what to install; raised as ModuleNotFoundError deep inside create_engine.
_DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary (or psycopg2)",
    "psycopg": "psycopg",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
    "pg8000": "pg8000",
    "mysql": "mysql-connector-python",
    "asyncpg": "asyncpg",
}



class PersistenceError(ConfigError):
    """The flow database cannot be used; ``kind`` says why so callers can react.

    ``kind`` is one of ``scheme``, ``malformed``, ``driver``, ``path``, ``unreachable``,
    ``auth``, ``no-database``, ``locked``, ``storage``. ``url`` is always the masked URL.
    It is a ConfigError because in every case but a database outage the fix is in
    ``[vsan_flows] persistence_connection``; for ``unreachable`` the message says to check
    the server as well.
    """

    def __init__(self, kind: str, url: str, problem: str, fix: str) -> None:
        self.kind = kind
        self.url = redaction.mask_url(url)
        super().__init__(OPTION, f"{problem} [{self.url}]", fix)


def _scrub(text: str, url: str) -> str:
    """Driver text about ``url`` with the URL masked and its password removed literally."""
    return redaction.Secrets.from_url(url).remove(text.replace(url, redaction.mask_url(url)))


# --------------------------------------------------------------------------- URLs


def _parse(url: str) -> tuple[str, sa.engine.URL | None]:
    """Validate ``url`` and return (scheme, SQLAlchemy URL with our driver) - None for memory."""
    if not isinstance(url, str) or not url.strip():
        raise PersistenceError(
            "malformed", str(url), "the URL is empty",
            f"Set it to a database URL such as {_SUPPORTED}, or unset it to use the sqlite "
            "file under [vsan_flows] state_dir.",
        )
    url = url.strip()
    match = _SCHEME.match(url)
    if not match:
        raise PersistenceError(
            "malformed", url, "not a URL (expected scheme://...)",
            f"Use one of {_SUPPORTED}.",
        )
    scheme, _, driver = match.group(1).lower().partition("+")
    if scheme in _TEST_SCHEMES:
        return scheme, None
    if scheme not in _SQL_SCHEMES:
        raise PersistenceError(
            "scheme", url, f"unsupported scheme {match.group(1)!r}",
            f"Use one of {_SUPPORTED}.",
        )
    try:
        parsed = sa.engine.make_url(url)
        port = parsed.port  # a non-numeric port only fails when read
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise PersistenceError(
            "malformed", url, f"the URL cannot be parsed ({_scrub(str(exc), url)})",
            "Check its syntax (scheme://user:password@host:port/database); URL-encode special "
            "characters in the user name and password (e.g. @ as %40, / as %2F).",
        ) from None
    del port
    if not driver:
        parsed = parsed.set(drivername=_SQL_SCHEMES[scheme][0])
    elif scheme in ("postgres", "mariadb"):
        parsed = parsed.set(drivername=_SQL_SCHEMES[scheme][0].split("+")[0] + "+" + driver)
    if scheme == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise PersistenceError(
                "malformed", url, "an in-memory sqlite database loses every flow on restart",
                "Give a file path (sqlite:////var/lib/vsan-flows/flows.sqlite), or use "
                "memory:// in tests.",
            )
    elif not parsed.database:
        raise PersistenceError(
            "malformed", url, "no database name in the URL",
            "Append /<database> to the URL (e.g. postgresql://user:pass@host/vsan_flows).",
        )
    return scheme, parsed


def _ensure_sqlite_dir(url: str, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise PersistenceError(
            "path", url, f"cannot create the directory {parent} for the sqlite file "
            f"({exc.strerror})",
            "Create it writable by the service user, or point [vsan_flows] state_dir / "
            "persistence_connection somewhere writable.",
        ) from None


#: ``[vsan_flows] sqlite_synchronous`` values -> sqlite's PRAGMA synchronous.
SQLITE_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def _sqlite_on_connect(synchronous: str):
    """Per-connection sqlite settings; why each one is here:

    * ``journal_mode=WAL``: a commit appends to the log instead of rewriting a rollback
      journal; with pooled connections it more than halves the cost of a state change.
      (Persistent in the file; a no-op after the first time.)
    * ``synchronous``: with WAL, ``NORMAL`` (the default, ``[vsan_flows] sqlite_synchronous``)
      writes every commit to the log before the commit returns but fsyncs only at
      checkpoints: a recorded state change survives the *process* dying (SIGKILL, a compute
      service crash or restart: what resume is for), and the last commits may be lost only
      if the *machine* loses power or the kernel crashes. ``FULL`` fsyncs the log on every
      commit and survives those too, at one fsync per state change (~25 per spawn).
    * ``foreign_keys=ON``: TaskFlow's tables cascade on delete, but sqlite ignores foreign
      keys unless asked; without it destroying a logbook leaves its flows and atoms behind.
    """
    pragma = SQLITE_SYNCHRONOUS[synchronous]

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={pragma}")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    return on_connect


#: The atom-detail columns a save rewrites: what TaskFlow's merge takes from the saved copy
#: (``AtomDetail.merge``); name, uuid, type and parent never change once inserted.
_ATOM_FIELDS = ("state", "intention", "results", "failure", "revert_results", "revert_failure",
                "meta", "version")
#: The flow-detail columns a save rewrites (``FlowDetail.merge``: state and meta).
_FLOW_FIELDS = ("state", "meta")


class _FewerWritesConnection(impl_sqlalchemy.Connection):
    """TaskFlow's SQL connection, storing the same rows with fewer statements and commits.

    TaskFlow's storage keeps every flow's state in memory and saves each change at once by
    handing the connection an updated *copy* of the atom (or of the whole flow detail); the
    stock connection then reads the stored row(s) back, merges the copy into them and writes
    the merged values. Its merge takes every field it writes from the copy (state, intention,
    results, failures, meta, version; for a flow, state and meta), so the read changes nothing
    that is stored: with one runner per flow (the flow lock, the jobboard claim) the copy
    *is* what ends up in the row. Measured per spawn: 26 saves at ~0.8 ms each, half of it
    reading, converting and merging rows that were about to be overwritten, and half building
    a new SQL statement (and its cache key) for every save. So, here:

    * an atom save is one prebuilt ``UPDATE ... WHERE uuid = ?`` of the copy's values (a
      missing row is still TaskFlow's NotFound);
    * a flow-detail save updates the flow row and INSERTs the atoms the copy has that the
      table lacks (``ensure_atoms``). An atom it already holds is not rewritten: every atom
      change reaches its row through an atom save before TaskFlow's memory takes it (the
      memory copy is only updated from what a save returned), so the flow copy's atoms are
      the stored rows. That is also why resuming a hundred flows no longer rewrites ten atom
      rows per flow-state change (RESUMING, SUSPENDED, RUNNING...);
    * what a save returns is the saved copy itself, which is what the stock merge returns
      field for field (TaskFlow's storage copies the fields back into its memory).

    ``tests/unit/test_persistence.py`` runs the same flows (success, revert, resume) on this
    connection and on TaskFlow's and compares every stored column.
    """

    def __init__(self, backend, upgrade_lock) -> None:
        super().__init__(backend, upgrade_lock)
        atoms, flows = self._tables.atomdetails, self._tables.flowdetails

        def set_clause(table, fields):
            return {f: sa.bindparam(f"v_{f}", type_=table.c[f].type) for f in fields}

        self._atom_update = (sa.update(atoms).where(atoms.c.uuid == sa.bindparam("w_uuid"))
                             .values(set_clause(atoms, _ATOM_FIELDS)))
        self._flow_update = (sa.update(flows).where(flows.c.uuid == sa.bindparam("w_uuid"))
                             .values(set_clause(flows, _FLOW_FIELDS)))
        self._atom_uuids = sa.select(atoms.c.uuid).where(atoms.c.parent_uuid ==
                                                         sa.bindparam("w_parent"))
        self._atom_insert = sa.insert(atoms)
        books = self._tables.logbooks
        self._book_exists = sa.select(books.c.uuid).where(books.c.uuid == sa.bindparam("w_uuid"))
        self._book_insert = sa.insert(books)
        self._flow_insert = sa.insert(flows)

    @staticmethod
    def _params(values: dict, fields: tuple, uuid: str) -> dict:
        params = {f"v_{f}": values[f] for f in fields}
        params["w_uuid"] = uuid
        return params

    def save_logbook(self, book):
        """A new logbook is inserted with its flows and atoms (prebuilt statements, one
        transaction); saving one that exists is TaskFlow's merge."""
        try:
            with self._engine.begin() as conn:
                if conn.execute(self._book_exists, {"w_uuid": book.uuid}).first() is None:
                    conn.execute(self._book_insert, book.to_dict())
                    for fd in book:
                        self._insert_flow_details(conn, fd, book.uuid)
                    return book
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed saving logbook '{book.uuid}'")
        return super().save_logbook(book)

    def update_atom_details(self, atom_detail):
        params = self._params(atom_detail.to_dict(), _ATOM_FIELDS, atom_detail.uuid)
        try:
            with self._engine.begin() as conn:
                # rowcount counts matched rows on every backend (SQLAlchemy's MySQL dialects
                # set FOUND_ROWS), so an unchanged row is not mistaken for a missing one.
                if conn.execute(self._atom_update, params).rowcount != 1:
                    raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed updating atom details with uuid '{atom_detail.uuid}'")
        return atom_detail

    def update_flow_details(self, flow_detail):
        params = self._params(flow_detail.to_dict(), _FLOW_FIELDS, flow_detail.uuid)
        try:
            with self._engine.begin() as conn:
                if conn.execute(self._flow_update, params).rowcount != 1:
                    raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
                stored = set(conn.execute(self._atom_uuids,
                                          {"w_parent": flow_detail.uuid}).scalars())
                new = [self._atom_row(ad, flow_detail.uuid) for ad in flow_detail
                       if ad.uuid not in stored]
                if new:
                    conn.execute(self._atom_insert, new)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed updating flow details with uuid '{flow_detail.uuid}'")
        return flow_detail

    def _update_flow_details(self, conn, fd, e_fd) -> None:
        # Used by save_logbook for a flow detail the book already holds (the stock code reads
        # the rows for that itself): its atom rows are rewritten only when the merge changes
        # them.
        e_fd.merge(fd)
        flows = self._tables.flowdetails
        conn.execute(sa.update(flows).where(flows.c.uuid == e_fd.uuid).values(e_fd.to_dict()))
        for ad in fd:
            e_ad = e_fd.find(ad.uuid)
            if e_ad is None:
                e_fd.add(ad)
                self._insert_atom_details(conn, ad, fd.uuid)
                continue
            before = e_ad.to_dict()
            e_ad.merge(ad)
            after = e_ad.to_dict()
            if after != before:
                atoms = self._tables.atomdetails
                conn.execute(sa.update(atoms).where(atoms.c.uuid == e_ad.uuid).values(after))

    def _insert_flow_details(self, conn, fd, parent_uuid) -> None:
        conn.execute(self._flow_insert, {**fd.to_dict(), "parent_uuid": parent_uuid})
        rows = [self._atom_row(ad, fd.uuid) for ad in fd]
        if rows:
            conn.execute(self._atom_insert, rows)

    def _insert_atom_details(self, conn, ad, parent_uuid) -> None:
        conn.execute(self._atom_insert, self._atom_row(ad, parent_uuid))

    @staticmethod
    def _atom_row(ad, parent_uuid: str) -> dict:
        # What TaskFlow's _insert_atom_details inserts.
        row = ad.to_dict()
        row["parent_uuid"] = parent_uuid
        row["atom_type"] = models.atom_detail_type(ad)
        return row


class _SharedConnectionBackend(impl_sqlalchemy.SQLAlchemyBackend):
    """TaskFlow's SQLAlchemy backend, handing out one connection object instead of one per call.

    TaskFlow's ``Connection`` has no state of its own beyond the engine and the table objects
    (every method opens its own transaction on the engine, and ``close()`` does nothing), but
    building it creates a new ``MetaData`` with new tables, which also defeats SQLAlchemy's
    compiled-statement cache. Reusing it removes more than half of the per-flow cost; what is
    committed, and when, is unchanged.
    """

    _shared: Any = None
    #: sqlite only: one writer of this process at a time (see :meth:`_queue_writers`).
    serialize_writes = False

    def get_connection(self) -> impl_sqlalchemy.Connection:
        conn = self._shared
        if conn is None:
            conn = _FewerWritesConnection(self, upgrade_lock=self._upgrade_lock)
            if not self._validated:
                conn.validate(max_retries=self._max_retries)
                self._validated = True
            if self.serialize_writes:
                _queue_writers(conn)
            self._shared = conn
        return conn

    def close(self) -> None:
        self._shared = None
        super().close()


_WRITES = ("save_logbook", "update_flow_details", "update_atom_details", "destroy_logbook",
           "clear_all")


def _queue_writers(conn: impl_sqlalchemy.Connection) -> None:
    """Make this process's sqlite writers wait their turn on a lock instead of in sqlite.

    sqlite admits one writer at a time; the others retry under its busy handler, sleeping
    1, 2, 5 ... up to 100 ms between tries, so with a dozen flows of one process writing state
    at once most of a flow's time went to those sleeps (measured: 6 concurrent spawns each took
    as long as the whole batch). Each TaskFlow write is one short transaction, so waiting on a
    lock costs only the writes ahead of it. Other processes still meet the busy handler.
    """
    lock = threading.Lock()
    for name in _WRITES:
        write = getattr(conn, name)

        def queued(*args, _write=write, **kwargs):
            with lock:
                return _write(*args, **kwargs)

        setattr(conn, name, queued)


def _green_threads() -> bool:
    """Whether eventlet has monkey-patched ``thread``: then greenthreads are the threads.

    TaskFlow yields (``time.sleep(0)``) every time a database connection goes back to its pool
    when eventlet is merely *installed*, so that other greenthreads get to run between the
    driver's blocking calls. With native threads the interpreter switches threads by itself
    and the yield only gives the GIL away: measured ~75 us per save on an idle machine and
    ~2 ms on a loaded one, 26 times per spawn. Keep it where it does its job (nova-compute in
    eventlet mode), drop it elsewhere. Never imports eventlet (as vsan_flows.vsphere.loops).
    """
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


def backend_from_url(url: str, *, sqlite_synchronous: str = "normal") -> tf_base.Backend:
    """A TaskFlow persistence backend for ``url``; nothing is connected yet.

    Accepts ``sqlite:///relative`` / ``sqlite:////absolute`` (the directory is created),
    ``postgresql://`` (psycopg2), ``mysql://`` / ``mysql+pymysql://`` (PyMySQL) and
    ``memory://`` (tests). Call :func:`upgrade_schema` (or use :func:`open_backend`) before
    running flows.

    Tuning, measured with an 8-task trivial flow on a sqlite file (same run, interleaved,
    medians): TaskFlow defaults ~400 ms; shared connection ~180 ms; plus pooled connections and
    WAL with synchronous=FULL ~100 ms; synchronous=NORMAL ~80 ms on an idle disk, and no fsync
    per commit to wait for on a busy one (see :func:`_sqlite_on_connect` for what each keeps
    through a crash). The shared connection also helps PostgreSQL and MariaDB, which TaskFlow
    already pools.
    """
    scheme, parsed = _parse(url)
    if parsed is None:
        return tf_backends.fetch({"connection": f"{scheme}://"})
    engine_args: dict[str, Any] = {}
    if scheme == "sqlite":
        _ensure_sqlite_dir(url, parsed.database)
        # TaskFlow forces NullPool for sqlite; a pool keeps connections (and their settings)
        # open. SQLAlchemy sets check_same_thread=False for pooled file databases.
        engine_args["poolclass"] = sa_pool.QueuePool
        engine_args["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        engine_args["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    real_url = parsed.render_as_string(hide_password=False)
    try:
        backend = _SharedConnectionBackend(
            {"connection": real_url, "engine_args": engine_args,
             "checkin_yield": _green_threads()}
        )
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        raise _explain(exc, url) from None
    if scheme == "sqlite":
        sa.event.listen(backend.engine, "connect", _sqlite_on_connect(sqlite_synchronous))
        backend.serialize_writes = True
    return backend


# --------------------------------------------------------------------------- schema


def _lock_key(backend: tf_base.Backend) -> str:
    database = backend.engine.url.database or ""
    return f"vsan_flows.schema.{database}"[:64]


@contextlib.contextmanager
def _sqlite_lock(path: str, url: str, deadline: float) -> Iterator[None]:
    # A sidecar file: sqlite's own locks are fcntl byte ranges on the database file that
    # create_all's check-then-create cannot hold across statements.
    fd = os.open(os.path.abspath(path) + ".upgrade-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise _lock_timeout(url) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _server_lock(backend: Any, url: str, deadline: float) -> Iterator[None]:
    """Advisory lock on PostgreSQL / MariaDB, held on its own connection during the upgrade."""
    engine = backend.engine
    key = _lock_key(backend)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            num = zlib.crc32(key.encode())
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": num}).scalar():
                if time.monotonic() > deadline:
                    raise _lock_timeout(url)
                time.sleep(0.1)
            unlock = sa.text("SELECT pg_advisory_unlock(:k)"), {"k": num}
        else:
            wait = max(1, int(deadline - time.monotonic()))
            got = conn.execute(sa.text("SELECT GET_LOCK(:k, :t)"), {"k": key, "t": wait}).scalar()
            if got != 1:
                raise _lock_timeout(url)
            unlock = sa.text("SELECT RELEASE_LOCK(:k)"), {"k": key}
        try:
            yield
        finally:
            try:
                conn.execute(*unlock)
                conn.rollback()
            except sa_exc.DBAPIError:
                # The session is gone, and the server dropped the lock with it; make sure the
                # pool does not hand the broken connection out again.
                conn.invalidate()


def _lock_timeout(url: str) -> PersistenceError:
    return PersistenceError(
        "locked", url,
        f"another process held the schema upgrade lock for more than {UPGRADE_LOCK_TIMEOUT:g} s",
        "Find the stuck vsan-flows process (or the session holding the advisory lock) and "
        "stop it, then start again.",
    )


def upgrade_schema(backend: tf_base.Backend, url: str | None = None) -> None:
    """Create or upgrade TaskFlow's tables; idempotent, and safe with concurrent processes.

    ``url`` (optional) is used only to word errors; the backend's own URL is used otherwise.
    """
    engine = getattr(backend, "engine", None)
    if url is None:
        url = engine.url.render_as_string(hide_password=False) if engine else "memory://"
    deadline = time.monotonic() + UPGRADE_LOCK_TIMEOUT
    try:
        if engine is None:
            lock: Any = contextlib.nullcontext()
        elif engine.dialect.name == "sqlite":
            lock = _sqlite_lock(engine.url.database, url, deadline)
        else:
            lock = _server_lock(backend, url, deadline)
        with lock, contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
    except VsanFlowsError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        raise _explain(exc, url) from None


def open_backend(conf: cfg.ConfigOpts) -> tf_base.Backend:
    """The backend configured in ``conf``, connected and with an up-to-date schema.

    Fails at service start, with one clear error, rather than at the first spawn.
    """
    url = vconf.persistence_url(conf)
    backend = backend_from_url(url, sqlite_synchronous=conf.vsan_flows.sqlite_synchronous)
    try:
        upgrade_schema(backend, url)
    except BaseException:
        backend.close()
        raise
    LOG.info("Flow persistence at %s, schema up to date", redaction.mask_url(url))
    return backend


# --------------------------------------------------------------------------- errors


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [getattr(cur, "orig", None), getattr(cur, "cause", None),
                 cur.__cause__, cur.__context__]


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[-1] if exc.args else exc) or type(exc).__name__
    return text.strip().splitlines()[0].strip() if text.strip() else type(exc).__name__


def _explain(exc: BaseException, url: str) -> PersistenceError:
    """Turn whatever SQLAlchemy/TaskFlow/the driver raised into one PersistenceError."""
    scheme = _SCHEME.match(url).group(1).lower().partition("+")[0]  # type: ignore[union-attr]
    _, label, default_port = _SQL_SCHEMES.get(scheme, ("", scheme, None))
    try:
        parsed = sa.engine.make_url(url)
        host = parsed.host or "localhost"
        where = f"{host}:{parsed.port or default_port}"
        user, database = parsed.username, parsed.database
    except Exception:  # noqa: BLE001 - already validated; belt and braces
        where, user, database = "?", None, None
    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            module = cause.name.split(".")[0]
            package = _DRIVER_PACKAGES.get(module, module)
            return PersistenceError(
                "driver", url, f"the Python database driver {module!r} is not installed",
                f"Install {package} in the service's environment, or use a URL whose driver "
                "is installed (postgresql:// uses psycopg2, mysql:// uses PyMySQL).",
            )
        if isinstance(cause, sa_exc.NoSuchModuleError):
            return PersistenceError(
                "driver", url, f"SQLAlchemy has no such dialect/driver ({_first_line(cause)})",
                f"Use one of {_SUPPORTED}.",
            )
    for cause in chain:
        reason = _scrub(_first_line(cause), url)
        low = str(cause).lower()
        code = cause.args[0] if cause.args and isinstance(cause.args[0], int) else None
        if isinstance(cause, sqlite3.Error):
            if "locked" in low or "busy" in low:
                return PersistenceError(
                    "locked", url, f"the sqlite file {database} stayed locked ({reason})",
                    "Another process holds a long write transaction on it; find and stop it.",
                )
            if any(s in low for s in ("unable to open", "readonly", "read-only", "disk",
                                      "permission", "not a database", "malformed")):
                return PersistenceError(
                    "path", url, f"cannot use the sqlite file {database} ({reason})",
                    "Check that the file and its directory are writable by the service user, "
                    "that the disk is not full, that the file is a sqlite database, and that "
                    "it is not on a network filesystem.",
                )
            return PersistenceError(
                "storage", url, f"the sqlite file {database} failed: {reason}",
                "Check the file; the error above is sqlite's.",
            )
        if not isinstance(cause, Exception) or type(cause).__module__.split(".")[0] not in (
            "psycopg2", "pymysql", "psycopg", "MySQLdb"):
            continue
        if code in (2002, 2003, 2005, 2006, 2013) or any(s in low for s in (
                "connection refused", "could not connect", "could not translate host",
                "timeout expired", "no route to host", "name or service not known")):
            return PersistenceError(
                "unreachable", url, f"cannot connect to {label} at {where} ({reason})",
                "Check that the database server is running and accepts TCP connections on "
                "that address (firewall, listen_addresses/bind-address), or correct the host "
                "and port in the URL.",
            )
        if code in (1044, 1045, 1698) or any(s in low for s in (
                "password authentication failed", "authentication failed", "no pg_hba.conf",
                "role ", "access denied", "no password supplied")):
            return PersistenceError(
                "auth", url, f"{label} at {where} rejected user {user!r} ({reason})",
                "Check the user name and password in the URL (URL-encode special characters) "
                "and that the user may connect from this host and use the database.",
            )
        if code == 1049 or ("database" in low and "does not exist" in low):
            return PersistenceError(
                "no-database", url, f"database {database!r} does not exist on {label} at {where}",
                f"Create it (CREATE DATABASE {database}) and grant the user access, or fix the "
                "database name in the URL.",
            )
        return PersistenceError(
            "storage", url, f"{label} at {where} failed: {reason}",
            "Check the database server's log; the error above is the driver's.",
        )
    return PersistenceError(
        "storage", url, f"the flow database failed: {_scrub(_first_line(exc), url)}",
        "Check the URL and the database server's log.",
    )


# --------------------------------------------------------------------------- maintenance


@contextlib.contextmanager
def _connection(backend: tf_base.Backend) -> Iterator[Any]:
    url = getattr(getattr(backend, "engine", None), "url", None)
    text_url = url.render_as_string(hide_password=False) if url is not None else "memory://"
    try:
        with contextlib.closing(backend.get_connection()) as conn:
            yield conn
    except (VsanFlowsError, tf_exc.NotFound):
        raise
    except (tf_exc.StorageFailure, sa_exc.SQLAlchemyError) as exc:
        raise _explain(exc, text_url) from None


def list_flow_details(backend: tf_base.Backend) -> list[tuple[models.LogBook, models.FlowDetail]]:
    """Every flow detail with its logbook (atoms loaded), for ``vsan-flows flows list``."""
    with _connection(backend) as conn:
        return [(book, fd) for book in conn.get_logbooks(lazy=False) for fd in book]


def find_flow_detail(
    backend: tf_base.Backend, flow_uuid: str
) -> tuple[models.LogBook, models.FlowDetail]:
    """The flow detail ``flow_uuid`` (atoms loaded) and its logbook; FlowError if absent.

    TaskFlow's API has no flow -> logbook lookup: on SQL backends the flow's row names its
    logbook (one indexed SELECT; scanning every logbook cost one query per logbook per flow,
    10,100 queries to resume 100 flows); other backends are scanned lazily.
    """
    engine = getattr(backend, "engine", None)
    if engine is not None:
        t = tf_tables.fetch(sa.MetaData())
        try:
            with engine.connect() as sql:
                parent = sql.execute(sa.select(t.flowdetails.c.parent_uuid)
                                     .where(t.flowdetails.c.uuid == flow_uuid)).scalar()
        except sa_exc.SQLAlchemyError as exc:
            raise _explain(exc, engine.url.render_as_string(hide_password=False)) from None
        if parent is not None:
            with _connection(backend) as conn:
                book = conn.get_logbook(parent, lazy=True)
                fd = conn.get_flow_details(flow_uuid, lazy=False)
                book.add(fd)
                return book, fd
        raise _no_such_flow(flow_uuid)
    with _connection(backend) as conn:
        for book in conn.get_logbooks(lazy=True):
            if any(fd.uuid == flow_uuid for fd in conn.get_flows_for_book(book.uuid, lazy=True)):
                fd = conn.get_flow_details(flow_uuid, lazy=False)
                book.add(fd)
                return book, fd
    raise _no_such_flow(flow_uuid)


def _no_such_flow(flow_uuid: str) -> FlowError:
    return FlowError(
        flow_uuid, "no such flow in the persistence backend",
        "List the known flows with `vsan-flows flows list`; it may have been destroyed.",
    )


def destroy_flow_detail(backend: tf_base.Backend, flow_uuid: str) -> None:
    """Delete flow ``flow_uuid`` and its atoms; its logbook too when nothing else is in it.

    TaskFlow's connection API can only destroy whole logbooks. Our runner keeps one flow per
    logbook, so that is the normal path; a flow sharing its logbook is deleted row by row on
    SQL backends, in one transaction.
    """
    book, fd = find_flow_detail(backend, flow_uuid)
    with _connection(backend) as conn:
        others = [f for f in conn.get_flows_for_book(book.uuid, lazy=True) if f.uuid != fd.uuid]
        if not others:
            conn.destroy_logbook(book.uuid)
            return
    engine = getattr(backend, "engine", None)
    if engine is None:
        raise FlowError(
            flow_uuid, f"it shares logbook {book.uuid} with {len(others)} other flow(s), and "
            "this backend can only destroy whole logbooks",
            "Destroy the logbook instead, or use a SQL backend.",
        )
    t = tf_tables.fetch(sa.MetaData())
    try:
        with engine.begin() as sql:
            sql.execute(t.atomdetails.delete().where(t.atomdetails.c.parent_uuid == fd.uuid))
            sql.execute(t.flowdetails.delete().where(t.flowdetails.c.uuid == fd.uuid))
    except sa_exc.SQLAlchemyError as exc:
        raise _explain(exc, engine.url.render_as_string(hide_password=False)) from None


def rename_atoms(backend: tf_base.Backend, flow_uuid: str, renames: dict[str, str]) -> None:
    """Rename atom details of flow ``flow_uuid`` (old name -> new name), in one transaction.

    TaskFlow's connection API never changes an atom detail's name (its ``merge`` copies state
    and results only), hence the direct UPDATE. Only SQL backends outlive a process, so only
    they can hold a flow stored by an older release.
    """
    engine = getattr(backend, "engine", None)
    if engine is None or not renames:
        return
    t = tf_tables.fetch(sa.MetaData())
    try:
        with engine.begin() as sql:
            for old, new in renames.items():
                sql.execute(t.atomdetails.update()
                            .where(t.atomdetails.c.parent_uuid == flow_uuid)
                            .where(t.atomdetails.c.name == old)
                            .values(name=new))
    except sa_exc.SQLAlchemyError as exc:
        raise _explain(exc, engine.url.render_as_string(hide_password=False)) from None
