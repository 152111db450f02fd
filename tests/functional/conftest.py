"""Functional fixtures: a real simulator, a real oslo.vmware session, and the leak check.

Nothing here mocks the client. The simulator is session-scoped (it takes seconds to start);
knobs are reset after every test, and every test is followed by a leak check that fails it
when it left VMs, datastore files or open leases that it did not declare.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vsan_flows.simulator import launcher
from vsan_flows.simulator.leaks import LeakChecker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    try:
        sim = launcher.start(tmp_path_factory.mktemp("vcsim"), timeout=90)
    except launcher.SimulatorError as exc:
        pytest.fail(f"the vCenter simulator did not start: {exc}", pytrace=False)
    pytest.vsan_flows_simulator = sim  # for the report hook below
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def wsdl_url(tmp_path_factory) -> str:
    from vsan_flows.simulator import wsdl

    out = Path(os.environ.get("VSAN_FLOWS_BUILD_DIR") or ROOT / ".build") / "wsdl"
    return "file://" + str(wsdl.generate(out))


@pytest.fixture(scope="session")
def vim_session(simulator, wsdl_url):
    from oslo_vmware import api

    session = api.VMwareAPISession(
        simulator.host, simulator.username, simulator.password,
        api_retry_count=3, task_poll_interval=0.1, port=simulator.port,
        insecure=True, wsdl_loc=wsdl_url,
    )
    yield session
    try:
        session.logout()
    except Exception:  # noqa: BLE001 - the simulator may already be gone
        pass


@pytest.fixture
def control(simulator):
    ctl = simulator.control
    yield ctl
    ctl.reset()


@pytest.fixture(autouse=True)
def leak_check(request):
    """After each functional test: fail it if it leaked VMs, files or leases."""
    if "simulator" not in request.fixturenames:
        yield None
        return
    sim = request.getfixturevalue("simulator")
    checker = LeakChecker(sim.control)
    before = checker.snapshot()
    yield checker
    sim.control.reset()
    leaks = checker.leaks(before)
    if leaks:
        pytest.fail("leak check: " + "; ".join(leaks), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    sim = getattr(pytest, "vsan_flows_simulator", None)
    if report.failed and sim is not None:
        report.sections.append(("vcsim log (tail)", sim.log_tail(40)))


def make_conf(simulator, wsdl_url, state_dir, **overrides):
    """A ConfigOpts pointing at the simulator, as a compute node's vsan-flows.conf would."""
    from oslo_config import cfg

    from vsan_flows import conf as vconf

    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows", default_config_files=[])
    values = {
        ("vmware", "host_ip"): simulator.host,
        ("vmware", "host_port"): simulator.port,
        ("vmware", "host_username"): simulator.username,
        ("vmware", "host_password"): simulator.password,
        ("vmware", "insecure"): True,
        ("vmware", "wsdl_location"): wsdl_url,
        ("vmware", "task_poll_interval"): 0.05,
        ("vmware", "api_retry_count"): 2,
        ("vsan_flows", "state_dir"): str(state_dir),
        ("vsan_flows", "import_retries"): 0,
    }
    for key, value in overrides.items():
        group, _, name = key.partition("__")
        values[(group, name)] = value
    for (group, name), value in values.items():
        c.set_override(name, value, group)
    return c


@pytest.fixture(scope="session")
def sim_conf(simulator, wsdl_url, tmp_path_factory):
    return make_conf(simulator, wsdl_url, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="session")
def vsphere(sim_conf):
    from vsan_flows.vsphere.session import connect

    return connect(sim_conf)


@pytest.fixture
def images(tmp_path):
    from vsan_flows.images import LocalImageService

    return LocalImageService(tmp_path / "images")


@pytest.fixture
def destroy_after(vsphere):
    """Names of VMs a test creates on purpose; destroyed after it, before the leak check."""
    from vsan_flows.vsphere import instances

    names: list[str] = []
    yield names
    for name in names:
        instances.destroy_by_name(vsphere, name)
