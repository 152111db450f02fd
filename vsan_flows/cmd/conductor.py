"""`vsan-flows conductor` and `vsan-flows jobs ...`: run and post flows on the ZooKeeper jobboard.

* ``conductor [--max-jobs N]`` claims jobs and runs their flows until SIGTERM or Ctrl-C. A stop
  lets the running task finish, suspends the flow and releases its job, which another
  conductor resumes; a second Ctrl-C exits at once (the claim then lapses with the ZooKeeper
  session, and another conductor takes the job over as after a crash).
* ``jobs post spawn|snapshot INSTANCE IMAGE [--wait]`` posts a job (prints its id); with
  ``--wait`` it also waits for the flow's end and prints its facts, or fails with its error.
* ``jobs list`` shows the jobs on the board: id, claimed/unclaimed, owner, what and when.

Needs ``[vsan_flows] jobboard_hosts`` and the same ``persistence_connection`` on every host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading

from oslo_config import cfg

from vsan_flows.cmd import output


def register(sub: argparse._SubParsersAction) -> None:
    """Add `conductor` and `jobs` to the `vsan-flows` parser (called by cli.py)."""
    p = sub.add_parser("conductor", help="claim and run jobs from the ZooKeeper jobboard",
                       description=__doc__.splitlines()[0])
    p.add_argument("--max-jobs", type=int, metavar="N",
                   help="exit after dispatching N jobs (default: run until stopped)")
    p.set_defaults(handler=cmd_conductor)

    jobs = sub.add_parser("jobs", help="post and list jobs on the ZooKeeper jobboard")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = jsub.add_parser("post", help="post a spawn or snapshot as a job for the conductors")
    p.add_argument("operation", choices=("spawn", "snapshot"))
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("image", metavar="IMAGE", help="image id (snapshot: the empty target image)")
    p.add_argument("--power-on", action="store_true", help="spawn only: power the VM on")
    p.add_argument("--wait", action="store_true",
                   help="wait for the flow to end; print its facts or fail with its error")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --wait: give up waiting after SECONDS (the job goes on)")
    p.set_defaults(handler=cmd_post)

    p = jsub.add_parser("list", help="jobs on the board: id, state, owner, what, when")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_list)


def _quiet(args: argparse.Namespace) -> None:
    """kazoo logs every failed connection attempt; the command reports one line instead."""
    if not getattr(args, "debug", False):
        logging.getLogger("taskflow.utils.kazoo_utils").setLevel(logging.ERROR)


def cmd_conductor(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    _quiet(args)
    from vsan_flows import api
    from vsan_flows.runtime import conductor

    if args.max_jobs is not None and args.max_jobs < 1:
        raise ValueError("--max-jobs must be at least 1")
    # Claims, stops and releases are what an operator watches a conductor for.
    output.log_level_at_least_info(conductor.__name__)
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"vsan-flows conductor: {signal.Signals(signum).name}: finishing the current "
              "task, then releasing its job (Ctrl-C again to exit now)", file=sys.stderr,
              flush=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as stack:
            counts = conductor.run_conductor(
                conf, lambda: stack.enter_context(api.open_handles(conf)).transients(),
                stop_event=stop, max_jobs=args.max_jobs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"vsan-flows conductor {conductor.conductor_name(conf)}: {counts['consumed']} "
          f"job(s) done, {counts['released']} released, {counts['trashed']} trashed",
          file=sys.stderr, flush=True)
    return 0


def cmd_post(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    _quiet(args)
    from vsan_flows import api
    from vsan_flows.runtime import jobs, persistence

    kwargs = {"power_on": True} if args.power_on else {}
    if args.power_on and args.operation != "spawn":
        raise ValueError("--power-on applies to spawn only")
    plan = api.plan(conf, args.operation, args.instance, args.image, **kwargs)
    backend = persistence.open_backend(conf)
    try:
        with jobs.connect(conf, backend) as board:
            job_id = jobs.post(conf, plan, backend=backend, board=board)
            output.out(job_id)
            if not args.wait:
                return 0
            result = jobs.wait(conf, job_id, args.timeout, backend=backend, board=board)
    finally:
        backend.close()
    output.out(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def cmd_list(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    _quiet(args)
    from vsan_flows.runtime import jobs

    rows = jobs.list_jobs(conf)
    if args.format == "json":
        output.out(json.dumps(rows, indent=2))
        return 0
    if not rows:
        output.out("no jobs on the board")
        return 0
    output.out(output.table(
        [(r["id"], r["state"], r["owner"], r["operation"] or "?", r["instance"] or "?",
          r["image"] or "?", r["posted"] or "?") for r in rows],
        ("JOB", "STATE", "OWNER", "OPERATION", "INSTANCE", "IMAGE", "POSTED")))
    return 0
