"""Read-only views over the flow store, for `vsan-flows flows` (the picture: :mod:`.graph`).

Why a module of its own: the admin CLI, tests and any future dashboard need the same answers
("which flows are there, what did this one do, where did it fail") and those answers must be
plain dicts/lists (JSON-able, testable without a terminal). Everything here reads; nothing
writes to the store or talks to vCenter.

What is shown is what TaskFlow persisted, never a guess:

* TaskFlow's models carry no timestamps for flows or atoms. The only clocks are the logbook's
  ``created_at`` (our runner makes one logbook per flow, just before running it, so that is the
  flow's start) and, on SQL backends, the ``updated_at`` column SQLAlchemy stamps on every row
  update. The newest of those over a flow's rows is its ``last_change`` (its end, once it has
  finished). Per atom that column is useless: every flow state save rewrites all of the flow's
  atom rows, so a finished flow's atoms all carry its end time. Atom start/end times are
  therefore shown only if a listener recorded them in the atom's meta (``started_at`` /
  ``finished_at``), else ``None``.
* TaskFlow counts attempts only for retries (one history entry per attempt), so ``attempts``
  is set for retry atoms and ``None`` for tasks (which say which retry re-runs them instead).
* When TaskFlow reverts a retry it clears its history; the report says so instead of
  pretending there were no attempts.

Secrets: stored results are facts by design (live handles are never persisted), but every
text that leaves this module goes through :func:`vsan_flows.redaction.scrub` and values under
secret-looking keys are masked, so a bug elsewhere that stores a ticket still does not print it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from taskflow import retry as tf_retry
from taskflow import states
from taskflow.engines import helpers as tf_helpers
from taskflow.engines.action_engine import compiler as tf_compiler
from taskflow.persistence import models
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables
from taskflow.types import failure as tf_failure

from vsan_flows import redaction
from vsan_flows.exceptions import FlowError
from vsan_flows.runtime import persistence

#: The TaskFlow atom that holds the flow's stored inputs (``store=`` of load_from_factory).
INJECTOR = "_TaskFlow_INJECTOR"

#: Keys of every `flows list` row, in output order; the JSON/CSV contract.
LIST_FIELDS = ("id", "operation", "instance", "image", "state", "abandoned", "host",
               "started", "last_change", "duration")

#: Flow states in which nothing will happen to the flow any more on its own.
FINISHED = (states.SUCCESS, states.REVERTED, states.FAILURE)

#: Flow states a restart (runner.unfinished) picks up: the flow is, or was, running.
ACTIVE = (states.RUNNING, states.RESUMING, states.REVERTING, states.SUSPENDING)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --------------------------------------------------------------------------- small helpers


scrub = redaction.scrub
_mask = redaction.mask_mapping


def clean(value: Any, limit: int = 200) -> Any:
    """A JSON-able ``value`` (factory arguments, stored inputs) masked, scrubbed, shortened."""
    value = _mask(value)
    if isinstance(value, Mapping):
        return {str(k): clean(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, limit) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = scrub(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize(value: Any, limit: int = 120) -> str:
    """A short, secret-free ``repr`` of a stored result or input, for tables and JSON."""
    text = scrub(repr(_mask(value)))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_age(text: str) -> dt.timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"3d"``, ``"1w"`` (bare number = seconds)."""
    match = _AGE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not an age; use a number with s, m, h, d or w "
                         "(e.g. 2h, 3d)")
    try:
        return dt.timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2).lower()])
    except OverflowError:
        raise ValueError(f"{text!r} is too long ago to compute; the largest age is about "
                         f"{dt.timedelta.max.days // 7} weeks") from None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """TaskFlow stores naive UTC (oslo timeutils.utcnow); make it explicit."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def short_name(atom_name: str) -> str:
    """``vsan_flows.tasks.lease.CompleteLease`` -> ``CompleteLease``; retries keep theirs."""
    return atom_name.rsplit(".", 1)[-1]


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def failure_info(failure: tf_failure.Failure | Mapping | None) -> dict | None:
    """Type, message and traceback of a TaskFlow Failure (or its dict form), scrubbed.

    A failure restored from the store carries no exception object, only its type names and
    text (a restored failure may carry no exception object); that is all we need here.
    """
    if failure is None:
        return None
    if isinstance(failure, Mapping):
        failure = tf_failure.Failure.from_dict(dict(failure))
    types = list(failure)
    return {
        "type": types[0] if types else "unknown",
        "types": types,
        "message": scrub(failure.exception_str or ""),
        "traceback": scrub(failure.traceback_str) if failure.traceback_str else None,
    }


# --------------------------------------------------------------------------- timestamps


def _sql_times(backend: Any, flow_uuid: str | None = None) -> tuple[dict, dict]:
    """(flow uuid -> row updated_at, flow uuid -> newest atom row updated_at), read straight
    from TaskFlow's tables; both empty on non-SQL backends.

    TaskFlow's connection API drops these columns when it builds its models, hence the
    direct, read-only SELECTs.
    """
    engine = getattr(backend, "engine", None)
    if engine is None:
        return {}, {}
    t = tf_tables.fetch(sa.MetaData())
    fq = sa.select(t.flowdetails.c.uuid, t.flowdetails.c.updated_at)
    lq = sa.select(t.atomdetails.c.parent_uuid, sa.func.max(t.atomdetails.c.updated_at)) \
        .group_by(t.atomdetails.c.parent_uuid)
    if flow_uuid is not None:
        fq = fq.where(t.flowdetails.c.uuid == flow_uuid)
        lq = lq.where(t.atomdetails.c.parent_uuid == flow_uuid)
    try:
        with engine.connect() as conn:
            flows = {u: _utc(v) for u, v in conn.execute(fq)}
            latest = {u: _utc(v) for u, v in conn.execute(lq)}
    except sa_exc.SQLAlchemyError as exc:
        url = engine.url.render_as_string(hide_password=False)
        raise persistence.PersistenceError(
            "storage", url, f"reading flow timestamps failed ({first_line(str(exc))})",
            "Check the database server's log.") from None
    return flows, latest


def _last_change(*stamps: dt.datetime | None) -> dt.datetime | None:
    known = [s for s in stamps if s is not None]
    return max(known) if known else None


# --------------------------------------------------------------------------- list


def summary(book: models.LogBook, fd: models.FlowDetail,
            flow_times: Mapping[str, dt.datetime | None] | None = None,
            atom_times: Mapping[str, dt.datetime | None] | None = None) -> dict:
    """One `flows list` row (keys = :data:`LIST_FIELDS`)."""
    meta = book.meta or {}
    started = _utc(book.created_at)
    last = _last_change((flow_times or {}).get(fd.uuid), (atom_times or {}).get(fd.uuid))
    duration = (last - started).total_seconds() if last and started else None
    return {
        "id": fd.uuid,
        "operation": meta.get("operation") or fd.name,
        "instance": meta.get("instance"),
        "image": meta.get("image"),
        "state": fd.state,
        # Abandon sets FAILURE; a flow forced on later (revert/resume --force) is no longer
        # abandoned, though show still reports the record.
        "abandoned": bool((fd.meta or {}).get("abandoned")) and fd.state == states.FAILURE,
        "host": meta.get("host"),
        "started": iso(started),
        "last_change": iso(last),
        "duration": round(max(duration, 0.0), 3) if duration is not None else None,
    }


def _matches_state(row: Mapping, wanted: Iterable[str]) -> bool:
    for want in wanted:
        want = want.strip().upper()
        if want == "ABANDONED" and row["abandoned"]:
            return True
        if want == str(row["state"]).upper():
            return True
    return False


def list_flows(backend: Any, *, state: Iterable[str] | None = None,
               operation: str | None = None, instance: str | None = None,
               older_than: dt.timedelta | None = None, newer_than: dt.timedelta | None = None,
               host: str | None = None, now: dt.datetime | None = None) -> list[dict]:
    """Every flow in the store as :func:`summary` rows, filtered, oldest first.

    ``state`` matches TaskFlow flow states case-insensitively, plus ``abandoned``;
    ``instance`` is a shell pattern; ages compare the flow's start with ``now``.
    """
    now = now or dt.datetime.now(dt.UTC)
    flow_times, atom_times = _sql_times(backend)
    rows = [summary(book, fd, flow_times, atom_times)
            for book, fd in persistence.list_flow_details(backend)]
    states_wanted = [s for part in (state or []) for s in part.split(",") if s.strip()]
    out = []
    for row in rows:
        started = dt.datetime.fromisoformat(row["started"]) if row["started"] else None
        if states_wanted and not _matches_state(row, states_wanted):
            continue
        if operation and row["operation"] != operation:
            continue
        if instance and not fnmatch.fnmatchcase(row["instance"] or "", instance):
            continue
        if host and row["host"] != host:
            continue
        if older_than is not None and (started is None or now - started < older_than):
            continue
        if newer_than is not None and (started is None or now - started > newer_than):
            continue
        out.append(row)
    return sorted(out, key=lambda r: (r["started"] or "", r["id"]))


def purge_candidates(backend: Any, older_than: dt.timedelta, *,
                     include_abandoned: bool = False,
                     now: dt.datetime | None = None) -> list[dict]:
    """Finished flows (SUCCESS/REVERTED, optionally abandoned) whose end is older than
    ``older_than``, as list rows.

    Age counts from the flow's last recorded change (its end) where the store has one, else
    from its start, so a long flow that just finished is not purged for having started long
    ago.
    """
    now = now or dt.datetime.now(dt.UTC)
    out = []
    for row in list_flows(backend):
        finished = row["state"] in (states.SUCCESS, states.REVERTED) and not row["abandoned"]
        if not (finished or (include_abandoned and row["abandoned"])):
            continue
        when = row["last_change"] or row["started"]
        if when and now - dt.datetime.fromisoformat(when) >= older_than:
            out.append(row)
    return out


# --------------------------------------------------------------------------- show


def rebuild_flow(fd: models.FlowDetail) -> Any:
    """The flow object, rebuilt from the factory saved in the flow detail (as resume does)."""
    try:
        return tf_helpers.flow_from_detail(fd)
    except (ImportError, ValueError, TypeError) as exc:
        raise FlowError(fd.uuid, f"cannot rebuild the flow from its factory ({exc})",
                        "Is this vsan_flows version the one that created the flow?") from None


def _compiled(fd: models.FlowDetail) -> Any | None:
    """TaskFlow's compilation of the rebuilt flow, or None if the factory is gone."""
    try:
        return tf_compiler.PatternCompiler(rebuild_flow(fd)).compile()
    except FlowError:
        return None


