"""`vsan-flows flows ...`: list, show, draw, resume, revert, abandon and purge stored flows.

The views (list/show/graph) read the store only; they go through
:mod:`vsan_flows.runtime.inspect`, which returns plain dicts, so this module is formatting
and the guard rails around the commands that change something:

* **Ownership.** Every flow's logbook names the host that runs it; that host's compute
  service resumes it on restart. Acting on another host's flow from here would race it, so
  resume/revert/abandon refuse, unless the admin types that host's name (``--take-over
  HOST``) to say it is gone for good; the flow then belongs to this host.
* **Running right now.** The store records no process id, so "RUNNING" cannot be told apart
  from "was RUNNING when the process died". A RUNNING flow of this host is refused unless
  ``--force`` says no process runs it (e.g. after a crash, while the service is stopped).
* **Abandon keeps the record.** ``abandon`` sets the flow's state to FAILURE (terminal: the
  restart path only resumes unfinished states) and records who, when, why and the previous
  state in the flow detail's meta under ``abandoned``. It does not destroy the flow detail,
  because the stored results (VM ids, datastore paths, lease ids) are exactly what an admin
  needs to clean up by hand; ``purge --include-abandoned`` removes it later.
* **Confirmation.** revert, abandon and purge change or destroy things; they ask unless
  ``--yes``, and refuse (rather than hang or guess) when stdin is not a terminal.
* **Secrets.** Everything printed, logged or shown in a ``--debug`` traceback is scrubbed of
  the configured vCenter and database passwords (literally), session cookies and NFC lease
  URLs, on top of the CLI-wide redaction.
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
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from oslo_config import cfg

from vsan_flows import exceptions

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


# --------------------------------------------------------------------------- secrets


class _Secrets:
    """The literal secret values of this configuration, and a scrubber that removes them.

    Pattern-based redaction cannot know a password that appears outside ``user:pass@`` (a
    SOAP Login envelope logged by suds at debug level, a driver message); the configured
    values themselves can be removed wherever they appear.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        values = []
        with contextlib.suppress(cfg.Error, AttributeError):
            values.append(conf.vmware.host_password)
        with contextlib.suppress(cfg.Error, AttributeError):
            url = conf.vsan_flows.persistence_connection or ""
            match = re.search(r"://[^/@]*?:([^@/]*)@", url)
            if match:
                values.append(match.group(1))
            values += re.findall(r"(?i)[?&;](?:password|passwd|pwd)=([^&;#]*)", url)
        values += [unquote(v) for v in values if v]
        # Very short values would shred ordinary text and are not what leaks.
        self.values = sorted({v for v in values if v and len(v) >= 3}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        from vsan_flows.runtime.inspect import scrub

        text = scrub(text)
        for value in self.values:
            text = text.replace(value, "***")
        return text


class _ScrubFilter(logging.Filter):
    def __init__(self, secrets: _Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem
            return True
        cleaned = self.secrets.scrub(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.secrets.scrub(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_SECRETS: _Secrets | None = None


def _guard_output(conf: cfg.ConfigOpts) -> _Secrets:
    """Scrub every later log line and a --debug traceback of this run's secrets."""
    global _SECRETS
    secrets = _SECRETS = _Secrets(conf)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ScrubFilter(secrets))

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(secrets.scrub(text))

    sys.excepthook = hook
    return secrets


def _out(text: str = "") -> None:
    """Print to stdout, scrubbed (results and failures come from the store)."""
    if _SECRETS is not None:
        text = _SECRETS.scrub(text)
    print(text, flush=True)


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


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


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

    _guard_output(conf)
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
        _out(json.dumps([{k: r[k] for k in inspect.LIST_FIELDS} for r in rows], indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(inspect.LIST_FIELDS)
        for r in rows:
            writer.writerow(["" if r[k] is None else r[k] for k in inspect.LIST_FIELDS])
        _out(buf.getvalue().rstrip("\n"))
    elif not rows:
        _out("no flows match")
    else:
        _out(_table([(r["id"], r["operation"], r["instance"], _short_id(r["image"]),
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
    out.append(_table(rows, ("ATOM", "KIND", "STATE", "INTENTION", "ATTEMPTS", "PROGRESS",
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
    _out(json.dumps(report, indent=2) if args.format == "json" else _show_text(report))
    return 0


def cmd_graph(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows graph ID -o FILE`: the execution graph, atoms coloured by state."""
    from vsan_flows.runtime import inspect

    backend = _backend(conf)
    with contextlib.closing(backend):
        dot = inspect.flow_dot(backend, args.flow_id)
    fmt = inspect.render(dot, args.output)
    _out(f"wrote {args.output} ({fmt})")
    return 0


# --------------------------------------------------------------------------- guard rails


def _is_abandoned(fd: Any) -> bool:
    """Abandoned and still in the FAILURE abandon put it in (not forced on since)."""
    return bool((fd.meta or {}).get("abandoned")) and fd.state == "FAILURE"


def _refuse(flow_id: str, problem: str, fix: str | None = None) -> exceptions.FlowError:
    return exceptions.FlowError(flow_id, problem, fix)


def _check_may_act(book: Any, fd: Any, args: argparse.Namespace, action: str) -> None:
    """Refuse (one clear line) what could race another process or host; see module doc."""
    from vsan_flows.runtime import runner

    me = runner.host_name()
    owner = (book.meta or {}).get("host")
    taking_over = bool(args.take_over) and owner not in (None, me)
    if owner not in (None, me) and args.take_over != owner:
        raise _refuse(fd.uuid, f"belongs to host {owner} (state {fd.state}), not {me}",
                      f"Run `vsan-flows flows {action} {fd.uuid}` on {owner}; if {owner} is "
                      f"gone for good, add --take-over {owner}.")
    if args.take_over and owner in (None, me):
        raise _refuse(fd.uuid, f"already belongs to this host ({me}); --take-over is for "
                      "flows of another host", "Drop --take-over.")
    if fd.state in _ACTIVE and not taking_over and not args.force:
        raise _refuse(fd.uuid, f"is {fd.state} on this host and may be running right now "
                      "(the store records no process id, so this cannot be checked)",
                      f"If no nova-compute/vsan-flows process runs it (it crashed, or the "
                      f"service is stopped), add --force to {action} it.")
    abandoned = (fd.meta or {}).get("abandoned") if _is_abandoned(fd) else None
    if abandoned and not args.force:
        raise _refuse(fd.uuid, f"was abandoned at {abandoned.get('at')} by "
                      f"{abandoned.get('by')}", f"Add --force to {action} it anyway.")


def _take_over(backend: Any, book: Any, args: argparse.Namespace) -> None:
    """Record this host as the flow's owner, so this host's restarts resume it from now on."""
    if not args.take_over:
        return
    from vsan_flows.runtime import runner

    book.meta = {**(book.meta or {}), "host": runner.host_name(),
                 "taken_over_from": args.take_over}
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)


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
        _out(f"not confirmed: did not {action}")
        return False
    return True


def _describe(book: Any, fd: Any) -> str:
    meta = book.meta or {}
    return f"{meta.get('operation') or fd.name} of {meta.get('instance')!s} ({fd.state})"


# --------------------------------------------------------------------------- actions


def _with_live_handles(conf: cfg.ConfigOpts, fn: Callable[[Mapping[str, Any]], Any]) -> Any:
    """Connect to vCenter (as resume on service start does), run ``fn``, log out."""
    from vsan_flows import api

    transients = api.live_handles(conf)
    try:
        return fn(transients)
    finally:
        with contextlib.suppress(Exception):
            transients["vsphere"].session.logout()


def cmd_resume(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows resume ID`: what the service does on restart, for one flow, now."""
    from vsan_flows.runtime import persistence, runner

    backend = _backend(conf)
    with contextlib.closing(backend):
        book, fd = persistence.find_flow_detail(backend, args.flow_id)
        if fd.state in ("SUCCESS", "REVERTED"):
            raise _refuse(fd.uuid, f"already finished ({fd.state}); there is nothing to resume")
        if fd.state == "FAILURE" and not _is_abandoned(fd):
            raise _refuse(fd.uuid, "ended in FAILURE (an undo step failed)",
                          f"Retry the undo with `vsan-flows flows revert {fd.uuid}`.")
        _check_may_act(book, fd, args, "resume")
        _take_over(backend, book, args)
        if _is_abandoned(fd):  # --force: un-abandon, back to where it was
            meta = dict(fd.meta)
            fd.state = meta["abandoned"].get("previous_state") or "SUSPENDED"
            meta["abandoned_earlier"] = meta.pop("abandoned")
            fd.meta = meta
            with contextlib.closing(backend.get_connection()) as conn:
                conn.update_flow_details(fd)
        after = _drive(conf, backend, fd, runner.resume, "resumed, then failed and ended",
                       f"See `vsan-flows flows show {fd.uuid}`.")
    _out(f"flow {fd.uuid} resumed: {after.state}")
    return 0 if after.state == "SUCCESS" else 1


def _drive(conf: cfg.ConfigOpts, backend: Any, fd: Any, action: Any, failed: str,
           hint: str) -> Any:
    """Run runner.resume/revert on a flow with live handles; its flow detail afterwards."""
    from vsan_flows.runtime import persistence

    try:
        _with_live_handles(conf, lambda t: action(backend, fd, t,
                                                  engine=conf.vsan_flows.engine))
    except exceptions.VsanFlowsError as exc:
        _b, after = persistence.find_flow_detail(backend, fd.uuid)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(fd.uuid, f"{failed} {after.state}: {first}", hint) from None
    return persistence.find_flow_detail(backend, fd.uuid)[1]


def cmd_revert(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows revert ID`: undo a flow (or retry its failed undo); asks first."""
    from vsan_flows.runtime import persistence, runner

    backend = _backend(conf)
    with contextlib.closing(backend):
        book, fd = persistence.find_flow_detail(backend, args.flow_id)
        if fd.state == "REVERTED":
            raise _refuse(fd.uuid, "is already REVERTED; there is nothing to undo")
        if fd.state == "SUCCESS":
            raise _refuse(fd.uuid, "finished successfully; reverting it would destroy what it "
                          "built, which belongs to the instance/image now",
                          "Delete the instance or image through nova/glance instead.")
        _check_may_act(book, fd, args, "revert")
        if not _confirm(args, f"revert flow {fd.uuid}",
                        f"Revert flow {fd.uuid}, {_describe(book, fd)}? Everything it created "
                        "is destroyed."):
            return 1
        _take_over(backend, book, args)
        after = _drive(conf, backend, fd, runner.revert, "revert failed, flow is",
                       f"See `vsan-flows flows show {fd.uuid}`; fix the cause and run "
                       "revert again.")
    _out(f"flow {fd.uuid} reverted: {after.state}")
    return 0 if after.state == "REVERTED" else 1


def cmd_abandon(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    """`flows abandon ID`: terminal FAILURE + an ``abandoned`` record; see module doc."""
    from vsan_flows.runtime import persistence, runner

    backend = _backend(conf)
    with contextlib.closing(backend):
        book, fd = persistence.find_flow_detail(backend, args.flow_id)
        if _is_abandoned(fd):
            raise _refuse(fd.uuid, "is already abandoned")
        if fd.state in ("SUCCESS", "REVERTED"):
            raise _refuse(fd.uuid, f"already finished ({fd.state}); nothing would resume it",
                          "Remove finished flows with `vsan-flows flows purge`.")
        _check_may_act(book, fd, args, "abandon")
        if not _confirm(args, f"abandon flow {fd.uuid}",
                        f"Abandon flow {fd.uuid}, {_describe(book, fd)}? It will never be "
                        "resumed, and what it created stays until you remove it."):
            return 1
        _take_over(backend, book, args)
        previous = fd.state
        fd.meta = {**(fd.meta or {}), "abandoned": {
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "by": f"{getpass.getuser()}@{runner.host_name()}",
            "previous_state": previous,
            "reason": args.reason,
        }}
        fd.state = "FAILURE"
        with contextlib.closing(backend.get_connection()) as conn:
            conn.update_flow_details(fd)
    _out(f"flow {fd.uuid} abandoned (was {previous}); it will not be resumed. What it "
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
            _out("nothing to purge")
            return 0
        for row in doomed:
            verb = "would purge" if args.dry_run else "purge"
            _out(f"{verb} {row['id']}  {row['operation']} {row['instance']}  "
                 f"{_state_label(row)}  finished {_when(row['last_change'] or row['started'])}")
        if args.dry_run:
            return 0
        if not _confirm(args, "purge flows", f"Delete these {len(doomed)} flow(s)?"):
            return 1
        for row in doomed:
            persistence.destroy_flow_detail(backend, row["id"])
    _out(f"purged {len(doomed)} flow(s)")
    return 0
