"""The flow picture for `vsan-flows flows graph`: Graphviz DOT of a stored flow, by state.

Drawing is kept apart from the views (:mod:`.inspect`): it needs the rebuilt flow's structure
(subflows, retries) and Graphviz, while the views need only the store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
from taskflow import states
from taskflow.engines.action_engine import compiler as tf_compiler

from vsan_flows.runtime import persistence
from vsan_flows.runtime.inspect import first_line, rebuild_flow, short_name, show_flow

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
            message = first_line(info["message"])
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
                               + first_line(proc.stderr.decode("utf-8", "replace")))
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return fmt
