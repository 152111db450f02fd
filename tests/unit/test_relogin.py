"""The bounded re-login (vsphere/session.bound_logins) against oslo.vmware's own invoke_api.

oslo.vmware re-logs in from ``invoke_api`` through ``self._create_session()``, whose decorator
retries connection errors for ever. These tests drive oslo's real ``VMwareAPISession`` and
``invoke_api`` with a scripted vCenter (``_Vim`` below, in place of the SOAP client: the
functional tests in tests/functional/test_relogin.py use the simulator) and check that a
re-login is bounded, takes oslo's lock, and happens once for many threads. The seams they rely
on are read from the installed oslo.vmware and nova, so a release that moves them fails here.
"""

from __future__ import annotations

import inspect
import socket
import ssl
import threading

import pytest
from oslo_concurrency import lockutils
from oslo_vmware import api
from oslo_vmware import exceptions as vexc

from tests.functional import watchdog
from vsan_flows import exceptions
from vsan_flows.vsphere import session as vsession

LOCK = "oslo_vmware_api_lock"


class _Vim:
    """vCenter as invoke_api and _create_session see it: a dropped session, a scripted Login."""

    def __init__(self, login_fails: list[BaseException] | None = None) -> None:
        self.service_content = type("SC", (), {"sessionManager": "SessionManager"})()
        self.login_fails = list(login_fails or [])
        self.logins = 0
        self.lock_held_at_login: list[bool] = []
        self.active: str | None = None
        self._mutex = threading.Lock()

    def Login(self, _sm, userName, password, locale):  # noqa: N802 - vSphere's name
        sem = lockutils._semaphores.get(LOCK)
        free = sem.acquire(blocking=False)
        if free:
            sem.release()
        self.lock_held_at_login.append(not free)
        with self._mutex:
            self.logins += 1
            if self.login_fails:
                raise self.login_fails.pop(0)
            self.active = f"session-{self.logins}"
        return type("UserSession", (), {"key": self.active, "userName": userName})()

    def SessionIsActive(self, _sm, sessionID, userName):  # noqa: N802
        if self.active is None or sessionID != self.active:
            raise vexc.VimFaultException([vexc.NOT_AUTHENTICATED], "not authenticated")
        return True


class _Calls:
    """The module invoke_api calls into: every call meets a dropped session."""

    def __init__(self, vim: _Vim) -> None:
        self.vim = vim

    def read(self):
        if self.vim.active is None:
            raise vexc.VimFaultException([vexc.NOT_AUTHENTICATED], "session dropped")
        return "value"


@pytest.fixture
def listener():
    """A loopback port that accepts connections (our probe before each login passes)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        s.listen(16)
        yield s.getsockname()[1]


def _session(vim: _Vim, port: int, retries: int) -> api.VMwareAPISession:
    s = api.VMwareAPISession("127.0.0.1", "admin", "s3cret-pw", api_retry_count=retries,
                             task_poll_interval=0.05, port=port, create_session=False)
    s._vim = vim
    s._session_id = "dropped"
    vsession.bound_logins(s, host="127.0.0.1", port=port, username="admin", retries=retries,
                          ca_file=None)
    return s


def _call(fn, *args):
    """Run fn in a thread under the watchdog: a hang fails with every stack."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, name="relogin-call", daemon=True)
    t.start()
    watchdog.join_all([t], 60, "a call that has to re-log in")
    return out


def test_oslo_seams_the_bounded_login_relies_on():
    """invoke_api re-logs in through ``self._create_session()``; the undecorated login is
    oslo's lock around the attempt (two layers of functools.wraps); nova does not override it."""
    from nova.virt.vmwareapi import session as nova_session

    source = inspect.getsource(api.VMwareAPISession.invoke_api)
    assert source.count("self._create_session()") == 2, source
    decorated = api.VMwareAPISession._create_session
    locked = decorated.__wrapped__
    assert locked is not decorated and locked.__wrapped__ is not locked
    assert "_session_id and self.is_current_session_active()" in inspect.getsource(
        locked.__wrapped__)
    assert "_create_session" not in vars(nova_session.VMwareAPISession)


