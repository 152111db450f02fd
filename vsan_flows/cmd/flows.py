"""`vsan-flows flows ...`: list, show, draw, resume, revert, abandon and purge stored flows.

This module is argparse, confirmation and formatting. The views (list/show/graph) come from
:mod:`vsan_flows.runtime.inspect` and :mod:`vsan_flows.runtime.graph` as plain dicts/DOT; the
state changes and their guard rails (ownership, running-right-now, abandon keeps the record)
from :mod:`vsan_flows.runtime.admin`. revert, abandon and purge change or destroy things: they
ask unless ``--yes``, and refuse (rather than hang or guess) when stdin is not a terminal.
Everything printed, logged or shown in a ``--debug`` traceback is scrubbed of the configured
vCenter and database passwords, session cookies and NFC lease URLs (:mod:`.output`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import getpass
import io
import json
import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from oslo_config import cfg

from vsan_flows import exceptions
from vsan_flows.cmd import output

LOG = logging.getLogger(__name__)

#: Flow states in which a process may be executing the flow at this moment.
_ACTIVE = ("RUNNING", "RESUMING", "REVERTING", "SUSPENDING")


# --------------------------------------------------------------------------- argparse


def _age(text: str) -> dt.timedelta:
    from vsan_flows.runtime.inspect import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _owner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="act on a flow that is RUNNING on this host (only if no process runs "
                   "it: the store cannot tell) or that was abandoned")
    p.add_argument("--take-over", metavar="HOST",
                   help="act on a flow owned by HOST (which must be gone for good); the flow "
                   "then belongs to this host")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `flows` and its subcommands to the `vsan-flows` parser (called by cli.py)."""
    flows = sub.add_parser("flows", help="inspect and act on persisted spawn/snapshot flows",
                           description=__doc__.splitlines()[0])
    fsub = flows.add_subparsers(dest="flows_command", required=True, metavar="COMMAND")

    p = fsub.add_parser("list", help="list flows (id, operation, instance, state, host, ...)")
    p.add_argument("-f", "--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only flows in STATE (TaskFlow flow state, or 'abandoned'); "
                   "repeat or comma-separate for several")
    p.add_argument("--operation", choices=("spawn", "snapshot"))
    p.add_argument("--instance", metavar="NAME", help="instance name (shell pattern allowed)")
    p.add_argument("--host", help="only flows owned by HOST")
    p.add_argument("--older-than", type=_age, metavar="AGE",
                   help="started more than AGE ago (e.g. 90m, 2h, 3d, 1w)")
    p.add_argument("--newer-than", type=_age, metavar="AGE", help="started less than AGE ago")
    p.set_defaults(handler=cmd_list)

    p = fsub.add_parser("show", help="one flow: factory, inputs, atoms, failures, retries")
    p.add_argument("flow_id", metavar="ID")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_show)

    p = fsub.add_parser("graph", help="draw a flow's execution graph coloured by state")
    p.add_argument("flow_id", metavar="ID")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.png, FILE.svg, FILE.pdf (rendered with Graphviz dot) or FILE.dot")
    p.set_defaults(handler=cmd_graph)

    p = fsub.add_parser("resume", help="finish an interrupted flow of this host now")
    p.add_argument("flow_id", metavar="ID")
    _owner_options(p)
    p.set_defaults(handler=cmd_resume)

    p = fsub.add_parser("revert", help="undo everything a flow did (also retries a failed undo)")
    p.add_argument("flow_id", metavar="ID")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _owner_options(p)
    p.set_defaults(handler=cmd_revert)

    p = fsub.add_parser("abandon", help="never resume this flow; leave what it made in place")
    p.add_argument("flow_id", metavar="ID")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--reason", default="", help="why (kept with the flow)")
    _owner_options(p)
    p.set_defaults(handler=cmd_abandon)

    p = fsub.add_parser("purge", help="delete finished (SUCCESS/REVERTED) flows older than AGE")
    p.add_argument("--older-than", type=_age, required=True, metavar="AGE",
                   help="finished more than AGE ago (e.g. 7d)")
    p.add_argument("--include-abandoned", action="store_true",
                   help="also delete abandoned flows older than AGE")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_purge)


