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
    (re.compile(r"(<(?:\w+:)?(?:password|sessionID|key)>)[^<]*(</)", re.I), r"\1***\2"),
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


# Library loggers whose own records carry lease URLs (oslo.vmware logs them at DEBUG when
# it opens, reads or writes a disk URL). A logger-level filter cleans the record before any
# handler, ours or the host application's, sees it.
_URL_LOGGERS = ("oslo_vmware.rw_handles", "oslo_vmware.image_transfer", "oslo_vmware.api",
                "oslo_vmware.service", "urllib3.connection", "urllib3.connectionpool")


def guard_library_logs() -> None:
    """suds logs whole SOAP envelopes at DEBUG (Login's password, every sessionID): those
    records never leave its logger. oslo.vmware's lease URLs are redacted at the source."""
    suds = logging.getLogger("suds")
    if suds.getEffectiveLevel() < logging.INFO:
        suds.setLevel(logging.INFO)
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