def _atom_order(compilation: Any | None, fd: models.FlowDetail) -> list[str]:
    """Atom names in execution order (the store's order if the flow cannot be rebuilt)."""
    stored = [ad.name for ad in fd if ad.name != INJECTOR]
    if compilation is None:
        return stored
    graph = compilation.execution_graph
    ordered = [n.name for n in nx.topological_sort(graph)
               if graph.nodes[n].get("kind") in ("task", "retry")]
    return ordered + [name for name in stored if name not in ordered]


def _retry_scopes(compilation: Any | None) -> tuple[dict[str, str], dict[str, str]]:
    """(atom name -> name of the retry that re-runs it, retry name -> its subflow's name)."""
    owner: dict[str, str] = {}
    subflow: dict[str, str] = {}
    if compilation is None:
        return owner, subflow
    for node, data in compilation.execution_graph.nodes(data=True):
        if data.get("retry") is not None and data.get("kind") in ("task", "retry"):
            owner[node.name] = data["retry"].name
    for node in compilation.hierarchy.dfs_iter():
        item = node.item
        if isinstance(item, tf_retry.Retry) and node.parent is not None:
            subflow[item.name] = node.parent.item.name
    return owner, subflow


def _history(ad: models.RetryDetail) -> list[dict]:
    """Each attempt of a retry and the failures that ended it.

    The attempt's own result is not shown: taskflow 6.5's ``RetryDetail.from_dict`` reuses
    one loop variable for it and for the failures, so after a reload it holds a failure's
    dict instead of the result. Attempts are numbered by position, which is reliable.
    """
    attempts = []
    for number, entry in enumerate(ad.results or [], start=1):
        failures = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
        attempts.append({
            "attempt": number,
            "failures": [{"atom": short_name(name), **(failure_info(f) or {})}
                         for name, f in (failures or {}).items()],
        })
    return attempts