def test_relogin_to_a_vcenter_that_is_gone_ends_after_the_bounded_attempts(listener):
    vim = _Vim(login_fails=[vexc.VimConnectionException("refused"),
                            vexc.VimConnectionException("refused")])
    s = _session(vim, listener, retries=1)
    out = _call(s.invoke_api, _Calls(vim), "read")
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterUnreachable), repr(err)
    assert "(2 attempts)" in str(err) and f"127.0.0.1:{listener}" in str(err)
    assert vim.logins == 2
    assert vim.lock_held_at_login == [True, True]  # each attempt under oslo's lock


def test_relogin_meeting_an_untrusted_certificate_is_final_at_once(listener):
    untrusted = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    untrusted.verify_message = "self-signed certificate"  # set by ssl on a real handshake
    refused = vexc.VimConnectionException("ssl", untrusted)
    vim = _Vim(login_fails=[refused])
    s = _session(vim, listener, retries=5)
    out = _call(s.invoke_api, _Calls(vim), "read")
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterCertificateError), repr(err)
    assert "self-signed certificate" in str(err)
    assert vim.logins == 1


def test_relogin_refused_is_an_auth_error_without_the_password(listener):
    vim = _Vim(login_fails=[vexc.VimFaultException(["InvalidLogin"], "bad password")])
    s = _session(vim, listener, retries=3)
    out = _call(s.invoke_api, _Calls(vim), "read")
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterAuthError), repr(err)
    assert "admin" in str(err) and "s3cret-pw" not in str(err)
    assert vim.logins == 1


def test_relogin_when_nothing_answers_is_bounded_by_the_probe():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vim = _Vim()
    sess = _session(vim, port, retries=1)
    out = _call(sess.invoke_api, _Calls(vim), "read")
    assert isinstance(out.get("error"), exceptions.VCenterUnreachable), repr(out)
    assert vim.logins == 0


def test_many_threads_meeting_a_dropped_session_log_in_once(listener):
    vim = _Vim()
    s = _session(vim, listener, retries=2)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def relogin():
        start.wait()
        try:
            s._create_session()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=relogin, name=f"relogin-{i}") for i in range(8)]
    for t in threads:
        t.start()
    watchdog.join_all(threads, 60, "eight threads re-logging in")
    assert not errors, errors
    assert vim.logins == 1
    assert s._session_id == "session-1"


def test_a_refused_call_is_not_an_empty_answer_when_another_thread_logged_in(listener):
    """oslo returns ``[]`` for a NotAuthenticated call when the *current* session is active;
    a re-login by another thread between the call and that check made a refused call look
    like an empty answer. Ours sends it again with the new session (here: api_retry_count=0,
    so invoke_api gives up instead of sleeping 10 s first); nobody logs in again."""
    vim = _Vim()
    s = _session(vim, listener, retries=0)

    class RacedCalls:
        def read(self):
            # the call went out with the dropped session; meanwhile another thread logged in
            vim.active = s._session_id = "session-by-another-thread"
            raise vexc.VimFaultException([vexc.NOT_AUTHENTICATED], "session dropped")

    out = _call(s.invoke_api, RacedCalls(), "read")
    assert out.get("value") != [], "a refused call came back as an empty answer"
    assert isinstance(out.get("error"), vexc.VimConnectionException), repr(out)
    assert vim.logins == 0


def test_an_empty_answer_on_an_active_session_stays_an_empty_answer(listener):
    """What oslo's check is for: an empty RetrievePropertiesEx is reported as
    NotAuthenticated; on a session still active it is the call's (empty) result."""
    vim = _Vim()
    s = _session(vim, listener, retries=0)
    s._create_session()
    assert vim.logins == 1

    class Empty:
        def read(self):
            raise vexc.VimFaultException([vexc.NOT_AUTHENTICATED], "empty response")

    out = _call(s.invoke_api, Empty(), "read")
    assert out.get("value") == [], repr(out)
    assert vim.logins == 1


def test_oslo_seams_the_answer_bound_and_the_pool_rely_on():
    """bound_answer_wait sets the value oslo's transport hands requests with every POST;
    keep_connections replaces the HTTPS adapter oslo mounts (nova's session is built by nova)."""
    from oslo_vmware import service

    assert "timeout=self._connection_timeout" in inspect.getsource(
        service.RequestsTransport.send)
    init = inspect.getsource(service.RequestsTransport.__init__)
    assert "self._connection_timeout = connection_timeout" in init
    assert "self.session.mount('https://'" in init
