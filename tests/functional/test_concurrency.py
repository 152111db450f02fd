"""Independent flows run at once, never more than ``[vsan_flows] max_concurrent_flows``, and
each one's result or failure is its own: the nova façade's spawns and ``resume_unfinished``.

How many run at once is read from the persistence backend (flows with a task executing,
sampled while they run); each flow is made to last by the simulator's latency profile (a slow
CloneVM_Task), so overlap does not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from taskflow import states

from vsan_flows import api, driver, imagecache
from vsan_flows.runtime import persistence, runner
from vsan_flows.simulator import disks

from .conftest import make_conf

MiB = 1024 * 1024
LIMIT = 2
FLOWS = 5


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "conc.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=2)
    return path


@pytest.fixture
def conf(simulator, wsdl_url, tmp_path):
    return make_conf(simulator, wsdl_url, tmp_path / "state",
                     vsan_flows__max_concurrent_flows=LIMIT,
                     vsan_flows__persistence_connection=f"sqlite:///{tmp_path}/flows.sqlite")


@pytest.fixture
def backend(conf):
    b = persistence.open_backend(conf)
    yield b
    b.close()


@pytest.fixture
def slow_clones(control):
    """Every linked clone takes 0.8 s in vCenter: a flow lasts at least that long."""
    control.set_latency("none")
    control.set_latency(methods_ms={"CloneVM_Task": 800})
    try:
        yield
    finally:
        control.set_latency("none")


class RunningCounter:
    """Samples, every 20 ms until stopped, how many flows have a task executing (an atom in
    state RUNNING): a crashed flow waiting to be resumed is RUNNING itself, its atoms are not."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.peak = 0
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self) -> int:
        with contextlib.closing(self.backend.get_connection()) as conn:
            return sum(1 for book in conn.get_logbooks(lazy=True)
                       for fd in conn.get_flows_for_book(book.uuid, lazy=True)
                       if any(ad.state == states.RUNNING
                              for ad in conn.get_flow_details(fd.uuid, lazy=False)))

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self._count()
            self.seen.append(n)
            self.peak = max(self.peak, n)
            time.sleep(0.02)

    def __enter__(self) -> RunningCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _cache(conf, handles, backend, image_id, destroy_after, control):
    """Spawn once so the image is cached: the flows under test then only link clones.

    The cache entry is destroyed last (after every clone of it), so its disk goes too."""
    name = "warm-" + uuid.uuid4().hex[:8]
    destroy_after.append(name)
    api.spawn(conf, name, image_id, handles=handles, backend=backend)
    destroy_after.extend(vm["name"] for vm in control.status()["vms"]
                         if vm["name"].startswith(imagecache.vm_name(image_id, "")))


def test_facade_spawns_run_at_once_within_the_limit(conf, backend, vsphere, images, vmdk,
                                                    control, destroy_after, slow_clones):
    handles = api.open_handles(conf, vsphere=vsphere, images=images)
    assert handles.flow_slots.limit == LIMIT
    nova = driver.VsanFlowsDriver(conf, handles=handles, backend=backend)
    image_id = images.add_file(vmdk, name="conc")
    _cache(conf, handles, backend, image_id, destroy_after, control)

    instances = [SimpleNamespace(uuid=str(uuid.uuid4())) for _ in range(FLOWS)]
    destroy_after[:0] = [i.uuid for i in instances]
    bad = SimpleNamespace(uuid=str(uuid.uuid4()))
    results: dict[str, object] = {}

    def spawn(instance, image):
        try:
            nova.spawn(None, instance, {"id": image}, [], None, {}, power_on=False)
            results[instance.uuid] = "ok"
        except Exception as exc:  # noqa: BLE001 - each outcome is checked below
            results[instance.uuid] = exc

    threads = [threading.Thread(target=spawn, args=(i, image_id)) for i in instances]
    threads.append(threading.Thread(target=spawn, args=(bad, "no-such-image")))
    with RunningCounter(backend) as counter:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not any(t.is_alive() for t in threads)

    assert counter.peak == LIMIT, f"{counter.peak} flows ran at once; the limit is {LIMIT}"
    assert [results[i.uuid] for i in instances] == ["ok"] * FLOWS
    assert isinstance(results[bad.uuid], driver.ImageNotFound)
    made = {vm["name"] for vm in control.status()["vms"]}
    assert {i.uuid for i in instances} <= made and bad.uuid not in made


def test_resume_unfinished_runs_flows_at_once_within_the_limit(conf, backend, vsphere, images,
                                                               vmdk, control, destroy_after,
                                                               slow_clones):
    handles = api.open_handles(conf, vsphere=vsphere, images=images)
    image_id = images.add_file(vmdk, name="conc-resume")
    _cache(conf, handles, backend, image_id, destroy_after, control)
    # Flows whose engine had started, and no task yet, when the process died: RUNNING, every
    # atom PENDING (what a SIGKILL right after engine.run() leaves behind).
    names = [f"resume-{uuid.uuid4().hex[:8]}" for _ in range(FLOWS)]
    destroy_after[:0] = names
    ids = {}
    for name in names + ["resume-bad"]:
        book, eng = runner.prepare(api.plan(conf, "spawn", name,
                                            image_id if name != "resume-bad" else "no-such"),
                                   backend)
        eng.storage.set_flow_state(states.RUNNING)
        ids[name] = next(iter(book)).uuid

    with RunningCounter(backend) as counter:
        outcomes = api.resume_unfinished(conf, handles=handles, backend=backend)
    assert counter.peak == LIMIT, f"{counter.peak} flows ran at once; the limit is {LIMIT}"
    by_id = {flow_id: outcome for flow_id, _name, outcome in outcomes}
    assert len(outcomes) == FLOWS + 1
    assert [by_id[ids[n]] for n in names] == ["completed"] * FLOWS
    assert by_id[ids["resume-bad"]].startswith("rolled back: ")
    assert "no-such" in by_id[ids["resume-bad"]]
    made = {vm["name"] for vm in control.status()["vms"]}
    assert set(names) <= made
    assert api.resume_unfinished(conf, handles=handles, backend=backend) == []
