"""Read-only views over the flow store, and the flow graph export, for `vsan-flows flows`.

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

Secrets: stored results are facts by design (DESIGN.md), but every text that leaves this
module goes through :func:`scrub` and values under secret-looking keys are masked, so a bug
elsewhere that stores a ticket still does not print it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
import shutil
import subprocess
import tempfile
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

#: Fill colour per atom state, for the graph and its legend. Red = something raised and is
#: still unresolved; orange = undone; blue = in flight; green = done; white = not started.
STATE_COLOURS = {
    states.SUCCESS: "#8fd694",
    states.FAILURE: "#ef5350",
    states.REVERT_FAILURE: "#c62828",
    states.REVERTED: "#ffb74d",
    states.REVERTING: "#ffe0b2",
    states.RUNNING: "#64b5f6",
    states.RESUMING: "#64b5f6",
    states.RETRYING: "#ce93d8",
    states.PENDING: "#ffffff",
    states.IGNORE: "#e0e0e0",
}
#: Outline of an atom whose execute or revert raised (its failure is recorded).
FAILED_OUTLINE = "#d50000"
#: States drawn with white text because their fill is dark.
_DARK_FILLS = (states.REVERT_FAILURE,)
_LEGEND_ORDER = (states.SUCCESS, states.RUNNING, states.PENDING, states.REVERTING,
                 states.REVERTED, states.FAILURE, states.REVERT_FAILURE, states.RETRYING,
                 states.IGNORE)

_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|ticket|cookie|session|credential|auth",
                         re.IGNORECASE)
_SESSION_NAME = re.compile(r"vmware_soap_session", re.IGNORECASE)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --------------------------------------------------------------------------- small helpers


def scrub(text: str) -> str:
    """``text`` safe to print: masked URLs/cookies/tickets and no session cookie *name*.

    The shared redaction keeps ``vmware_soap_session=***``; an admin view has no use for the
    cookie's name either, and keeping it out entirely makes "never shown" checkable.
    """
    return _SESSION_NAME.sub("<session cookie>", redaction.redact(str(text)))


def _mask(value: Any) -> Any:
    """``value`` with anything under a secret-looking key replaced by ``***``."""
    if isinstance(value, Mapping):
        return {k: ("***" if isinstance(k, str) and _SECRET_KEY.search(k) else _mask(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask(v) for v in value)
    return value


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
    return dt.timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2).lower()])


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


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def failure_info(failure: tf_failure.Failure | Mapping | None) -> dict | None:
    """Type, message and traceback of a TaskFlow Failure (or its dict form), scrubbed.

    A failure restored from the store carries no exception object, only its type names and
    text (DESIGN: "a restored failure may carry no exception"); that is all we need here.
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
            "storage", url, f"reading flow timestamps failed ({_first_line(str(exc))})",
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
        "progress": meta.get("progress"),
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


# --------------------------------------------------------------------------- graph


