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
    glance = getattr(pytest, "vsan_flows_glance", None)
    if report.failed and glance is not None and "glance_api" in item.fixturenames:
        report.sections.append(("glance-api log (tail)", glance.log_tail(30)))
        report.sections.append(("glance-api requests (tail)",
                                "\n".join(glance.access_lines()[-20:])))


def make_conf(simulator, wsdl_url, state_dir, **overrides):
    """A ConfigOpts pointing at the simulator, as a compute node's vsan-flows.conf would."""
    from oslo_config import cfg

    from vsan_flows import conf as vconf

    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows", default_config_files=[])
    _register_glance_test_auth(c)
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


def _register_glance_test_auth(c) -> None:
    """The session's glance-api has no keystone: the service user is keystoneauth's
    admin_token plugin (a fixed token and endpoint); the glance-api behind a real keystone
    (test_glance_keystone.py) takes the password plugin. Their options are registered here so
    overrides can set them; keystoneauth registers the same ones itself when it loads one.
    Registered after the command line is parsed: oslo.config checks required options (the
    password plugin's auth_url) only then."""
    from keystoneauth1 import loading as ks_loading

    for plugin in ("admin_token", "password"):
        c.register_opts(ks_loading.get_auth_plugin_conf_options(plugin), group="glance")


SERVICE_TOKEN = "vsan-flows-service-token"


def glance_overrides(glance, token: str = SERVICE_TOKEN) -> dict:
    """make_conf overrides that select Glance with a configured service user."""
    return {"vsan_flows__image_service": "glance", "glance__auth_type": "admin_token",
            "glance__endpoint": glance.url, "glance__token": token, "glance__timeout": 60}


def glance_conf(glance, **overrides):
    """A ConfigOpts with only the image-service options, as a Glance-only caller has."""
    from oslo_config import cfg

    from vsan_flows import conf as vconf

    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows", default_config_files=[])
    _register_glance_test_auth(c)
    for key, value in {**glance_overrides(glance), **overrides}.items():
        group, _, name = key.partition("__")
        c.set_override(name, value, group)
    return c


@pytest.fixture(scope="session")
def glance_api(tmp_path_factory):
    """One glance-api for the session, with ONE sync worker: a request we leave open would
    stall the next one, so every Glance test also proves we close what we open."""
    from tests.functional import glance_api as launcher_g

    try:
        g = launcher_g.start(tmp_path_factory.mktemp("glance"))
    except launcher_g.GlanceError as exc:
        pytest.fail(f"glance-api did not start: {exc}", pytrace=False)
    pytest.vsan_flows_glance = g  # for the report hook
    yield g
    g.stop()


@pytest.fixture(scope="session")
def sim_conf(simulator, wsdl_url, tmp_path_factory):
    return make_conf(simulator, wsdl_url, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="session")
def vsphere(sim_conf):
    from vsan_flows.vsphere.session import connect

    return connect(sim_conf)


@pytest.fixture
def images(request, tmp_path):
    """The local store; modules that parametrise ``images`` indirectly with "glance" get the
    session's glance-api instead, emptied after each test once nothing half-written is found."""
    if getattr(request, "param", "local") == "local":
        from vsan_flows.images import LocalImageService

        yield LocalImageService(tmp_path / "images")
        return
    from vsan_flows.glance import GlanceImageService

    glance = request.getfixturevalue("glance_api")
    service = GlanceImageService.from_conf(glance_conf(glance))
    yield service
    left = service.list()
    half = [f"{m.id} ({m.status})" for m in left if m.status not in ("active", "queued")]
    for m in left:
        service.delete(m.id)
    orphans = [p.name for p in glance.stored_files()]  # data no image record owns any more
    if half or orphans:
        pytest.fail(f"Glance leak check: images half-written {half}, stored files left "
                    f"after deleting every image {orphans}", pytrace=False)


def discarded(images, image_id: str) -> bool:
    """A failed snapshot's image is unusable: killed in the local store, deleted in Glance
    (which has no settable killed status)."""
    from vsan_flows import exceptions

    try:
        return images.show(image_id).status == "killed"
    except exceptions.ImageNotFound:
        return True


@pytest.fixture
def destroy_after(vsphere):
    """Names of VMs a test creates on purpose; destroyed after it, before the leak check."""
    from vsan_flows.vsphere import instances

    names: list[str] = []
    yield names
    for name in names:
        instances.destroy_by_name(vsphere, name)


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory):
    """A throwaway ZooKeeper server (its own JVM, port and directory) per test module."""
    from tests.functional import zookeeper as zk_helper

    try:
        server = zk_helper.start(tmp_path_factory.mktemp("zookeeper"))
    except zk_helper.ZooKeeperError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()
