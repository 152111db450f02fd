"""vCenter drops the session: the re-login is bounded, and happens once for many threads.

oslo.vmware re-logs in from ``invoke_api`` (on NotAuthenticated, and on a connection error
whose session check fails) through a login it retries for ever. Our sessions and nova's go
through ``vsphere.session.bound_logins`` instead. These tests reach the real simulator through
``tcpproxy.Proxy``; closing the proxy makes vCenter unreachable (connections refused) without
stopping the simulator other tests share. oslo's endless login runs in a thread that is not a
daemon (a process that met it cannot exit), so the scenarios that could meet it run in a child
process armed with the watchdog's backstop (a call that never returns dumps every stack and
exits); the others run their calls in threads joined under the watchdog.
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


def _wait_for(predicate, seconds: float = 30.0) -> None:
    """Poll until ``predicate()``, for at most ``seconds``."""
    end = time.monotonic() + seconds
    while not predicate() and time.monotonic() < end:
        time.sleep(0.02)


def _settle_logins(control, before: dict, logins: int) -> None:
    """Let a slow Login a scenario cut off finish inside the simulator (it counts a call once
    the delay is over) before the next test counts logins; restore the latency profile."""
    _wait_for(lambda: control.calls("Login") >= logins)
    control.set_latency(methods_ms={"Login": before.get("methods_ms", {}).get("Login", 0)})


# Children arm the watchdog's backstop: far more than a bounded failure needs (two attempts
# 1 s apart; start-up, an 8 s Login), far less than oslo's endless retry.
BACKSTOP_SECS = 120


def _child(module: str, setup: dict, tmp_path) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``python -m module SETUP`` and return the facts of its last RESULT/RELOGIN line."""
    setup_file = tmp_path / f"{module.rsplit('.', 1)[-1]}.json"
    setup_file.write_text(json.dumps({"backstop_secs": BACKSTOP_SECS, **setup}))
    proc = subprocess.run([sys.executable, "-m", module, str(setup_file)], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=BACKSTOP_SECS + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT ", "RELOGIN "))]
    assert proc.returncode == 0 and lines, (
        f"the scenario did not end (exit {proc.returncode}; the backstop dumps every stack "
        "when a call never returns); stderr ends:\n" + proc.stderr[-8000:])
    return json.loads(lines[-1].partition(" ")[2]), proc


def _sim_facts(simulator) -> dict:
    return {"host": simulator.host, "port": simulator.port, "username": simulator.username,
            "password": simulator.password}


def test_vcenter_going_away_during_the_relogin_fails_after_bounded_attempts(
        simulator, wsdl_url, control, tmp_path):
    """vCenter dropped the session, and goes away once the call's re-login has begun
    (tests/functional/relogin_child.py). oslo.vmware alone retries that login for ever (the
    child's backstop then fires and this test fails with its stacks); ours gives up after
    api_retry_count + 1 attempts with VCenterUnreachable."""
    before, logins = control.latency(), control.calls("Login")
    try:
        out, proc = _child("tests.functional.relogin_child",
                           {"sim": _sim_facts(simulator), "wsdl_url": wsdl_url,
                            "state_dir": str(tmp_path / "state"),
                            "control_url": control.url}, tmp_path)
    finally:
        _settle_logins(control, before, logins + 2)  # the first login, the slow one cut off
    assert out["type"] == "vsan_flows.exceptions.VCenterUnreachable", out
    assert f"127.0.0.1:{out['port']}" in out["message"], out
    assert "(2 attempts)" in out["message"] and "\n" not in out["message"], out
    assert simulator.password not in proc.stdout + proc.stderr


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


def test_nova_drivers_session_relogs_in_once_and_bounded(simulator, tmp_path, control):
    """nova's own session (our driver's), as nova-compute runs it, in a child process
    (nova's CONF is the process's): the same once-only, bounded re-login."""
    before, logins = control.latency(), control.calls("Login")
    try:
        facts, proc = _child("tests.functional.nova_scenario",
                             {"mode": "relogin", "work": str(tmp_path),
                              "control_url": control.url, "sim": _sim_facts(simulator)},
                             tmp_path)
    finally:
        _settle_logins(control, before, logins + 3)  # start, re-login, the slow one cut off
    assert facts["instances_after_drop"] == facts["instances"], facts
    # nova's connection_pool_size default (10) raised for the flows that share the session.
    assert facts["pool_maxsize"] == 2 * facts["max_concurrent_flows"], facts
    assert facts["answer_wait"] == vsession.NOVA_CONNECTION_TIMEOUT, facts  # nova sets None
    assert facts["logins_after_drop"] == 1, facts
    gone = facts["unreachable"]
    assert gone["type"] == "vsan_flows.exceptions.VCenterUnreachable", facts
    assert "(2 attempts)" in gone["message"] and "\n" not in gone["message"], facts
    assert simulator.password not in proc.stdout + proc.stderr


def test_a_call_sent_into_a_silent_partition_fails_instead_of_waiting_for_ever(
        simulator, wsdl_url, control, tmp_path):
    """Every byte swallowed, nothing reset (tests/functional/relogin_child.py, partition):
    the call, oslo's session check after it and the re-login each give up after
    [vmware] connection_timeout, and the caller gets an error. Without the bound the first
    read never returns (the child's backstop fires and this test fails with its stacks)."""
    out, proc = _child("tests.functional.relogin_child",
                       {"mode": "partition", "sim": _sim_facts(simulator), "wsdl_url": wsdl_url,
                        "state_dir": str(tmp_path / "state"), "control_url": control.url,
                        "connection_timeout": 2}, tmp_path)
    assert out["type"] in ("vsan_flows.exceptions.VCenterUnreachable",
                           "oslo_vmware.exceptions.VimConnectionException"), out
    assert out["swallowed"] > 0, out  # the request did go out into the partition
    assert simulator.password not in proc.stdout + proc.stderr
