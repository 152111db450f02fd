"""nova's compute driver API, real nova objects, our driver, the simulator: one scenario.

Shared by the in-process test (nova-compute's default, native threads) and a child process
that monkey-patches eventlet first (``python nova_scenario.py SETUP_JSON``); both run the same
steps and report the same facts.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
DRIVER = "vsan_flows.nova.driver.VsanVCDriver"


def write_nova_conf(work, simulator, glance_api, host: str, **vmware) -> tuple[str, dict]:
    """A nova.conf under ``work`` for this simulator and glance-api (None: a start needs no
    Glance); ``vmware`` overrides [vmware] options. Returns (its path, the sim)."""
    sim = {"host": simulator.host, "port": simulator.port, "username": simulator.username,
           "password": simulator.password}
    conf_file = work / "nova.conf"
    conf_file.write_text(nova_conf_text(sim, str(work / "state"), host,
                                        glance_api.url if glance_api else None, **vmware))
    return str(conf_file), sim


def started_driver(conf_file: str):
    """nova's config from ``conf_file`` and our driver loaded by nova, its host started."""
    conf = init_nova(conf_file)
    driver = load_driver(conf)
    driver.init_host(conf.host)
    return conf, driver


def nova_conf_text(sim: dict, state_dir: str, host: str, glance_url: str | None,
                   **vmware) -> str:
    options = {"host_ip": sim["host"], "host_port": sim["port"],
               "host_username": sim["username"], "host_password": sim["password"],
               "insecure": "true", "cluster_name": "DC0_C0", "datastore_regex": "vsan",
               "task_poll_interval": 0.05, "api_retry_count": 2, **vmware}
    vmware_lines = "\n".join(f"{k} = {v}" for k, v in options.items() if v is not None)
    glance = f"[glance]\napi_servers = {glance_url}\n" if glance_url else ""
    return f"""[DEFAULT]
transport_url = fake:/
host = {host}
compute_driver = {DRIVER}
[vmware]
{vmware_lines}
[oslo_concurrency]
lock_path = {state_dir}/locks
{glance}[vsan_flows]
state_dir = {state_dir}
import_retries = 0
"""


def init_nova(conf_file: str):
    """nova's CONF, objects and RPC (fake:/ transport) as nova-compute sets them up."""
    import nova.conf
    from nova import objects, rpc

    objects.register_all()
    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[conf_file])
    rpc.init(conf)
    return conf


def load_driver(conf):
    """The driver exactly as nova-compute loads [DEFAULT] compute_driver (by dotted path)."""
    from nova import virt  # noqa: F401 - nova.virt.driver imports it first too
    from nova.virt import driver as virt_driver

    return virt_driver.load_compute_driver(None, conf.compute_driver)


def make_instance(ctx, image_id: str, *, name: str, node: str, host: str,
                  memory_mb: int = 256, vcpus: int = 2, root_gb: int = 1):
    """An Instance as the compute manager holds it when it calls spawn (claimed on node)."""
    from nova import objects

    flavor = objects.Flavor(id=1, name="m1.vsan", flavorid="vsan1", memory_mb=memory_mb,
                            vcpus=vcpus, root_gb=root_gb, ephemeral_gb=0, swap=0,
                            extra_specs={}, rxtx_factor=1.0, vcpu_weight=None,
                            disabled=False, is_public=True, description=None)
    return objects.Instance(
        context=ctx, uuid=str(uuid.uuid4()), display_name=name, hostname=name,
        project_id="vsanproject", user_id="vsanuser", flavor=flavor, image_ref=image_id,
        memory_mb=memory_mb, vcpus=vcpus, root_gb=root_gb, ephemeral_gb=0,
        config_drive="", metadata={}, system_metadata={}, key_data=None, host=host,
        node=node, vm_state="building", task_state="spawning", power_state=0,
        availability_zone=None, launched_at=None, terminated_at=None, flavor_id=1,
        os_type=None, locked=False, numa_topology=None, pci_requests=None, vcpu_model=None,
        trusted_certs=None, resources=None, device_metadata=None)


def add_image(ctx, path: Path, name: str) -> str:
    """Upload a VMDK through nova's image API, labelled streamOptimized (whatever it is)."""
    from nova.image import glance

    props = {"vmware_disktype": "streamOptimized", "vmware_adaptertype": "lsiLogic",
             "vmware_ostype": "otherGuest"}
    with open(path, "rb") as data:
        return glance.API().create(ctx, {"name": name, "disk_format": "vmdk",
                                         "container_format": "bare",
                                         "properties": props}, data=data)["id"]


def image_meta(ctx, image_id: str):
    from nova import objects
    from nova.image import glance

    return objects.ImageMeta.from_dict(glance.API().get(ctx, image_id))


