"""`vsan-flows`: the operator's command (demo, flow inspection, resume).

Every failure is one line on stderr and a non-zero exit; a traceback only with --debug.
Secrets never reach the output: option values marked secret are never printed, and error
text goes through the same redaction as the logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows import exceptions, redaction


def _load_conf(args: argparse.Namespace) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    vconf.register_opts(conf)
    # Without --config-file, oslo.config's usual search applies
    # (/etc/vsan-flows/vsan-flows.conf, ~/.vsan-flows/...), as for every OpenStack service.
    files = args.config_file or None
    try:
        conf([], project="vsan-flows", default_config_files=files)
    except cfg.Error as exc:
        raise exceptions.ConfigError("configuration", str(exc)) from None
    return conf


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsan-flows", description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", action="append",
                        help="vsan-flows.conf with [vmware] and [vsan_flows] (repeatable; "
                        "default: oslo.config's search, e.g. /etc/vsan-flows/vsan-flows.conf)")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logs (secrets stay masked)")
    sub = parser.add_subparsers(dest="command", required=True)

    from vsan_flows.cmd import demo

    demo.register(sub)
    __import__("vsan_flows.cmd.conductor", fromlist=["register"]).register(sub)
    try:
        from vsan_flows.cmd import flows
    except ImportError:  # pragma: no cover - flows inspection not installed
        flows = None
    if flows is not None:
        flows.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install()
    if not args.debug:
        # Library deprecation chatter (eventlet, urllib3) is for developers, not operators.
        # eventlet's own warning class is not a DeprecationWarning, hence the message match.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
    # The flow log (every transition, failures with tracebacks) is the service's record; the
    # CLI reports the outcome in one line instead, unless --debug.
    for noisy in ("suds", "urllib3", "oslo_vmware", "stevedore", "vsan_flows.flow"):
        if not args.debug:
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        conf = _load_conf(args)
        return int(args.handler(conf, args) or 0)
    except KeyboardInterrupt:
        print("vsan-flows: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if args.debug:
            raise
        text = redaction.redact(str(exc)).splitlines()
        print(f"vsan-flows: error: {text[0] if text else type(exc).__name__}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