def _atom_view(ad: models.AtomDetail, owner: Mapping[str, str]) -> dict:
    meta = ad.meta or {}
    is_retry = isinstance(ad, models.RetryDetail)
    view = {
        "name": ad.name,
        "short_name": short_name(ad.name),
        "kind": "retry" if is_retry else "task",
        "state": ad.state,
        "intention": ad.intention,
        "attempts": len(ad.results or []) if is_retry else None,
        "retried_by": owner.get(ad.name),
        # The runner does not store the 100 % every finished task implies.
        "progress": 1.0 if ad.state == states.SUCCESS and not is_retry else meta.get("progress"),
        "started": meta.get("started_at"),
        "finished": meta.get("finished_at"),
        "result": None if is_retry else (summarize(ad.results)
                                         if ad.results is not None else None),
        "failure": failure_info(ad.failure),
        "revert_failure": failure_info(ad.revert_failure),
    }
    if is_retry:
        view["history"] = _history(ad)
    return view


def show_flow(backend: Any, flow_uuid: str) -> dict:
    """Everything stored about one flow: identity, factory and inputs, every atom, retries.

    Raises FlowError for an unknown id (from persistence.find_flow_detail).
    """
    book, fd = persistence.find_flow_detail(backend, flow_uuid)
    flow_times, atom_latest = _sql_times(backend, fd.uuid)
    compilation = _compiled(fd)
    owner, subflows = _retry_scopes(compilation)
    details = {ad.name: ad for ad in fd}
    injector = details.get(INJECTOR)
    atoms = [_atom_view(details[name], owner)
             for name in _atom_order(compilation, fd) if name in details]
    factory = dict((fd.meta or {}).get("factory") or {})
    retries = []
    for atom in atoms:
        if atom["kind"] != "retry":
            continue
        note = None
        if not atom["history"] and atom["state"] == states.REVERTED:
            note = "TaskFlow clears a retry's history when it reverts it"
        retries.append({"name": atom["name"], "subflow": subflows.get(atom["name"]),
                        "state": atom["state"], "attempts": atom["history"], "note": note})
    abandoned = (fd.meta or {}).get("abandoned")
    return {
        **summary(book, fd, flow_times, atom_latest),
        "name": fd.name,
        "logbook": book.uuid,
        "abandoned_details": _mask(abandoned) if abandoned else None,
        "factory": {
            "name": factory.get("name"),
            "args": clean(list(factory.get("args") or [])),
            "kwargs": clean(dict(factory.get("kwargs") or {})),
        },
        "inputs": (clean(dict(injector.results))
                   if injector is not None and isinstance(injector.results, Mapping) else {}),
        "atoms": atoms,
        "retries": retries,
    }