def vm_facts(driver, instance) -> dict:
    """What vCenter says about an instance's VM, read through nova's own lookups."""
    from nova.virt.vmwareapi import vm_util
    from oslo_vmware import vim_util

    session = driver._session
    vm_ref = vm_util.get_vm_ref(session, instance)
    props = session._call_method(vim_util, "get_object_properties_dict", vm_ref,
                                 ["name", "config.instanceUuid", "config.hardware.memoryMB",
                                  "config.hardware.numCPU", "config.extraConfig",
                                  "config.hardware.device"])
    extra = {o.key: o.value for o in props["config.extraConfig"].OptionValue}
    disks = [d for d in props["config.hardware.device"].VirtualDevice
             if d.__class__.__name__ == "VirtualDisk"]
    parent = getattr(disks[0].backing, "parent", None) if disks else None
    return {"name": props["name"], "instance_uuid": props["config.instanceUuid"],
            "nvp_vm_uuid": extra.get("nvp.vm-uuid"), "memory_mb": props["config.hardware.memoryMB"],
            "vcpus": props["config.hardware.numCPU"],
            "root_kb": int(disks[0].capacityInKB) if disks else None,
            # nova's own reading of the size (its snapshot divides by it)
            "root_bytes": vm_util.get_vmdk_info(session, vm_ref).capacity_in_bytes,
            "root_parent": getattr(parent, "fileName", None)}


def run(driver, vmdk_good: Path, vmdk_bad: Path) -> dict:
    """spawn -> nova's lookups -> snapshot -> spawn from it -> destroy; a bad image.

    Returns facts for the caller to assert on (so a child process can report them).
    """
    from nova import context as nova_context
    from nova import exception as nova_exc
    from nova.compute import power_state
    from nova.image import glance

    # A request's context as nova-api hands it to compute: it carries the user's token, which
    # nova's image API forwards to Glance (this glance-api runs without keystone).
    ctx = nova_context.RequestContext(user_id="vsanuser", project_id="vsanproject",
                                      auth_token="test-token", is_admin=True)
    out: dict = {}
    where = {"node": driver.get_available_nodes()[0], "host": driver._runs.host}
    t0 = time.monotonic()
    image_id = add_image(ctx, vmdk_good, "nova-good")
    first = make_instance(ctx, image_id, name="first", **where)
    driver.spawn(ctx, first, image_meta(ctx, image_id), [], None, {}, network_info=[])
    out["spawn_s"] = round(time.monotonic() - t0, 2)
    out["first"] = vm_facts(driver, first)
    out["first_state_running"] = driver.get_info(first).state == power_state.RUNNING
    out["listed"] = first.uuid in driver.list_instances()
    out["first_uuid"] = first.uuid
    driver.power_off(first)
    out["after_power_off_shutdown"] = driver.get_info(first).state == power_state.SHUTDOWN
    driver.power_on(ctx, first, [], None)

    states: list = []
    snap_id = glance.API().create(ctx, {"name": "nova-snap"})["id"]
    t0 = time.monotonic()
    driver.snapshot(ctx, first, snap_id, lambda **kw: states.append(kw))
    out["snapshot_s"] = round(time.monotonic() - t0, 2)
    snap = glance.API().get(ctx, snap_id)
    out["snapshot"] = {"status": snap["status"], "size": snap["size"],
                       "disktype": snap["properties"].get("vmware_disktype"),
                       "task_states": [s["task_state"] for s in states]}

    second = make_instance(ctx, snap_id, name="second", root_gb=2, **where)
    driver.spawn(ctx, second, image_meta(ctx, snap_id), [], None, {}, network_info=[])
    out["second"] = vm_facts(driver, second)

    for inst in (first, second):
        driver.destroy(ctx, inst, [], None, destroy_disks=True)
    out["listed_after_destroy"] = [u for u in (first.uuid, second.uuid)
                                   if u in driver.list_instances()]
    try:
        driver.get_info(first)
        out["get_info_after_destroy"] = "found"
    except nova_exc.InstanceNotFound:
        out["get_info_after_destroy"] = "InstanceNotFound"

    bad_id = add_image(ctx, vmdk_bad, "nova-bad")
    bad = make_instance(ctx, bad_id, name="bad", **where)
    try:
        driver.spawn(ctx, bad, image_meta(ctx, bad_id), [], None, {}, network_info=[])
        out["bad"] = "spawned"
    except Exception as exc:  # noqa: BLE001 - the class is the fact under test
        out["bad"] = f"{type(exc).__module__}.{type(exc).__name__}"
        out["bad_message"] = str(exc)
    # nova's compute manager destroys what a failed spawn built (the VM it made itself).
    driver.destroy(ctx, bad, [], None, destroy_disks=True)
    return out


def spawn_until_killed(driver, vmdk: Path) -> None:
    """For the crash test: say which instance, then spawn (the parent kills us meanwhile)."""
    from nova import context as nova_context

    ctx = nova_context.RequestContext(user_id="vsanuser", project_id="vsanproject",
                                      auth_token="test-token", is_admin=True)
    image_id = add_image(ctx, vmdk, "nova-crash")
    inst = make_instance(ctx, image_id, name="crashed", node=driver.get_available_nodes()[0],
                         host=driver._runs.host)
    print("INSTANCE " + json.dumps({"uuid": inst.uuid, "image": image_id}), flush=True)
    driver.spawn(ctx, inst, image_meta(ctx, image_id), [], None, {}, network_info=[])
    print("SPAWNED", flush=True)


