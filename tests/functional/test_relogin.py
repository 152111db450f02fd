"""vCenter drops the session: the re-login is bounded, and happens once for many threads.

oslo.vmware re-logs in from ``invoke_api`` (on NotAuthenticated, and on a connection error
whose session check fails) through a login it retries for ever. Our sessions and nova's go
through ``vsphere.session.bound_logins`` instead. These tests reach the real simulator through
``tcpproxy.Proxy``; closing the proxy makes vCenter unreachable (connections refused) without
stopping the simulator other tests share. Every call runs in a thread joined under the
watchdog, so a re-login that never ends fails the test with every thread's stack.
"""

from __future__ import annotations

import threading

import pytest

from tests.functional import tcpproxy, watchdog
from tests.functional.conftest import make_conf
from vsan_flows import exceptions
from vsan_flows.vsphere import inventory
from vsan_flows.vsphere import session as vsession

# Far more than a bounded failure needs (two attempts, 1 s apart; oslo's retry of the call
# sleeps 10 s after a re-login), far less than oslo's endless retry.
WATCHDOG_SECS = 60


@pytest.fixture
def proxy(simulator):
    p = tcpproxy.Proxy((simulator.host, simulator.port))
    yield p
    p.close()


@pytest.fixture
def proxied(simulator, wsdl_url, tmp_path, proxy):
    """A session of ours that reaches vCenter through ``proxy`` (one retry: tests stay fast)."""
    conf = make_conf(simulator, wsdl_url, tmp_path / "state", vmware__host_port=proxy.port,
                     vmware__api_retry_count=1)
    vs = vsession.connect(conf)
    yield vs
    vs.close()


def _in_threads(fn, n: int, what: str) -> list[dict]:
    """Run ``fn`` in ``n`` threads released together; each outcome, or Hang with stacks."""
    outs = [{} for _ in range(n)]
    go = threading.Barrier(n)

    def run(out):
        go.wait()
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    threads = [threading.Thread(target=run, args=(o,), name=f"relogin-{i}", daemon=True)
               for i, o in enumerate(outs)]
    for t in threads:
        t.start()
    watchdog.join_all(threads, WATCHDOG_SECS, what)
    return outs


def test_dropped_session_then_unreachable_vcenter_fails_after_bounded_attempts(
        proxied, proxy, control):
    assert inventory.datastores(proxied.session)
    control.terminate_sessions()  # vCenter dropped our session...
    proxy.close()                 # ...and went away: every connection is refused
    [out] = _in_threads(lambda: inventory.datastores(proxied.session), 1,
                        "a vSphere call re-logging in to an unreachable vCenter")
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterUnreachable), repr(err)
    assert f"127.0.0.1:{proxy.port}" in str(err) and "(2 attempts)" in str(err), str(err)


def test_many_threads_on_a_dropped_session_log_in_again_once(proxied, control):
    expected = {d.name for d in inventory.datastores(proxied.session)}
    old = proxied.session._session_id
    logins = control.calls("Login")
    control.terminate_sessions()
    outs = _in_threads(lambda: inventory.datastores(proxied.session), 6,
                       "six vSphere calls on a dropped session")
    assert not [o["error"] for o in outs if "error" in o]
    assert [{d.name for d in o["value"]} for o in outs] == [expected] * 6
    assert proxied.session._session_id != old
    assert control.calls("Login") - logins == 1
