"""What the CLI prints: one table format and one scrubbed way out, for every command.

Everything printed may come from the store or from an error text, so it all passes through the
same scrubber (:mod:`vsan_flows.redaction`): patterns, the session cookie name, and the
literal secret values of this run's configuration once :func:`guard` has seen it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from oslo_config import cfg

from vsan_flows import redaction

_secrets = redaction.Secrets()


def guard(conf: cfg.ConfigOpts) -> redaction.Secrets:
    """From now on, scrub this configuration's secrets from output, logs and tracebacks."""
    global _secrets
    secrets = _secrets = redaction.Secrets.from_conf(conf)
    redaction.install(secrets=secrets)

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(secrets.scrub(text))

    sys.excepthook = hook
    return secrets


def scrub(text: str) -> str:
    return _secrets.scrub(text)


def out(text: str = "") -> None:
    """Print to stdout, scrubbed."""
    print(_secrets.scrub(text), flush=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns two spaces apart; ``None`` shows as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def log_level_at_least_info(logger_name: str) -> None:
    """Make ``logger_name`` report at INFO at least (what an operator watches for)."""
    log = logging.getLogger(logger_name)
    log.setLevel(min(logging.INFO, log.getEffectiveLevel()))