def start_only(conf_file: str, backstop_secs: float) -> None:
    """For the start tests: nova's driver started, or why not, on one line of stdout.

    Armed with the watchdog's backstop: a start that never ends (oslo.vmware's login
    retrying for ever) dumps every stack and exits, so the parent reports a hang.
    """
    from tests.functional import watchdog

    watchdog.backstop(backstop_secs)
    start = time.monotonic()
    try:
        conf, driver = started_driver(conf_file)
    except Exception as exc:  # noqa: BLE001 - the class and message are the facts under test
        print("FAILED " + json.dumps({"type": f"{type(exc).__module__}.{type(exc).__name__}",
                                      "message": str(exc),
                                      "secs": round(time.monotonic() - start, 2)}), flush=True)
        return
    facts = {"node": driver.get_available_nodes()[0],
             "secs": round(time.monotonic() - start, 2)}
    driver.cleanup_host(conf.host)
    print("STARTED " + json.dumps(facts), flush=True)


def relogin(setup: dict) -> None:
    """For the re-login test: nova's driver through a proxy this process can close.

    vCenter drops the session and nova's next call logs in again (once); then vCenter drops
    it again and goes away while that re-login is under way (after its session check, under
    a slow Login): the call must fail after ``api_retry_count`` + 1 attempts. Armed with the
    watchdog's backstop: a re-login retried for ever (oslo.vmware's own) dumps every stack
    and exits. Facts on one ``RELOGIN`` line of stdout.
    """
    import threading

    from tests.functional import tcpproxy, watchdog
    from vsan_flows.simulator.control import SimulatorControl

    watchdog.backstop(setup["backstop_secs"])
    sim = setup["sim"]
    control = SimulatorControl(setup["control_url"])
    proxy = tcpproxy.Proxy((sim["host"], sim["port"]))
    work = Path(setup["work"])
    conf_file = work / "nova-relogin.conf"
    conf_file.write_text(nova_conf_text({**sim, "port": proxy.port}, str(work / "state"),
                                        "compute-relogin", None, api_retry_count=1))
    conf, driver = started_driver(str(conf_file))
    facts: dict = {"instances": len(driver.list_instances())}
    # How many connections nova's session keeps (our driver sizes it for the flows).
    https = driver._session.vim.client.options.transport.session.get_adapter("https://")
    facts["pool_maxsize"] = https.poolmanager.connection_pool_kw.get("maxsize")
    # How long a SOAP call of nova's session waits for an answer (nova sets no bound).
    facts["answer_wait"] = driver._session.vim.client.options.transport._connection_timeout
    facts["max_concurrent_flows"] = conf.vsan_flows.max_concurrent_flows

    logins = control.calls("Login")
    control.terminate_sessions()
    facts["instances_after_drop"] = len(driver.list_instances())
    facts["logins_after_drop"] = control.calls("Login") - logins

    control.set_latency(methods_ms={"Login": 8000})
    checks = control.calls("SessionIsActive")
    control.terminate_sessions()

    def cut_under_the_login():
        end = time.monotonic() + 30
        while control.calls("SessionIsActive") < checks + 2 and time.monotonic() < end:
            time.sleep(0.02)
        proxy.close()

    threading.Thread(target=cut_under_the_login, daemon=True).start()
    start = time.monotonic()
    try:
        driver.list_instances()
        facts["unreachable"] = {"type": None}
    except Exception as exc:  # noqa: BLE001 - the class and message are the facts under test
        facts["unreachable"] = {"type": f"{type(exc).__module__}.{type(exc).__name__}",
                                "message": str(exc)}
    facts["unreachable"]["secs"] = round(time.monotonic() - start, 2)
    print("RELOGIN " + json.dumps(facts), flush=True)


def main(setup_file: str) -> None:
    """Child-process entry: eventlet first (as an eventlet-patched service does), then run."""
    setup = json.loads(Path(setup_file).read_text())
    if setup.get("eventlet"):
        import eventlet

        eventlet.monkey_patch()
    if setup.get("mode") == "start-only":
        start_only(setup["conf_file"], setup["backstop_secs"])
        return
    if setup.get("mode") == "relogin":
        relogin(setup)
        return
    conf = init_nova(setup["conf_file"])
    driver = load_driver(conf)
    driver.init_host(conf.host)
    if setup.get("mode") == "spawn-until-killed":
        spawn_until_killed(driver, Path(setup["good"]))
        return
    facts = run(driver, Path(setup["good"]), Path(setup["bad"]))
    if setup.get("eventlet"):
        import eventlet.patcher

        facts["eventlet_patched"] = eventlet.patcher.is_monkey_patched("thread")
    print("RESULT " + json.dumps(facts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
