"""Keep secrets out of logs and output: the one place that knows what a secret looks like.

What counts as a secret here: passwords (the vCenter login, a database URL's), vCenter session
cookies and SOAP session ids, and NFC lease URLs (their path is a capability for as long as the
lease lives). Three kinds of protection, all defined in this module and used everywhere else:

* **Patterns** (:func:`redact`): what a secret looks like in any text - ``/nfc/<ticket>``,
  ``vmware_soap_session=...``, ``user:password@`` in URLs, ``<password>`` in SOAP envelopes.
* **Literal values** (:class:`Secrets`): a pattern cannot know a password that appears on its
  own (a driver error quoting it, a traceback's locals); the configured values are removed
  wherever they appear.
* **Keys** (:func:`mask_mapping`): a stored dict value under a key like ``password`` or
  ``ticket`` is replaced whole.

Logging gets these through :class:`RedactingFilter` (on handlers and on the loggers of
libraries that log URLs); printed text through :meth:`Secrets.scrub` / :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"

_PATTERNS = [
    (re.compile(r"(/nfc/)[^/\s\"']+"), r"\1***"),
    (re.compile(r"(vmware_soap_session=)[\"']?[^;\s\"']+", re.I), r"\1***"),
    (re.compile(r"(vmware_cgi_ticket=)[^;\s\"']+", re.I), r"\1***"),
    (re.compile(r"(Cookie:\s*)[^\r\n]+", re.I), r"\1***"),
    (re.compile(r"(<(?:\w+:)?(?:password|sessionID|key)>)[^<]*(</)", re.I), r"\1***\2"),
    (re.compile(r"(://[^:/\s@]+:)[^@\s/]+(@)"), r"\1***\2"),
]

#: Dict keys whose values are secrets whatever they hold.
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|ticket|cookie|session|credential|auth",
                         re.IGNORECASE)
#: Admin views drop even the session cookie's *name*, so "never shown" is checkable.
_SESSION_NAME = re.compile(r"vmware_soap_session", re.IGNORECASE)

_SECRET_QUERY = re.compile(r"([?&;](?:password|passwd|pwd)=)[^&;#]*", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: Values shorter than this are not scrubbed literally: they would shred ordinary text.
_MIN_LITERAL = 3


def redact(text: str) -> str:
    """``text`` with every secret-shaped part masked (patterns only)."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def scrub(text: Any) -> str:
    """Stricter :func:`redact` for admin output: no session cookie name either."""
    return _SESSION_NAME.sub("<session cookie>", redact(str(text)))


def mask_mapping(value: Any) -> Any:
    """``value`` with anything under a secret-looking key replaced by ``***`` (recursive)."""
    if isinstance(value, Mapping):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) else mask_mapping(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_mapping(v) for v in value)
    return value


# --------------------------------------------------------------------------- URLs


def _password_span(url: str) -> tuple[int, int] | None:
    """Start/end of the password in ``scheme://user:password@host...``, or None.

    Uses the *last* ``@``: an unencoded ``@`` or ``/`` inside a password then still ends up
    masked. A URL whose query holds an ``@`` is over-masked (host hidden), never under-masked.
    """
    match = _SCHEME.match(url)
    start = match.end() if match else 0
    at = url.rfind("@", start)
    if at < 0:
        return None
    colon = url.find(":", start, at)
    if colon < 0 or "/" in url[start:colon]:
        return None
    return colon + 1, at


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``.

    Works on malformed URLs too: it is called on exactly the URLs that failed to parse.
    """
    url = str(url)
    span = _password_span(url)
    if span is not None:
        url = url[: span[0]] + MASK + url[span[1]:]
    return _SECRET_QUERY.sub(r"\1***", url)


def url_passwords(url: str) -> list[str]:
    """The password(s) in ``url`` as written and decoded, longest first."""
    found = []
    span = _password_span(url)
    if span is not None:
        found.append(url[span[0]: span[1]])
    found += [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(url)]
    return _literal_set(found)


def _literal_set(values: Iterable[str | None]) -> list[str]:
    values = [v for v in values if v]
    values += [unquote(v) for v in values]
    return sorted({v for v in values if len(v) >= _MIN_LITERAL}, key=len, reverse=True)


# --------------------------------------------------------------------------- literal values


class Secrets:
    """Literal secret values (configured passwords) and a scrubber that removes them too."""

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self.values = _literal_set(values)

    @classmethod
    def from_url(cls, url: str) -> Secrets:
        return cls(url_passwords(url))

    @classmethod
    def from_conf(cls, conf: Any) -> Secrets:
        """The vCenter password and the persistence URL's password(s) of ``conf``."""
        values: list[str | None] = []
        with contextlib.suppress(Exception):
            values.append(conf.vmware.host_password)
        with contextlib.suppress(Exception):
            values += url_passwords(conf.vsan_flows.persistence_connection or "")
        return cls(values)

    def remove(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text

    def redact(self, text: str) -> str:
        """Patterns, then literal values (for logs)."""
        return self.remove(redact(text))

    def scrub(self, text: Any) -> str:
        """Patterns, the session cookie name, then literal values (for admin output)."""
        return self.remove(scrub(text))


# --------------------------------------------------------------------------- logging


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and in its formatted traceback."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        super().__init__()
        self.secrets = secrets or Secrets()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        cleaned = self.secrets.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.secrets.redact(record.exc_text)
        return True


def _add_filter(target: logging.Filterer, secrets: Secrets | None) -> None:
    for f in list(target.filters):
        if isinstance(f, RedactingFilter):
            if secrets is None or f.secrets.values == secrets.values:
                return
            target.removeFilter(f)  # a newer set of literal values replaces the old one
    target.addFilter(RedactingFilter(secrets))


def install(logger: logging.Logger | None = None, secrets: Secrets | None = None) -> None:
    """Attach the filter to every handler of ``logger`` (root by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        _add_filter(handler, secrets)


def guard_logger(logger: logging.Logger, secrets: Secrets | None = None) -> None:
    """Filter ``logger``'s own records, before any handler (ours or the host's) sees them."""
    _add_filter(logger, secrets)


# Loggers whose own records can carry lease URLs or error texts from vCenter: oslo.vmware logs
# disk URLs at DEBUG when it opens, reads or writes them; the flow log carries every failure.
_GUARDED_LOGGERS = ("oslo_vmware.rw_handles", "oslo_vmware.image_transfer", "oslo_vmware.api",
                    "oslo_vmware.service", "urllib3.connection", "urllib3.connectionpool",
                    "vsan_flows.flow")


def _loaded_children(name: str) -> list[logging.Logger]:
    return [logger for key, logger in list(logging.Logger.manager.loggerDict.items())
            if key.startswith(name + ".") and isinstance(logger, logging.Logger)]


def guard_library_logs(secrets: Secrets | None = None) -> None:
    """Filter the loggers that can carry secrets, at the source, whoever owns the handlers.

    suds logs whole SOAP envelopes at DEBUG (Login's password, every sessionID): those
    records never leave its logger. The others are redacted by pattern and, given
    ``secrets``, by the configured values too (nova, not us, owns the handlers).
    """
    # Their own level, not the effective one: a host that turns the root logger to DEBUG
    # later (nova's debug = true, a test's caplog) must not reopen them. suds.metrics logs
    # every reply: lease info with its disk URLs (tickets), session keys.
    for logger in [logging.getLogger("suds"), *_loaded_children("suds")]:
        if logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
    for name in _GUARDED_LOGGERS:
        guard_logger(logging.getLogger(name), secrets)