def _dot_id(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _html(text: str) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _atom_graph(compilation: Any) -> nx.DiGraph:
    """TaskFlow's execution graph with its no-op flow start/end nodes contracted away."""
    graph = compilation.execution_graph
    out = nx.DiGraph()
    for node, data in graph.nodes(data=True):
        if data.get("kind") in ("task", "retry"):
            out.add_node(node.name, kind=data["kind"], atom=node)

    def atom_successors(node: Any, seen: set) -> Iterable[tuple[Any, bool]]:
        for succ in graph.successors(node):
            retry_edge = bool(graph.edges[node, succ].get("retry"))
            if graph.nodes[succ].get("kind") in ("task", "retry"):
                yield succ, retry_edge
            elif succ not in seen:
                seen.add(succ)
                for deeper, deeper_retry in atom_successors(succ, seen):
                    yield deeper, retry_edge or deeper_retry

    for name, data in list(out.nodes(data=True)):
        for succ, retry_edge in atom_successors(data["atom"], set()):
            out.add_edge(name, succ.name, retry=retry_edge)
    return out


def _node_label(view: Mapping | None, atom: Any) -> str:
    """An HTML-like label: class name, atom name if different, state, and what went wrong."""
    cls = type(atom).__name__
    rows = [f"<B>{_html(cls)}</B>"]
    if short_name(atom.name) != cls:
        rows.append(f'<FONT POINT-SIZE="9">{_html(atom.name)}</FONT>')
    if view is None:
        rows.append("<I>no stored state</I>")
        return "<" + "<BR/>".join(rows) + ">"
    state = view["state"]
    extra = []
    if view["kind"] == "retry" and (view["attempts"] or state != states.REVERTED):
        extra.append(f"{view['attempts']} attempt(s)")
    progress = view.get("progress")
    if view["kind"] == "task" and state == states.RUNNING and isinstance(progress, (int, float)):
        extra.append(f"progress {progress:.0%}")
    rows.append(_html(" · ".join([state, *extra])))
    for key, verb in (("failure", "raised"), ("revert_failure", "revert raised")):
        info = view.get(key)
        if info:
            message = _first_line(info["message"])
            message = message if len(message) <= 40 else message[:37] + "..."
            rows.append(f'<FONT POINT-SIZE="9">{verb} {_html(short_name(info["type"]))}: '
                        f"{_html(message)}</FONT>")
    return "<" + "<BR/>".join(rows) + ">"


def _legend(title: str) -> str:
    """The graph's title plus a legend of state colours, as an HTML-like table label."""
    cells = "".join(
        f'<TD BGCOLOR="{STATE_COLOURS[s]}"><FONT COLOR="'
        f'{"white" if s in _DARK_FILLS else "black"}">{s}</FONT></TD>'
        for s in _LEGEND_ORDER)
    extra = (f'<TD COLOR="{FAILED_OUTLINE}" BORDER="3">red outline: raised</TD>'
             '<TD>hexagon: retry (re-runs its box)</TD>'
             '<TD>dashed: retry edge</TD>')
    return (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="4">'
            f'<TR><TD COLSPAN="{len(_LEGEND_ORDER) + 3}" BORDER="0">'
            f'<B>{_html(title)}</B></TD></TR>'
            f"<TR>{cells}{extra}</TR></TABLE>>")


def flow_dot(backend: Any, flow_uuid: str) -> str:
    """Graphviz DOT text of the flow's execution graph, atoms filled by state.

    Subflows are boxes (clusters) labelled with the retry that re-runs them; retries are
    hexagons with a dashed edge into the subflow they control; an atom whose execute or revert
    raised gets a red outline (a REVERTED atom may be the one that failed).
    """
    report = show_flow(backend, flow_uuid)
    _book, fd = persistence.find_flow_detail(backend, flow_uuid)
    compilation = tf_compiler.PatternCompiler(rebuild_flow(fd)).compile()
    graph = _atom_graph(compilation)
    views = {a["name"]: a for a in report["atoms"]}
    title = (f"{report['operation']} {report['instance'] or ''} — flow {report['id']} — "
             f"{report['state']}{' (abandoned)' if report['abandoned'] else ''}"
             f" — host {report['host'] or '?'}")
    lines = ["digraph flow {",
             '  graph [rankdir=TB, fontname="Helvetica", labelloc=t, nodesep=0.4, '
             f"ranksep=0.35, label={_legend(title)}];",
             '  node [fontname="Helvetica", fontsize=11, shape=box, style="rounded,filled", '
             'fillcolor="#ffffff", margin="0.2,0.08"];',
             '  edge [color="#555555", arrowsize=0.7];']

    def node_line(name: str, indent: str) -> str:
        data = graph.nodes[name]
        view = views.get(name)
        state = view["state"] if view else None
        attrs = {"label": _node_label(view, data["atom"]),
                 "fillcolor": _dot_id(STATE_COLOURS.get(state, "#ffffff"))}
        if state in _DARK_FILLS:
            attrs["fontcolor"] = "white"
        if data["kind"] == "retry":
            attrs["shape"] = "hexagon"
            attrs["style"] = '"filled,bold"'
            attrs["peripheries"] = "2"
        if view is None:
            attrs["style"] = '"rounded,dashed"'
        if view and (view["failure"] or view["revert_failure"]):
            attrs["color"] = _dot_id(FAILED_OUTLINE)
            attrs["penwidth"] = "3"
        body = ", ".join(f"{k}={v}" for k, v in attrs.items())
        return f"{indent}{_dot_id(name)} [{body}];"

    placed: set[str] = set()
    counter = [0]

    def emit(tree_node: Any, indent: str) -> None:
        for child in tree_node:
            item = child.item
            if getattr(item, "name", None) in graph:
                placed.add(item.name)
                lines.append(node_line(item.name, indent))
                continue
            if not child.child_count():
                continue
            counter[0] += 1
            retry = getattr(item, "retry", None)
            label = f"{item.name} ({type(item).__module__.rsplit('.', 1)[-1]})"
            if retry is not None:
                label += f"\nre-run as a whole by {retry.name} ({type(retry).__name__})"
            lines.append(f"{indent}subgraph cluster_{counter[0]} {{")
            lines.append(f'{indent}  label={_dot_id(label)}; style="rounded,dashed"; '
                         'color="#7e57c2"; fontname="Helvetica"; fontsize=10;')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(compilation.hierarchy, "  ")
    for name in graph.nodes:
        if name not in placed:
            lines.append(node_line(name, "  "))
    for src, dst, data in graph.edges(data=True):
        style = ' [style=dashed, color="#7e57c2", label="retries", fontsize=9]' \
            if data.get("retry") else ""
        lines.append(f"  {_dot_id(src)} -> {_dot_id(dst)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, output: str, fmt: str | None = None) -> str:
    """Write ``dot_text`` to ``output`` as .dot, or render it with Graphviz (png/svg/pdf).

    Renders into a temporary file and renames, so a failed render never leaves a truncated
    picture behind. Returns the format used.
    """
    fmt = (fmt or os.path.splitext(output)[1].lstrip(".") or "dot").lower()
    if fmt in ("dot", "gv"):
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(dot_text)
        return "dot"
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"cannot write {fmt!r}; use a .png, .svg, .pdf or .dot file name")
    dot = shutil.which("dot")
    if dot is None:
        raise FileNotFoundError("Graphviz's `dot` is not installed (Debian: apt install "
                                "graphviz); write a .dot file instead and render it elsewhere")
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".vsan-flows-graph-", suffix=f".{fmt}", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run([dot, f"-T{fmt}", "-o", tmp], input=dot_text.encode("utf-8"),
                              capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError("Graphviz dot failed: "
                               + _first_line(proc.stderr.decode("utf-8", "replace")))
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return fmt
