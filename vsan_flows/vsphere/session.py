"""The oslo.vmware session, built from [vmware] options, and its failures made plain.

One session per process: suds loads the WSDL and logs in in about two seconds, so tasks never
build their own. A dropped or expired vCenter session is re-established by oslo.vmware itself
(it re-logs in on NotAuthenticated and retries the call), through our bounded login
(bound_logins): a vCenter that is gone by then is an error after ``api_retry_count`` retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field

import urllib3
from oslo_config import cfg
from oslo_vmware import api
from oslo_vmware import exceptions as vexc

from vsan_flows import exceptions, redaction
from vsan_flows.vsphere import heap, schema_cache, suds_replies

LOG = logging.getLogger(__name__)

# A vCenter that does not answer TCP within this many seconds counts as one failed attempt.
PROBE_TIMEOUT = 5.0
# Back-off between login attempts on an unreachable vCenter: 1, 2, 4, 8, 10, 10... seconds.
MAX_BACKOFF = 10.0


@dataclass
class VSphere:
    """A live session plus the facts tasks need to reach lease URLs; never persisted."""

    session: api.VMwareAPISession
    host: str
    port: int
    cluster_name: str | None
    transfer_timeout: int
    # How lease (NFC) URLs are verified, as for the SOAP endpoint: a CA bundle path, True for
    # the system bundle, False when [vmware] insecure. The lease's own thumbprint, when vCenter
    # gives one, is checked in addition.
    cacerts: bool | str = False
    # Inventory references that do not change while the process lives (cluster, pool,
    # folder): looked up once, never persisted.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def vim(self):
        return self.session.vim

    def close(self) -> None:
        """Log out of vCenter; a session that is already gone is not an error."""
        with contextlib.suppress(Exception):
            self.session.logout()

    def cookies(self) -> list[str]:
        """The session's cookie values (for tests proving they never leak)."""
        return [c.value for c in self.vim.client.cookiejar]


