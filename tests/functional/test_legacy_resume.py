"""A flow stored before atom names were explicit resumes where it stopped.

Flows persisted by earlier releases carry TaskFlow's default atom names (dotted class paths).
Here such a flow is made for real: the spawn flow as it was then (same tasks, default names),
run on a sqlite store until the image cache lookup, then suspended - as a restart leaves it.
Resumed by today's code, the stored atoms must be renamed, not run again.
"""

from __future__ import annotations

import contextlib
import uuid

from taskflow import engines, states
from taskflow.patterns import linear_flow

from tests.functional.conftest import make_conf
from vsan_flows import api, imagecache, names
from vsan_flows.flows.retry import TransferRetry
from vsan_flows.runtime import persistence, runner
from vsan_flows.simulator import disks
from vsan_flows.tasks.datastore import PickVsanDatastore
from vsan_flows.tasks.disk import CloneLinkedDisk
from vsan_flows.tasks.image import ValidateStreamOptimizedImage
from vsan_flows.tasks.lease import CompleteLease, CreateImportLease
from vsan_flows.tasks.shadow_vm import LookupImageCache, RegisterShadowVM
from vsan_flows.tasks.stream import StreamDiskToLease

MiB = 1024 * 1024
OLD_FACTORY = f"{__name__}.make_old_spawn_flow"


def make_old_spawn_flow(retries: int = 3, power_on: bool = False) -> linear_flow.Flow:
    """The spawn flow as releases before explicit names built it (TaskFlow default names)."""
    importing = linear_flow.Flow("import-image", retry=TransferRetry(
        attempts=retries + 1, name="import-retry", revert_all=True))
    importing.add(CreateImportLease(), StreamDiskToLease(),
                  CompleteLease(rebind={"lease": "import_lease"}))
    flow = linear_flow.Flow("spawn")
    flow.add(ValidateStreamOptimizedImage(), PickVsanDatastore(), LookupImageCache(),
             importing, RegisterShadowVM(), CloneLinkedDisk())
    return flow


def test_flow_with_old_atom_names_resumes_where_it_stopped(simulator, wsdl_url, tmp_path,
                                                          vsphere, images, control,
                                                          destroy_after):
    conf = make_conf(simulator, wsdl_url, tmp_path,
                     vsan_flows__persistence_connection=f"sqlite:///{tmp_path}/old.sqlite")
    image_id = images.add_file(disks.make_stream_optimized(tmp_path / "old.vmdk", 32 * MiB,
                                                           data_mib=2), name="old")
    instance = f"legacy-{uuid.uuid4().hex[:6]}"
    plan = api.plan(conf, "spawn", instance, image_id)
    live = api.open_handles(conf, vsphere=vsphere, images=images).transients()
    imports_before = control.calls("ImportVApp")

    with contextlib.closing(persistence.open_backend(conf)) as backend:
        book = runner.new_book(backend, plan.book_name, plan.book_meta)
        eng = engines.load_from_factory(OLD_FACTORY, factory_kwargs=dict(plan.factory_kwargs),
                                        store=dict(plan.store), book=book, backend=backend)
        eng.storage.inject(live, transient=True)
        old_lookup = "vsan_flows.tasks.shadow_vm.LookupImageCache"
        for _state in eng.run_iter():
            if eng.storage.get_atom_state(old_lookup) == states.SUCCESS:
                eng.suspend()
        assert eng.storage.get_flow_state() == states.SUSPENDED
        # A restart ends the process, and with it the image lock the lookup took on a miss.
        live[names.IMAGE_LOCKS].release_owner(plan.store[names.FLOW_TOKEN])
        _book, fd = persistence.find_flow_detail(backend, eng.storage.flow_uuid)
        before = {ad.name: (ad.uuid, ad.state, ad.results) for ad in fd}
        assert old_lookup in before and names.LOOKUP_IMAGE_CACHE not in before
        # What an upgrade leaves: the factory's name is the same, the code behind it is new.
        fd.meta = {**fd.meta, "factory": {**fd.meta["factory"], "name": api.SPAWN_FACTORY}}
        with contextlib.closing(backend.get_connection()) as conn:
            conn.update_flow_details(fd)

        outcomes = api.resume_unfinished(conf, vsphere=vsphere, images=images,
                                         backend=backend)
        destroy_after.append(instance)
        assert [o[2] for o in outcomes if o[0] == fd.uuid] == ["completed"]

        _book, after = persistence.find_flow_detail(backend, fd.uuid)
    stored = {ad.name: ad for ad in after}
    assert not [n for n in stored if n.startswith("vsan_flows.")], "old names left behind"
    for old, new in names.LEGACY_ATOM_NAMES.items():
        if old in before:
            uuid_before, _state, results_before = before[old]
            assert stored[new].uuid == uuid_before, f"{new} was created anew, not renamed"
            if before[old][1] == states.SUCCESS:
                assert stored[new].results == results_before
    assert after.state == states.SUCCESS
    assert control.calls("ImportVApp") - imports_before == 1
    vm = next(v for v in control.status()["vms"] if v["name"] == instance)
    assert vm["disks"][0]["parent"]
    cached = [v["name"] for v in control.status()["vms"]
              if v["name"].startswith(imagecache.name_prefix(image_id))]
    destroy_after += cached
