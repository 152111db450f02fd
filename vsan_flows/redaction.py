"""Keep secrets out of logs and output: the one place that knows what a secret looks like.

Passwords are masked where they are read (config is secret=True, URLs are masked); what can
still slip through a library's own log line is a session cookie or an NFC lease URL (its path
is a capability for as long as the lease lives). This filter rewrites both in every record.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(/nfc/)[^/\s\"']+"), r"\1***"),
    (re.compile(r"(vmware_soap_session=)[\"']?[^;\s\"']+", re.I), r"\1***"),
    (re.compile(r"(vmware_cgi_ticket=)[^;\s\"']+", re.I), r"\1***"),
    (re.compile(r"(Cookie:\s*)[^\r\n]+", re.I), r"\1***"),
    (re.compile(r"(<(?:password|sessionID|key)>)[^<]*(</)", re.I), r"\1***\2"),
    (re.compile(r"(://[^:/\s@]+:)[^@\s/]+(@)"), r"\1***\2"),
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Attach the filter to every handler of ``logger`` (root by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