def _probe(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise exceptions.VCenterUnreachable(host, port, reason) from None


def _tls_failure(exc: BaseException) -> str | None:
    """Why certificate verification failed, when that is what ``exc`` (or its cause) is."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or "certificate verify failed"
        if isinstance(e, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
            return "certificate verify failed"
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__,
                 *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]]
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "certificate verify failed"
    return None


def _session_path(host: str, port: int, ca_file: str | None,
                  insecure: bool) -> tuple[bool | str, bool]:
    """(``verify`` as oslo.vmware's transport gets it from requests, whether via a proxy).

    oslo.vmware (``service.RequestsTransport``) passes the CA bundle when one is set, else
    "verify" unless insecure. requests then takes ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
    from the environment for a plain True, else its own default bundle, and the environment's
    proxy for this URL (``no_proxy`` honoured).
    """
    import requests

    verify: bool | str = ca_file if ca_file else not insecure
    url = f"https://{host}:{port}/sdk"
    settings = requests.Session().merge_environment_settings(url, {}, None, verify, None)
    proxied = requests.utils.select_proxy(url, settings["proxies"]) is not None
    verify = settings["verify"]
    if verify is True:
        verify = requests.utils.DEFAULT_CA_BUNDLE_PATH
    return verify, proxied


def _handshake(host: str, port: int, verify: str, ca_file: str | None) -> None:
    """One TLS handshake with the verification requests applies (urllib3, hostname checked)."""
    conn = urllib3.connection.HTTPSConnection(
        host, port, timeout=PROBE_TIMEOUT, cert_reqs="CERT_REQUIRED",
        **({"ca_cert_dir": verify} if os.path.isdir(verify) else {"ca_certs": verify}))
    try:
        conn.connect()
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        reason = _tls_failure(exc)
        if reason is not None:
            raise exceptions.VCenterCertificateError(host, port, reason, ca_file) from None
        raise exceptions.VCenterUnreachable(
            host, port, getattr(exc, "strerror", None) or type(exc).__name__) from None
    finally:
        conn.close()


def check_before_login(host: str, port: int, *, ca_file: str | None, insecure: bool,
                       retries: int, scheme: str = "https") -> None:
    """What a session's login would run into, found without SOAP and reported at once.

    For a session we do not build (nova's driver logs its own in, and oslo.vmware reports an
    untrusted certificate as requests' SSLError, naming no option): a TCP connect and, unless
    nothing is verified, a TLS handshake verified exactly as that session's transport will
    verify it. A certificate failure raises VCenterCertificateError at once; a vCenter that
    does not answer is tried ``retries + 1`` times (the back-off of our own login), then
    VCenterUnreachable. ``insecure`` without ``ca_file`` checks no certificate, as the session
    will not either. Through a proxy (``https_proxy``) our direct connection is not the
    session's way to vCenter, so nothing is checked: the session goes as it would.
    """
    if ca_file and not os.path.exists(ca_file):
        raise exceptions.ConfigError("[vmware] ca_file", f"{ca_file} does not exist",
                                     "Set it to the CA bundle that signed vCenter's "
                                     "certificate.")
    verify: bool | str = False
    if scheme == "https":
        verify, proxied = _session_path(host, port, ca_file, insecure)
        if proxied:
            LOG.debug("vCenter %s:%s is reached through a proxy: not checked before login",
                      host, port)
            return

    def once() -> None:
        if verify is False:
            _probe(host, port)
        else:
            _handshake(host, port, verify, ca_file)

    _bounded(once, host, port, retries + 1, ca_file)


def _bounded(once, host: str, port: int, attempts: int, ca_file: str | None) -> None:
    """Call ``once`` until it returns, at most ``attempts`` times, backing off 1, 2, 4... s.

    ``once`` raises VCenterUnreachable (or oslo.vmware's VimConnectionException) for a failure
    worth another try; a certificate failure among them is final at once.
    """
    for attempt in range(attempts):
        try:
            once()
            return
        except (vexc.VimConnectionException, exceptions.VCenterUnreachable) as exc:
            reason = _tls_failure(exc)
            if reason is not None:
                raise exceptions.VCenterCertificateError(host, port, reason, ca_file) from None
            if attempt + 1 >= attempts:
                if isinstance(exc, exceptions.VCenterUnreachable):
                    raise exceptions.VCenterUnreachable(
                        host, port, f"{exc.reason} ({attempts} attempts)") from None
                raise exceptions.VCenterUnreachable(
                    host, port,
                    f"{type(exc.cause or exc).__name__} ({attempts} attempts)") from None
            delay = min(2.0 ** attempt, MAX_BACKOFF)
            LOG.warning("vCenter %s:%s not reachable (attempt %d of %d), retrying in %.0f s",
                        host, port, attempt + 1, attempts, delay)
            time.sleep(delay)


def _login_failure(exc: vexc.VMwareDriverException, host: str, port: int,
                   username: str | None) -> Exception:
    """Our error for a login that vCenter refused or that never reached it."""
    if isinstance(exc, vexc.VimFaultException):
        if "InvalidLogin" in (exc.fault_list or []):
            return exceptions.VCenterAuthError(host, username)
        return exceptions.VSphereError(f"vCenter at {host} refused the login: "
                                       f"{', '.join(exc.fault_list or [])}")
    if isinstance(exc, vexc.VimConnectionException):
        return exceptions.VCenterUnreachable(host, port, type(exc.cause or exc).__name__)
    return exceptions.VSphereError(f"login to vCenter at {host} failed: {type(exc).__name__}")


def settle_environment(vim) -> None:
    """Resolve once what requests would read from the environment on every SOAP call.

    oslo.vmware's transport (``service.RequestsTransport``) posts every call through a
    ``requests.Session`` that trusts the environment, so each of the ~35 calls of a spawn
    stats ``~/.netrc`` and walks all of ``os.environ`` for proxies and CA bundles: about half
    a millisecond of CPU under the GIL per call, for an answer that cannot change while the
    process lives. Here requests computes that answer once, for the only URL this session
    posts to (vCenter's SOAP endpoint; the WSDL was read when the client was built), and the
    session keeps it: the proxy for that URL (``https_proxy``/``all_proxy``, none when
    ``no_proxy`` matches) and, only where requests would have used them (verification on and
    no ``[vmware] ca_file``), ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``. Then ``trust_env`` is
    turned off. The one environment source dropped is netrc: requests would add Basic auth
    from ``~/.netrc`` for vCenter's host, which vCenter's SOAP API ignores (it logs in with
    SessionManager.Login and a session cookie). A service reads its environment at start,
    so a user setting ``https_proxy`` or ``REQUESTS_CA_BUNDLE`` before starting it sees no
    difference (docs/nova.md).
    """
    transport = vim.client.options.transport
    http = transport.session
    if not http.trust_env:
        return
    settings = http.merge_environment_settings(vim.soap_url, {}, None, transport.verify, None)
    http.proxies = settings["proxies"]
    # The transport passes ``verify`` with every call, which overrides the session's.
    transport.verify = settings["verify"]
    http.trust_env = False


class _SentWith(threading.local):
    """The session id this thread's last vSphere call went out with (None: not in a call)."""

    session_id: str | None = None


class _Recording:
    """A stand-in for the module invoke_api calls into: notes the session id at send time.

    invoke_api runs the call and, on NotAuthenticated, its session check in one thread (a
    looping call's), so a thread-local set here is what that check reads.
    """

    def __init__(self, module, session: api.VMwareAPISession, sent: _SentWith) -> None:
        self._module = module
        self._session = session
        self._sent = sent

    def __getattr__(self, name: str):
        method = getattr(self._module, name)

        def call(*args, **kwargs):
            self._sent.session_id = self._session._session_id
            return method(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return repr(self._module)


def bound_logins(session: api.VMwareAPISession, *, host: str, port: int,
                 username: str | None, retries: int, ca_file: str | None) -> None:
    """Make every login of ``session`` bounded, and a dropped session never an empty answer.

    The one place we wrap oslo.vmware's session, for our sessions and nova's (the driver's),
    by attributes of the instance, which every caller's ``self.<name>`` finds first. Why:

    * ``_create_session`` sits under a RetryDecorator with no limit (max_retry_count=-1) that
      retries every VimConnectionException, an untrusted certificate included, backing off up
      to 60 s. ``invoke_api`` calls it when vCenter answers NotAuthenticated (it dropped the
      session), and when a call fails to connect but vCenter then says the session is gone
      (it restarted). A vCenter that goes away once that re-login has begun (a restart that
      is not over, a network that fails again) makes it retry for ever, its own session check
      included: a spawn, a conductor, ``flows resume`` or nova-compute would hang and say
      nothing. Ours makes ``retries`` + 1 attempts with our back-off,
      then VCenterUnreachable; a certificate failure is final at once
      (VCenterCertificateError); a refused login is VCenterAuthError. None of them is a
      VimConnectionException, so invoke_api's own retry does not repeat them. Each attempt is
      the undecorated login, ``__wrapped__`` (functools.wraps in the RetryDecorator): still
      oslo's ``lockutils.synchronized('oslo_vmware_api_lock')`` around a login that first
      returns when the session is active again, so threads that saw the session dropped queue
      on oslo's lock and only the first logs in.
    * On NotAuthenticated ``invoke_api`` asks whether the *current* session is active, to
      tell an empty RetrievePropertiesEx answer (which oslo reports as NotAuthenticated) from
      a dropped session, and returns ``[]`` as the call's result when it is. With threads
      sharing the session, another thread's re-login in between makes a call that vCenter
      refused come back as an empty answer (no datastores, no VM of that name). Ours answers
      "not active" when the session changed since the call went out (``_Recording`` notes it),
      so the call is sent again with the new session.
    """
    login_once = api.VMwareAPISession._create_session.__wrapped__
    invoke_api = session.invoke_api
    is_active = session.is_current_session_active
    sent = _SentWith()

    def once() -> None:
        _probe(host, port)
        login_once(session)

    def create_session() -> None:
        sent.session_id = None  # the check under oslo's lock is about the session as it is now
        try:
            _bounded(once, host, port, retries + 1, ca_file)
        except vexc.VMwareDriverException as exc:
            raise _login_failure(exc, host, port, username) from None

    def is_current_session_active() -> bool:
        went_out_with, sent.session_id = sent.session_id, None
        active = is_active()
        # Compared after the real check: ids never repeat, so an unchanged id means the check
        # was about the session the call went out with.
        if went_out_with is not None and went_out_with != session._session_id:
            return False
        return active

    def invoke(module, method, *args, **kwargs):
        return invoke_api(_Recording(module, session, sent), method, *args, **kwargs)

    session._create_session = create_session
    session.is_current_session_active = is_current_session_active
    session.invoke_api = invoke


def connection_pool_size(max_concurrent_flows: int) -> int:
    """How many connections to vCenter a session keeps for reuse.

    oslo.vmware (and nova's ``[vmware] connection_pool_size``) keep 10. A flow makes one SOAP
    call at a time, plus one from a side thread during a transfer (the lease keep-alive, the
    imported disk's check), so ``max_concurrent_flows`` flows call with up to twice as many
    connections at once. urllib3 opens a new connection for a caller the pool cannot serve and
    closes it after one call when the pool is full: a TLS handshake per call. Measured with 32
    threads making 640 property reads on one session against the simulator: 47-58 connections
    opened and 5.0-5.2 s of CPU with 10 kept, 26-27 and 3.2-3.9 s with 40.
    """
    return max(10, 2 * max_concurrent_flows)


#: What nova's session is given for ``[vmware] connection_timeout`` (nova has no such option).
NOVA_CONNECTION_TIMEOUT = 300


def bound_answer_wait(session: api.VMwareAPISession, seconds: float) -> None:
    """Make a session built elsewhere (nova's) give up on an answer after ``seconds``.

    nova builds its session without oslo.vmware's ``connection_timeout``, so a SOAP call sent
    into a silent network partition (packets dropped, no reset) waits for ever in the socket
    read, with the flow, its locks and nova's build slot. oslo's transport keeps the value it
    hands requests with every POST; set here, a stalled read ends in VimConnectionException,
    which oslo retries ``api_retry_count`` times like any connection failure.
    """
    session.vim.client.options.transport._connection_timeout = seconds


def keep_connections(session: api.VMwareAPISession, size: int) -> None:
    """Make a session built elsewhere (nova's) keep at least ``size`` connections.

    nova passes ``[vmware] connection_pool_size`` as a default argument bound when nova's
    session module is imported, before any configuration is read, so neither nova.conf's
    default nor ours reaches it in time: it keeps 10. The SOAP transport's HTTPS adapter is
    replaced by one with a larger pool (its open connections are closed; the session's cookie
    lives in the requests session, not in the adapter).
    """
    import requests

    http = session.vim.client.options.transport.session
    old = http.get_adapter("https://")
    if getattr(old, "_pool_maxsize", size) >= size:
        return
    http.mount("https://", requests.adapters.HTTPAdapter(pool_connections=size,
                                                          pool_maxsize=size))
    old.close()


def create_session(conf: cfg.ConfigOpts) -> api.VMwareAPISession:
    """Log in to vCenter as [vmware] says; VCenterUnreachable / VCenterAuthError otherwise.

    Re-logins after vCenter dropped the session are bounded the same way (bound_logins).
    """
    v = conf.vmware
    if not v.host_ip:
        raise exceptions.ConfigError("[vmware] host_ip", "is not set",
                                     "Set it to the vCenter server's address.")
    redaction.guard_library_logs(redaction.Secrets.from_conf(conf))
    if v.insecure and not v.ca_file:
        # The operator chose this once in config; one warning here instead of urllib3's
        # warning on every request (hundreds per spawn).
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        LOG.warning("TLS certificate of vCenter %s is not verified ([vmware] insecure=true)",
                    v.host_ip)
    try:
        session = api.VMwareAPISession(
            v.host_ip, v.host_username, v.host_password,
            api_retry_count=v.api_retry_count, task_poll_interval=v.task_poll_interval,
            port=v.host_port, wsdl_loc=v.wsdl_location, cacert=v.ca_file,
            insecure=bool(v.insecure and not v.ca_file), create_session=False,
            pool_size=connection_pool_size(_max_concurrent_flows(conf)),
            connection_timeout=v.connection_timeout,
        )
        # Threads share this session's suds client; see suds_replies for why this is needed.
        suds_replies.isolate_replies(session.vim.client)
        # The client is built (WSDL loaded): its schema can answer lookups from a cache.
        schema_cache.freeze(session.vim.client)
        settle_environment(session.vim)
    except vexc.VMwareDriverException as exc:
        raise _login_failure(exc, v.host_ip, v.host_port, v.host_username) from None
    bound_logins(session, host=v.host_ip, port=v.host_port, username=v.host_username,
                 retries=v.api_retry_count, ca_file=v.ca_file)
    session._create_session()
    heap.freeze_long_lived()
    return session


def _max_concurrent_flows(conf: cfg.ConfigOpts) -> int:
    try:
        return int(conf.vsan_flows.max_concurrent_flows)
    except (cfg.NoSuchOptError, AttributeError):  # a conf without our [vsan_flows] group
        from vsan_flows import conf as vconf

        return vconf.DEFAULT_MAX_CONCURRENT_FLOWS


def connect(conf: cfg.ConfigOpts) -> VSphere:
    v = conf.vmware
    return VSphere(create_session(conf), v.host_ip, v.host_port, v.cluster_name,
                   v.image_transfer_timeout_secs,
                   cacerts=v.ca_file or not v.insecure)


def ref(value: str, type_: str):
    """A managed-object reference from its persisted id (tasks persist ids, never objects)."""
    from oslo_vmware import vim_util

    return vim_util.get_moref(value, type_)


def ref_value(moref) -> str:
    from oslo_vmware import vim_util

    return vim_util.get_moref_value(moref)
