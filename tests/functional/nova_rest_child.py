"""Servers booted through nova's REST API with our compute driver: nova's own functional harness.

``python nova_rest_child.py SETUP_JSON`` runs one scenario of nova's integrated harness
(``nova.tests.functional.integrated_helpers``: nova-api via its WSGI app, conductor, scheduler
and nova-compute in this process, placement in-process, ``fake:/`` messaging, sqlite) with
``compute_driver = vsan_flows.nova.driver.VsanVCDriver``, the simulator as vCenter and the real
glance-api (nova's GlanceFixture is *not* used: images go over HTTP to glance-api, as in a
deployment). It prints ``RESULT <json>`` with what nova's API and the simulator showed; the
pytest side (test_nova_rest_api.py) asserts on it.

Why a child process: nova's harness patches process globals (mock autospec, poison fixtures,
its CONF, RPC transport, object registry) that must not leak into the rest of the suite.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# nova-compute's default concurrency: native threads (nova's tests patch eventlet otherwise)
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "true")
import fixtures  # noqa: E402
import nova.tests.functional  # noqa: E402,F401 - first: it applies (refuses) eventlet patching
from nova import context as nova_context  # noqa: E402
from nova import (
    objects,  # noqa: E402
    test,  # noqa: E402
)
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.functional import fixtures as func_fixtures  # noqa: E402
from nova.tests.functional import integrated_helpers  # noqa: E402

from vsan_flows import conf as vconf  # noqa: E402
from vsan_flows.simulator.control import SimulatorControl  # noqa: E402

DRIVER = "vsan_flows.nova.driver.VsanVCDriver"
HOST = "compute-vsan-1"
SETUP: dict = {}
FACTS: dict = {}


def _image_props() -> dict:
    return {"vmware_disktype": "streamOptimized", "vmware_adaptertype": "lsiLogic",
            "vmware_ostype": "otherGuest"}


class VsanRestScenario(test.TestCase, integrated_helpers.PlacementInstanceHelperMixin):
    """nova's _IntegratedTestBase set-up, with the real glance-api instead of GlanceFixture."""

    REQUIRES_LOCKING = True
    ADMIN_API = True
    microversion = "2.74"  # networks 'none', flavor embedded in the server, image_id reply

    def setUp(self):
        super().setUp()
        # nova's WarningsFixture makes SQLAlchemy deprecations errors; nova 34's gate runs
        # SQLAlchemy 2.0, this environment 2.1 (pip check clean), which deprecates noload().
        import warnings

        import sqlalchemy.exc

        warnings.filterwarnings("ignore", category=sqlalchemy.exc.SADeprecationWarning)
        self.useFixture(nova_fixtures.CastAsCallFixture(self))
        self.placement = self.useFixture(func_fixtures.PlacementFixture()).api
        _give_https_back()
        self.neutron = self.useFixture(nova_fixtures.NeutronFixture(self))
        self.cinder = self.useFixture(nova_fixtures.CinderFixture(self))
        self.policy = self.useFixture(nova_fixtures.RealPolicyFixture())
        self.notifier = self.useFixture(nova_fixtures.NotificationFixture(self))
        self._configure()
        self.control = SimulatorControl(SETUP["control_url"])
        if "cell1" in self.cell_mappings:
            self.flags(transport_url=self.cell_mappings["cell1"].transport_url)
        self.conductor = self.start_service("conductor")
        self.scheduler = self.start_service("scheduler")
        if SETUP["test"] != "test_restart_after_kill":  # that one starts it itself
            self.compute = self._start_compute(HOST)
        self.addCleanup(lambda: [c.stop() for c in self.computes.values()])
        self.api_fixture = self.useFixture(nova_fixtures.OSAPIFixture(api_version="v2.1"))
        _give_https_back()
        self.api = self.admin_api = self.api_fixture.admin_api
        self.api.microversion = self.microversion
        self._forward_user_token()

    def _forward_user_token(self) -> None:
        """Requests carry a user token and nova's request context keeps it, as keystone's
        middleware arranges in a deployment (nova's stub drops it): compute then reaches
        glance-api with the user's token, which is how nova's image API authenticates."""
        import nova.api.auth

        stub = nova.api.auth.NovaKeystoneContext._create_context

        def with_token(env, **kwargs):
            return stub(env, auth_token=env.get("HTTP_X_AUTH_TOKEN"), **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.api.auth.NovaKeystoneContext._create_context", with_token))
        send = self.api.request

        def request(url, method="GET", body=None, headers=None):
            return send(url, method, body, dict(headers or {}, **{"X-Auth-Token": "test-token"}))

        self.api.request = request

    def _configure(self) -> None:
        sim = SETUP["sim"]
        # nova's wheel installs its paste pipeline under the environment's etc/ (a source
        # checkout, which nova's harness assumes, has it beside the package)
        self.flags(compute_driver=DRIVER, instances_path=SETUP["state_dir"] + "/instances",
                   api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"))
        self.flags(host_ip=sim["host"], host_port=sim["port"], host_username=sim["username"],
                   host_password=sim["password"], insecure=True, cluster_name="DC0_C0",
                   datastore_regex="vsan", task_poll_interval=0.05, api_retry_count=2,
                   group="vmware")
        self.flags(api_servers=[SETUP["glance_url"]], group="glance")
        self.flags(remove_unused_original_minimum_age_seconds=0, group="image_cache")
        vconf.register_nova_opts(_conf())  # the driver does it too; before our flags here
        self.flags(state_dir=SETUP["state_dir"], import_retries=0, group="vsan_flows")

    # ------------------------------------------------------------------ helpers
    def _ctx(self):
        # nova-api hands compute the user's token; glance-api here runs without keystone.
        return nova_context.RequestContext(user_id="admin", project_id=self.api.project_id,
                                           auth_token="test-token", is_admin=True)

    def _add_image(self, path: str, name: str) -> str:
        from nova.image import glance

        with open(path, "rb") as data:
            return glance.API().create(self._ctx(), {
                "name": name, "disk_format": "vmdk", "container_format": "bare",
                "properties": _image_props()}, data=data)["id"]

    def _flavor(self, name: str, ram: int, vcpus: int, disk: int) -> str:
        return self.api.post_flavor({"flavor": {"name": name, "ram": ram, "vcpus": vcpus,
                                                "disk": disk}})["id"]

    def _boot(self, name: str, image: str, flavor: str, state: str = "ACTIVE") -> dict:
        return self._create_server(name=name, image_uuid=image, flavor_id=flavor,
                                   networks="none", expected_state=state)

    def _vm(self, server: dict) -> dict:
        ctx = nova_context.get_admin_context()
        with nova_context.target_cell(ctx, self.cell_mappings["cell1"]) as cctx:
            inst = objects.Instance.get_by_uuid(cctx, server["id"])
        from tests.functional import nova_scenario

        return nova_scenario.vm_facts(self.compute.manager.driver, inst)

    def _sim_vms(self) -> list[str]:
        return sorted(vm["name"] for vm in self.control.status()["vms"])

    def _cache_disks(self) -> list[str]:
        return sorted(d["file"] for vm in self.control.status()["vms"]
                      if vm["name"].startswith("vsanflows-image-") for d in vm["disks"])

    def _open_leases(self) -> int:
        return len([le for le in self.control.status().get("leases") or []
                    if le.get("state") not in ("done", "error")])

    def _image_cache_pass(self) -> None:
        """nova's periodic image-cache task, as nova-compute runs it."""
        ctx = nova_context.get_admin_context()
        with nova_context.target_cell(ctx, self.cell_mappings["cell1"]) as cctx:
            self.compute.manager._run_image_cache_manager_pass(cctx)

    # ------------------------------------------------------------------ scenarios
    def test_lifecycle(self):
        from nova.image import glance

        f1 = self._flavor("m1.vsan", 256, 2, 1)
        f2 = self._flavor("m1.vsan2", 512, 1, 2)
        image = self._add_image(SETUP["good"], "rest-good")
        t0 = time.monotonic()
        first = self._boot("first", image, f1)
        FACTS["boot_s"] = round(time.monotonic() - t0, 2)
        FACTS["first_api"] = {k: first.get(k) for k in ("status", "OS-EXT-STS:power_state",
                                                         "OS-EXT-STS:vm_state", "flavor")}
        FACTS["first_vm"] = self._vm(first)
        FACTS["cache_disks"] = self._cache_disks()
        FACTS["first_id"] = first["id"]
        # the guest writes, then nova's createImage
        marker = b"written by the guest of server first " + first["id"].encode()
        self.control.guest_write(FACTS["first_vm"]["name"], 3 * 1024 * 1024, marker)
        FACTS["marker"] = marker.decode()
        reply = self.api.post_server_action(first["id"], {"createImage": {"name": "rest-snap"}})
        snap_id = reply["image_id"]
        self._wait_for_state_change(first, "ACTIVE")
        deadline = time.monotonic() + 300
        while True:
            snap = glance.API().get(self._ctx(), snap_id)
            if snap["status"] in ("active", "killed", "deleted") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        FACTS["snapshot"] = {"status": snap["status"], "size": snap.get("size"),
                             "disk_format": snap.get("disk_format"),
                             "disktype": snap["properties"].get("vmware_disktype")}
        second = self._boot("second", snap_id, f2)
        FACTS["second_api"] = {k: second.get(k) for k in ("status", "OS-EXT-STS:power_state",
                                                          "flavor")}
        FACTS["second_vm"] = self._vm(second)
        FACTS["cache_disks_2"] = self._cache_disks()
        FACTS["second_reads"] = self.control.guest_read(
            FACTS["second_vm"]["name"], 3 * 1024 * 1024, len(marker)).decode(errors="replace")
        for server in (first, second):
            self._delete_server(server)
        FACTS["vms_after_delete"] = self._sim_vms()
        FACTS["leases_after_delete"] = self._open_leases()
        self._image_cache_pass()
        FACTS["vms_after_cache_pass"] = self._sim_vms()
        glance.API().delete(self._ctx(), snap_id)

    def test_bad_image(self):
        f1 = self._flavor("m1.vsan", 256, 2, 1)
        image = self._add_image(SETUP["bad"], "rest-bad")
        server = self._boot("bad", image, f1, state="ERROR")
        FACTS["bad_api"] = {"status": server["status"], "fault": server.get("fault")}
        actions = self.api.get_instance_actions(server["id"])
        FACTS["bad_actions"] = sorted(a["action"] for a in actions)
        events = self.api.api_get(
            f"/servers/{server['id']}/os-instance-actions/{actions[0]['request_id']}"
        ).body["instanceAction"]["events"]
        FACTS["bad_events"] = sorted(e["event"] for e in events)
        FACTS["vms_after_error"] = self._sim_vms()
        FACTS["leases_after_error"] = self._open_leases()
        self._delete_server(server)
        FACTS["vms_after_delete"] = self._sim_vms()
        self._image_cache_pass()
        FACTS["vms_after_cache_pass"] = self._sim_vms()


    def test_restart_after_kill(self):
        """nova-compute (this HOST, this flow store) was SIGKILLed mid-spawn by the parent;
        here it starts again. nova's database of that deployment is the one thing that did
        not survive (nova's harness keeps it in this process), so the instance's row is
        written back as it was at the kill: BUILDING/spawning on this host, whose
        nova-compute service row exists (a restart, not a new host)."""
        from nova.network import model as network_model

        ctx = nova_context.get_admin_context()
        cell = self.cell_mappings["cell1"]
        with nova_context.target_cell(ctx, cell) as cctx:
            objects.Service(context=cctx, host=HOST, binary="nova-compute", topic="compute",
                            report_count=0).create()
            flavor = objects.Flavor.get_by_name(cctx, "m1.small")
            inst = objects.Instance(
                context=cctx, uuid=SETUP["uuid"], project_id=self.api.project_id,
                user_id="admin", host=HOST, vm_state="building", task_state="spawning",
                image_ref=SETUP["image"], flavor=flavor, instance_type_id=flavor.id,
                memory_mb=flavor.memory_mb, vcpus=flavor.vcpus, root_gb=flavor.root_gb,
                ephemeral_gb=0, display_name="crashed", hostname="crashed", launch_index=0,
                reservation_id="r-crashed", power_state=0,
                info_cache=objects.InstanceInfoCache(network_info=network_model.NetworkInfo()))
            inst.create()
        objects.InstanceMapping(context=ctx, instance_uuid=inst.uuid, cell_mapping=cell,
                                project_id=inst.project_id).create()
        FACTS["vms_before_restart"] = self._sim_vms()
        FACTS["leases_before_restart"] = self._open_leases()
        self.compute = self._start_compute(HOST)  # init_host: nova's rules, then ours
        with nova_context.target_cell(ctx, cell) as cctx:  # the node nova had claimed
            inst = objects.Instance.get_by_uuid(cctx, inst.uuid)
            inst.node = self.compute.manager.driver.get_available_nodes()[0]
            inst.compute_id = objects.ComputeNode.get_by_host_and_nodename(
                cctx, HOST, inst.node).id
            inst.save()
        server = self.api.get_server(inst.uuid)
        FACTS["server_after_restart"] = {"status": server["status"],
                                         "task_state": server["OS-EXT-STS:task_state"]}
        FACTS["vms_after_restart"] = self._sim_vms()
        FACTS["leases_after_restart"] = self._open_leases()
        self._delete_server(server)
        FACTS["vms_after_delete"] = self._sim_vms()
        FACTS["leases_after_delete"] = self._open_leases()


def _give_https_back() -> None:
    """Placement and nova-api are intercepted over plain http; wsgi-intercept 1.13 also
    swaps urllib3's HTTPS connection class, whose constructor breaks under urllib3 2
    (``cert_reqs``) for every other host -- here the simulator's vCenter over https."""
    import urllib3.connection
    import urllib3.connectionpool

    urllib3.connectionpool.HTTPSConnectionPool.ConnectionCls = urllib3.connection.HTTPSConnection


def _conf():
    import nova.conf

    return nova.conf.CONF


def main(setup_file: str) -> int:
    SETUP.update(json.loads(Path(setup_file).read_text()))
    case = VsanRestScenario(SETUP["test"])
    result = unittest.TestResult()
    case.run(result)
    problems = [(str(t), tb) for t, tb in result.errors + result.failures]
    FACTS["problems"] = problems
    print("RESULT " + json.dumps(FACTS, default=str), flush=True)
    for what, tb in problems:
        print(what, tb, file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:  # noqa: BLE001 - the parent reads stderr
        traceback.print_exc()
        sys.exit(2)