# --------------------------------------------------------------------------- formatting


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _state_label(row: Mapping) -> str:
    return f"{row['state']} (abandoned)" if row.get("abandoned") else str(row["state"])


def _short_id(value: str | None) -> str | None:
    return value[:8] if value and len(value) > 12 else value


# --------------------------------------------------------------------------- views


def _backend(conf: cfg.ConfigOpts) -> Any:
    """Open the store, after arming the output guard (see module doc)."""
    # Importing the store pulls in eventlet (via taskflow/oslo), which announces its own
    # deprecation over ten lines of stderr; that is noise around our one-line answers.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from vsan_flows.runtime import persistence

    output.guard(conf)
    return persistence.open_backend(conf)


def cmd_list(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows list`: table for people, JSON (stable keys, ISO times) and CSV for scripts."""
    from vsan_flows.runtime import inspect

    backend = _backend(conf)
    with contextlib.closing(backend):
        rows = inspect.list_flows(backend, state=args.state, operation=args.operation,
                                  instance=args.instance, older_than=args.older_than,
                                  newer_than=args.newer_than, host=args.host)
    if args.format == "json":
        output.out(json.dumps([{k: r[k] for k in inspect.LIST_FIELDS} for r in rows], indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(inspect.LIST_FIELDS)
        for r in rows:
            writer.writerow(["" if r[k] is None else r[k] for k in inspect.LIST_FIELDS])
        output.out(buf.getvalue().rstrip("\n"))
    elif not rows:
        output.out("no flows match")
    else:
        output.out(output.table([(r["id"], r["operation"], r["instance"], _short_id(r["image"]),
                      _state_label(r), r["host"], _when(r["started"]), _duration(r["duration"]))
                     for r in rows],
                    ("ID", "OPERATION", "INSTANCE", "IMAGE", "STATE", "HOST", "STARTED",
                     "DURATION")))
    return 0


def _failure_lines(label: str, info: Mapping | None, indent: str = "    ") -> list[str]:
    if not info:
        return []
    lines = [f"{indent}{label}: {info['type']}"]
    lines += [f"{indent}  {line}" for line in (info["message"] or "").splitlines()]
    if info.get("traceback"):
        lines.append(f"{indent}  traceback:")
        lines += [f"{indent}    {line}" for line in info["traceback"].rstrip().splitlines()]
    return lines


def _show_text(report: Mapping) -> str:
    out = [f"Flow {report['id']} ({report['name']})",
           f"  state:      {_state_label(report)}",
           f"  operation:  {report['operation']}   instance: {report['instance']}   "
           f"image: {report['image']}",
           f"  host:       {report['host']}   logbook: {report['logbook']}",
           f"  started:    {_when(report['started'])}   last change: "
           f"{_when(report['last_change'])}   duration: {_duration(report['duration'])}"]
    if report.get("abandoned_details"):
        a = report["abandoned_details"]
        out.append(f"  abandoned:  {_when(a.get('at'))} by {a.get('by')} (was "
                   f"{a.get('previous_state')}){': ' + a['reason'] if a.get('reason') else ''}")
    factory = report["factory"]
    call_args = [json.dumps(a) for a in factory["args"]]
    call_args += [f"{k}={json.dumps(v)}" for k, v in factory["kwargs"].items()]
    out.append(f"  factory:    {factory['name']}({', '.join(call_args)})")
    out.append("  inputs:")
    out += [f"    {k} = {json.dumps(v)}" for k, v in report["inputs"].items()]
    out.append("")
    rows = []
    for a in report["atoms"]:
        progress = a["progress"]
        rows.append((a["short_name"], a["kind"], a["state"], a["intention"],
                     a["attempts"] if a["kind"] == "retry" else
                     (f"via {a['retried_by']}" if a["retried_by"] else None),
                     f"{progress:.0%}" if isinstance(progress, (int, float)) else None,
                     _when(a["started"]) if a["started"] else None,
                     _when(a["finished"]) if a["finished"] else None,
                     a["result"]))
    out.append(output.table(rows, ("ATOM", "KIND", "STATE", "INTENTION", "ATTEMPTS", "PROGRESS",
                             "STARTED", "FINISHED", "RESULT")))
    out.append("  (TaskFlow records no atom start/end times; '-' means not recorded)")
    failed = [a for a in report["atoms"] if a["failure"] or a["revert_failure"]]
    if failed:
        out += ["", "Failures:"]
        for a in failed:
            out.append(f"  {a['short_name']} ({a['state']})")
            out += _failure_lines("execute raised", a["failure"])
            out += _failure_lines("revert raised", a["revert_failure"])
    for r in report["retries"]:
        out += ["", f"Retry history of {r['name']} (subflow {r['subflow']}, {r['state']}):"]
        if not r["attempts"]:
            out.append(f"  no attempts recorded{' (' + r['note'] + ')' if r['note'] else ''}")
        for attempt in r["attempts"]:
            if not attempt["failures"]:
                out.append(f"  attempt {attempt['attempt']}: no failure recorded")
            for f in attempt["failures"]:
                first = (f["message"] or "").splitlines()[0] if f["message"] else ""
                out.append(f"  attempt {attempt['attempt']}: failed in {f['atom']}: "
                           f"{f['type']}: {first}")
    return "\n".join(out)


def cmd_show(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows show ID`: everything stored about one flow (secrets scrubbed)."""
    from vsan_flows.runtime import inspect

    backend = _backend(conf)
    with contextlib.closing(backend):
        report = inspect.show_flow(backend, args.flow_id)
    output.out(json.dumps(report, indent=2) if args.format == "json" else _show_text(report))
    return 0


def cmd_graph(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows graph ID -o FILE`: the execution graph, atoms coloured by state."""
    from vsan_flows.runtime import graph

    backend = _backend(conf)
    with contextlib.closing(backend):
        dot = graph.flow_dot(backend, args.flow_id)
    fmt = graph.render(dot, args.output)
    output.out(f"wrote {args.output} ({fmt})")
    return 0


# --------------------------------------------------------------------------- actions


def _confirm(args: argparse.Namespace, action: str, question: str) -> bool:
    """True when confirmed; never blocks on a pipe, never assumes yes."""
    if getattr(args, "yes", False):
        return True
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise exceptions.VsanFlowsError(
            f"refusing to {action} without confirmation: stdin is not a terminal. "
            "Add --yes to confirm.")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        output.out(f"not confirmed: did not {action}")
        return False
    return True


def _describe(book: Any, fd: Any) -> str:
    meta = book.meta or {}
    return f"{meta.get('operation') or fd.name} of {meta.get('instance')!s} ({fd.state})"


def _drive(conf: cfg.ConfigOpts, backend: Any, fd: Any, action: Any, failed: str,
           hint: str) -> Any:
    """Run runner.resume/revert on a flow with live handles; its flow detail afterwards."""
    from vsan_flows import api
    from vsan_flows.runtime import persistence

    try:
        with api.open_handles(conf) as handles:  # as resume on service start does
            action(backend, fd, handles.transients(), engine=conf.vsan_flows.engine,
                   max_workers=conf.vsan_flows.max_workers, locks=api.flow_locks(conf))
    except exceptions.FlowBusy:
        raise  # started by a live process since _act looked: nothing was done
    except exceptions.VsanFlowsError as exc:
        _b, after = persistence.find_flow_detail(backend, fd.uuid)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise exceptions.FlowError(fd.uuid, f"{failed} {after.state}: {first}", hint) from None
    return persistence.find_flow_detail(backend, fd.uuid)[1]


def _act(conf: cfg.ConfigOpts, args: argparse.Namespace, action: str,
         check: Callable[[Any], None]) -> tuple[Any, Any, Any]:
    """Open the store, find the flow, apply the state check and the ownership guard."""
    from vsan_flows import api
    from vsan_flows.runtime import admin, persistence

    backend = _backend(conf)
    book, fd = persistence.find_flow_detail(backend, args.flow_id)
    check(fd)
    admin.check_may_act(book, fd, action, force=args.force, take_over=args.take_over,
                        running_by=api.flow_locks(conf).holder(book.uuid))
    return backend, book, fd


def cmd_resume(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows resume ID`: what the service does on restart, for one flow, now."""
    from vsan_flows.runtime import admin, runner

    backend, book, fd = _act(conf, args, "resume", admin.check_resumable)
    with contextlib.closing(backend):
        if args.take_over:
            admin.take_over(backend, book, args.take_over)
        if admin.is_abandoned(fd):  # --force: un-abandon, back to where it was
            admin.unabandon(backend, fd)
        after = _drive(conf, backend, fd, runner.resume, "resumed, then failed and ended",
                       f"See `vsan-flows flows show {fd.uuid}`.")
    output.out(f"flow {fd.uuid} resumed: {after.state}")
    return 0 if after.state == "SUCCESS" else 1


def cmd_revert(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows revert ID`: undo a flow (or retry its failed undo); asks first."""
    from vsan_flows.runtime import admin, runner

    backend, book, fd = _act(conf, args, "revert", admin.check_revertable)
    with contextlib.closing(backend):
        if not _confirm(args, f"revert flow {fd.uuid}",
                        f"Revert flow {fd.uuid}, {_describe(book, fd)}? Everything it created "
                        "is destroyed."):
            return 1
        if args.take_over:
            admin.take_over(backend, book, args.take_over)
        after = _drive(conf, backend, fd, runner.revert, "revert failed, flow is",
                       f"See `vsan-flows flows show {fd.uuid}`; fix the cause and run "
                       "revert again.")
    output.out(f"flow {fd.uuid} reverted: {after.state}")
    return 0 if after.state == "REVERTED" else 1


def cmd_abandon(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows abandon ID`: terminal FAILURE + an ``abandoned`` record (see runtime.admin)."""
    from vsan_flows import api
    from vsan_flows.runtime import admin, runner

    backend, book, fd = _act(conf, args, "abandon", admin.check_abandonable)
    with contextlib.closing(backend):
        if not _confirm(args, f"abandon flow {fd.uuid}",
                        f"Abandon flow {fd.uuid}, {_describe(book, fd)}? It will never be "
                        "resumed, and what it created stays until you remove it."):
            return 1
        if args.take_over:
            admin.take_over(backend, book, args.take_over)
        with api.flow_locks(conf).hold(book.uuid, fd.uuid):  # no runner may start meanwhile
            previous = admin.abandon(backend, fd,
                                     by=f"{getpass.getuser()}@{runner.host_name()}",
                                     reason=args.reason)
    output.out(f"flow {fd.uuid} abandoned (was {previous}); it will not be resumed. What it "
               f"created is listed by `vsan-flows flows show {fd.uuid}`.")
    return 0


def cmd_purge(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows purge --older-than AGE`: delete finished flows (and their atoms)."""
    from vsan_flows.runtime import inspect, persistence

    backend = _backend(conf)
    with contextlib.closing(backend):
        doomed = inspect.purge_candidates(backend, args.older_than,
                                          include_abandoned=args.include_abandoned)
        if not doomed:
            output.out("nothing to purge")
            return 0
        for row in doomed:
            verb = "would purge" if args.dry_run else "purge"
            output.out(f"{verb} {row['id']}  {row['operation']} {row['instance']}  "
                 f"{_state_label(row)}  finished {_when(row['last_change'] or row['started'])}")
        if args.dry_run:
            return 0
        if not _confirm(args, "purge flows", f"Delete these {len(doomed)} flow(s)?"):
            return 1
        for row in doomed:
            persistence.destroy_flow_detail(backend, row["id"])
    output.out(f"purged {len(doomed)} flow(s)")
    return 0
