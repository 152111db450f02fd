"""vCenter drops the session: the re-login is bounded, and happens once for many threads.

oslo.vmware re-logs in from ``invoke_api`` (on NotAuthenticated, and on a connection error
whose session check fails) through a login it retries for ever. Our sessions and nova's go
through ``vsphere.session.bound_logins`` instead. These tests reach the real simulator through
``tcpproxy.Proxy``; closing the proxy makes vCenter unreachable (connections refused) without
stopping the simulator other tests share. Every call runs in a thread joined under the
watchdog, so a re-login that never ends fails the test with every thread's stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.functional import tcpproxy, watchdog
from tests.functional.conftest import make_conf
from vsan_flows import exceptions
from vsan_flows.vsphere import inventory
from vsan_flows.vsphere import session as vsession

ROOT = Path(__file__).resolve().parents[2]
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


def _settle_logins(control, before: dict, logins: int) -> None:
    """Let the slow Login a test cut off finish inside the simulator (it counts a call once
    the delay is over) before the next test counts logins; restore the latency profile."""
    _wait_for(lambda: control.calls("Login") >= logins)
    control.set_latency(methods_ms={"Login": before.get("methods_ms", {}).get("Login", 0)})


@pytest.fixture
def slow_login(control):
    """vCenter answers Login after 8 s (the network can fail under it); restored after."""
    before, logins = control.latency(), control.calls("Login")
    control.set_latency(methods_ms={"Login": 8000})
    yield
    _settle_logins(control, before, logins + 1)


def _wait_for(predicate, seconds: float = 30.0) -> None:
    """Poll until ``predicate()``, for at most ``seconds`` (the cut then follows; a re-login
    that never began shows in the call's own outcome, which the test checks)."""
    end = time.monotonic() + seconds
    while not predicate() and time.monotonic() < end:
        time.sleep(0.02)


def test_vcenter_going_away_during_the_relogin_fails_after_bounded_attempts(
        proxied, proxy, control, slow_login):
    """vCenter dropped the session, and goes away once the call's re-login has begun.

    invoke_api sees NotAuthenticated, asks SessionIsActive (no), and enters the login, which
    asks SessionIsActive again under oslo's lock, then logs in (slowly, here). The network
    fails at that second question: oslo.vmware alone then retries the login for ever (the
    watchdog fails this test with every stack); ours gives up after api_retry_count + 1
    attempts with VCenterUnreachable.
    """
    assert inventory.datastores(proxied.session)
    checks = control.calls("SessionIsActive")
    control.terminate_sessions()

    def cut_under_the_login():
        _wait_for(lambda: control.calls("SessionIsActive") >= checks + 2)
        proxy.close()  # vCenter goes away under the login: connections refused

    cutter = threading.Thread(target=cut_under_the_login, name="relogin-cutter", daemon=True)
    cutter.start()
    [out] = _in_threads(lambda: inventory.datastores(proxied.session), 1,
                        "a vSphere call re-logging in as vCenter goes away")
    cutter.join()
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


# nova's driver, as nova-compute runs it, in a child process (nova's CONF is the process's),
# armed with the watchdog's backstop: a re-login retried for ever dumps every stack and exits.
NOVA_BACKSTOP_SECS = 120


@pytest.fixture
def latency_restored(control):
    before, logins = control.latency(), control.calls("Login")
    yield
    _settle_logins(control, before, logins + 3)  # start, re-login, the slow one cut off


def test_nova_drivers_session_relogs_in_once_and_bounded(simulator, tmp_path, control,
                                                         latency_restored):
    """nova's own session (our driver's) gets the same bounded, once-only re-login."""
    setup = tmp_path / "relogin.json"
    setup.write_text(json.dumps({
        "mode": "relogin", "backstop_secs": NOVA_BACKSTOP_SECS, "work": str(tmp_path),
        "control_url": control.url,
        "sim": {"host": simulator.host, "port": simulator.port,
                "username": simulator.username, "password": simulator.password}}))
    proc = subprocess.run([sys.executable, "-m", "tests.functional.nova_scenario", str(setup)],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=NOVA_BACKSTOP_SECS + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RELOGIN ")]
    assert proc.returncode == 0 and lines, (
        f"nova's driver did not finish its re-logins (exit {proc.returncode}); stderr ends:\n"
        + proc.stderr[-8000:])
    facts = json.loads(lines[-1].partition(" ")[2])
    assert facts["instances_after_drop"] == facts["instances"], facts
    assert facts["logins_after_drop"] == 1, facts
    gone = facts["unreachable"]
    assert gone["type"] == "vsan_flows.exceptions.VCenterUnreachable", facts
    assert "(2 attempts)" in gone["message"] and "\n" not in gone["message"], facts
    assert simulator.password not in proc.stdout + proc.stderr
