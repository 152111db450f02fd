"""Child process for test_relogin: our session, and vCenter going away under its re-login.

oslo.vmware's own login, once begun, retries for ever in a thread that is not a daemon: a
process that met it could not even exit. So the scenario runs here, armed with the watchdog's
backstop (a call that never returns dumps every thread's stack and exits), and reports its
outcome on one ``RESULT`` line of stdout (``python -m tests.functional.relogin_child SETUP``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace


def main(setup_file: str) -> None:
    from tests.functional import tcpproxy, watchdog

    setup = json.loads(Path(setup_file).read_text())
    watchdog.backstop(setup["backstop_secs"])

    from tests.functional.conftest import make_conf
    from vsan_flows.simulator.control import SimulatorControl
    from vsan_flows.vsphere import inventory
    from vsan_flows.vsphere import session as vsession

    sim = SimpleNamespace(**setup["sim"])
    control = SimulatorControl(setup["control_url"])
    proxy = tcpproxy.Proxy((sim.host, sim.port))
    if setup.get("mode") == "partition":
        silent_partition(sim, setup, proxy)
        return
    conf = make_conf(sim, setup["wsdl_url"], setup["state_dir"], vmware__host_port=proxy.port,
                     vmware__api_retry_count=1)
    vs = vsession.connect(conf)
    assert inventory.datastores(vs.session)

    # vCenter drops the session. The next call meets NotAuthenticated, asks SessionIsActive
    # (no) and enters the login, which asks SessionIsActive again under oslo's lock and then
    # logs in (slowly: 8 s). The network fails at that second question.
    control.set_latency(methods_ms={"Login": 8000})
    checks = control.calls("SessionIsActive")
    control.terminate_sessions()

    def cut_under_the_login():
        end = time.monotonic() + 30
        while control.calls("SessionIsActive") < checks + 2 and time.monotonic() < end:
            time.sleep(0.02)
        proxy.close()  # vCenter goes away under the login: connections refused

    threading.Thread(target=cut_under_the_login, daemon=True).start()
    _report(lambda: inventory.datastores(vs.session), port=proxy.port)


def _report(call, **facts) -> None:
    """Make the call and print its outcome (error class and message, seconds) as RESULT."""
    start = time.monotonic()
    try:
        call()
        out = {"type": None}
    except Exception as exc:  # noqa: BLE001 - the class and message are the facts under test
        out = {"type": f"{type(exc).__module__}.{type(exc).__name__}", "message": str(exc)}
    out["secs"] = round(time.monotonic() - start, 2)
    out.update({k: v() if callable(v) else v for k, v in facts.items()})
    print("RESULT " + json.dumps(out), flush=True)


def silent_partition(sim, setup: dict, proxy) -> None:
    """The network swallows every byte both ways (no reset): a call already on its way, and
    the session check and re-login oslo makes after it, each wait ``connection_timeout`` for
    an answer, then fail; without that bound the first read waits for ever."""
    from tests.functional.conftest import make_conf
    from vsan_flows.vsphere import inventory
    from vsan_flows.vsphere import session as vsession

    conf = make_conf(sim, setup["wsdl_url"], setup["state_dir"], vmware__host_port=proxy.port,
                     vmware__api_retry_count=0,
                     vmware__connection_timeout=setup["connection_timeout"])
    vs = vsession.connect(conf)
    assert inventory.datastores(vs.session)
    proxy.cut()
    _report(lambda: inventory.datastores(vs.session), port=proxy.port,
            swallowed=lambda: proxy.dropped)  # read after the call


if __name__ == "__main__":
    main(sys.argv[1])
