"""One import per image per datastore on a host, whatever runs the spawns.

Threads of one process and separate processes share the host's import locks (under
state_dir/locks): concurrent spawns of a new image wait for one import and link to it, a killed
lock holder releases the lock to a waiter, and a wait that lasts too long ends in a clear
error with nothing created. Hosts that share the jobboard's ZooKeeper (here: processes with
their own state_dir and conductor name) share a kazoo lock the same way. Simulator call counts
(ImportVApp) prove how many imports ran.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.functional import watchdog
from tests.functional.conftest import make_conf
from vsan_flows import api, exceptions, imagecache
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
THREADS, PROCESSES = 10, 5


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "lock.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=4)
    return path


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _entries(control, image_id: str) -> list[dict]:
    return [vm for vm in control.status()["vms"]
            if vm["name"].startswith(imagecache.name_prefix(image_id))]


def _assert_all_linked(control, image_id: str, instances: list[str]) -> dict:
    entries = _entries(control, image_id)
    assert len(entries) == 1, f"cache entries of the image: {[e['name'] for e in entries]}"
    vms = {vm["name"]: vm for vm in control.status()["vms"]}
    for name in instances:
        assert name in vms, f"instance {name} was not created"
        assert vms[name]["disks"][0]["parent"] == entries[0]["disks"][0]["file"], name
    return entries[0]


def _threads_spawning(conf, vsphere, images, image_id, names, results):
    def spawn(name):
        try:
            results[name] = api.spawn(conf, name, image_id, vsphere=vsphere, images=images)
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            results[name] = exc

    return [threading.Thread(target=spawn, args=(n,), name=f"spawn-{n}", daemon=True)
            for n in names]


def _spawn_child(simulator, wsdl_url, images, state: Path, instance: str, image_id: str,
                 conf: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.functional.spawn_child", json.dumps({
            "sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(state), "images_dir": str(images.directory),
            "instance": instance, "image_id": image_id, "conf": conf})],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _dying_holder(simulator, wsdl_url, images, state: Path, db_url: str, instance: str,
                  image_id: str, conf: dict | None = None) -> subprocess.Popen:
    """A spawn that takes the image's lock and SIGKILLs itself mid-transfer."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.functional.crash_child", json.dumps({
            "sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(state), "db_url": db_url, "op": "spawn", "instance": instance,
            "image_id": image_id, "images_dir": str(images.directory), "cue": "transfer",
            "conf": conf or {}})],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _go(procs: list[subprocess.Popen]) -> None:
    """Wait until every child is logged in, then let them all spawn at once."""
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-3000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def _outcome(p: subprocess.Popen) -> dict:
    return json.loads(p.communicate(timeout=300)[0].splitlines()[-1])


@contextlib.contextmanager
def _reaped(procs: list):
    """Children still running when the test ends (it failed) are killed."""
    try:
        yield
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_threads_and_processes_spawning_a_new_image_import_it_once(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk, destroy_after):
    conf = make_conf(simulator, wsdl_url, tmp_path / "state")
    image_id = images.add_file(small_vmdk, name="new-image")
    imports_before = control.calls("ImportVApp")
    # A slow first upload: everyone else arrives while the import is still running.
    control.throttle_nfc(2 * MiB, direction="upload")
    proc_names = [_name("lock-proc") for _ in range(PROCESSES)]
    thread_names = [_name("lock-thread") for _ in range(THREADS)]
    destroy_after.extend(proc_names + thread_names)
    procs = [_spawn_child(simulator, wsdl_url, images, tmp_path / "state", name, image_id, {})
             for name in proc_names]
    results: dict = {}
    with _reaped(procs):
        workers = _threads_spawning(conf, vsphere, images, image_id, thread_names, results)
        _go(procs)
        for w in workers:
            w.start()
        watchdog.join_all(workers, 300, "spawning threads")
        outs = [_outcome(p) for p in procs]
    errors = [f"{n}: {r}" for n, r in results.items() if isinstance(r, Exception)]
    errors += [o["error"] for o in outs if "error" in o]
    assert not errors, errors
    entry = _assert_all_linked(control, image_id, proc_names + thread_names)
    destroy_after.append(entry["name"])
    assert control.calls("ImportVApp") - imports_before == 1, "one import for 15 spawns"
    assert {o["shadow"] for o in outs} == {entry["name"]}


def test_a_killed_lock_holder_releases_and_a_waiter_imports(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk, destroy_after):
    state = tmp_path / "state"
    db_url = f"sqlite:///{state}/flows.sqlite"
    conf = make_conf(simulator, wsdl_url, state, vsan_flows__import_retries=2)
    image_id = images.add_file(small_vmdk, name="holder-dies")
    holder = _name("lock-holder")
    waiters = [_name("lock-waiter") for _ in range(3)]
    destroy_after.extend([holder] + waiters)
    imports_before = control.calls("ImportVApp")
    control.throttle_nfc(1 * MiB, direction="upload")  # the holder is mid-transfer a while
    child = _dying_holder(simulator, wsdl_url, images, state, db_url, holder, image_id)
    try:
        deadline = time.monotonic() + 120
        while control.calls("ImportVApp") == imports_before:  # the holder holds the lock
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the holder never started its import"
            time.sleep(0.2)
        results: dict = {}
        workers = _threads_spawning(conf, vsphere, images, image_id, waiters, results)
        for w in workers:
            w.start()
        assert child.wait(timeout=120) == -9, child.communicate()[1][-3000:]
        watchdog.join_all(workers, 300, "waiting spawns")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    errors = [f"{n}: {r}" for n, r in results.items() if isinstance(r, Exception)]
    assert not errors, errors
    assert control.calls("ImportVApp") - imports_before == 2, "the holder's, then one waiter's"
    entry = _assert_all_linked(control, image_id, waiters)
    destroy_after.append(entry["name"])
    # The dead holder's flow resumes: its lock died with it, it takes it again, its Retry
    # removes its half-import, and it finishes on the datastore it had chosen (persisted):
    # the waiters' entry if that is the same datastore, else one entry of its own there.
    outcomes = api.resume_unfinished(conf, vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["completed"], outcomes
    entries = {e["name"]: e for e in _entries(control, image_id)}
    destroy_after.extend(n for n in entries if n != entry["name"])
    assert len(entries) == len(_entries(control, image_id)) <= 2  # at most one per datastore
    holder_vm = next(vm for vm in control.status()["vms"] if vm["name"] == holder)
    assert holder_vm["disks"][0]["parent"] in {e["disks"][0]["file"] for e in entries.values()}
    assert not [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("vsanflows-import-")], "half-imports left"


def test_a_wait_longer_than_the_bound_fails_clearly_and_creates_nothing(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk):
    """Another process holds the image's import lock and does not let go."""
    state = tmp_path / "state"
    conf = make_conf(simulator, wsdl_url, state, vsan_flows__image_lock_timeout=1.0)
    image_id = images.add_file(small_vmdk, name="held-elsewhere")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from vsan_flows.imagelocks import ImageLocks
        locks = ImageLocks({str(state / "locks")!r})
        locks.hold({image_id!r}, "someone-else")
        print("held", flush=True)
        sys.stdin.readline()
    """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        imports_before = control.calls("ImportVApp")
        t0 = time.monotonic()
        with pytest.raises(exceptions.ImageLockTimeout) as caught:
            api.spawn(conf, _name("lock-timeout"), image_id, vsphere=vsphere, images=images)
        assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert message.startswith(f"Waited 1 s for another spawn's import of image {image_id} "
                              "on this host")
    assert "nothing was created" in message and "image_lock_timeout" in message
    assert control.calls("ImportVApp") == imports_before
    # (the autouse leak check proves nothing was left in vCenter)


def test_a_killed_waiter_leaves_nothing_to_undo_and_its_flow_later_links(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk, destroy_after):
    """Waiting for another flow's import creates nothing: killing the waiter costs nothing."""
    from vsan_flows import conf as vconf
    from vsan_flows.runtime import persistence

    state = tmp_path / "state"
    conf = make_conf(simulator, wsdl_url, state)
    image_id = images.add_file(small_vmdk, name="waiter-dies")
    holder, waiter = _name("lock-holder"), _name("lock-waiter")
    destroy_after.extend([holder, waiter])
    imports_before = control.calls("ImportVApp")
    control.throttle_nfc(128 * 1024, direction="upload")  # the holder imports ~30 s
    results: dict = {}
    [holding] = _threads_spawning(conf, vsphere, images, image_id, [holder], results)
    holding.start()
    child = None
    try:
        deadline = time.monotonic() + 120
        while control.calls("ImportVApp") == imports_before:
            assert time.monotonic() < deadline, "the holder never started its import"
            time.sleep(0.1)
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.crash_child", json.dumps({
                "sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
                "state_dir": str(state), "db_url": vconf.persistence_url(conf), "op": "spawn",
                "instance": waiter, "image_id": image_id, "images_dir": str(images.directory),
                "cue": "none"})],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def waiting() -> bool:  # the waiter's flow is parked in placement, on the lock
            with contextlib.closing(persistence.open_backend(conf)) as backend:
                for book, fd in persistence.list_flow_details(backend):
                    if (book.meta or {}).get("instance") == waiter:
                        return any(ad.name == "PickVsanDatastore" and ad.state == "RUNNING"
                                   for ad in fd)
            return False

        while not waiting():
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the waiter never reached the lock"
            time.sleep(0.2)
        time.sleep(1.0)  # well inside its wait: the holder still streams
        assert holding.is_alive(), "the holder finished before the waiter was killed"
        child.kill()
        assert child.wait(timeout=30) == -9
        watchdog.join_all([holding], 300, "the lock holder")
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        control.reset()
    assert not isinstance(results[holder], Exception), results[holder]
    assert control.calls("ImportVApp") - imports_before == 1, "the waiter imported nothing"
    names = [vm["name"] for vm in control.status()["vms"]]
    assert waiter not in names and not [n for n in names if n.startswith("vsanflows-import-")]
    # Its flow is still there, unfinished; a restart finishes it by linking to the cache.
    outcomes = api.resume_unfinished(conf, vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["completed"], outcomes
    entry = _assert_all_linked(control, image_id, [holder, waiter])
    destroy_after.append(entry["name"])
    assert control.calls("ImportVApp") - imports_before == 1


# --------------------------------------------------------------------------- across hosts

def _host(zookeeper, path: str, name: str) -> dict:
    """Settings of one "host": its own conductor name; ZooKeeper shared by all hosts."""
    return {"vsan_flows__jobboard_hosts": [zookeeper.hosts], "vsan_flows__jobboard_path": path,
            "vsan_flows__jobboard_session_timeout": 2.0, "vsan_flows__conductor_name": name}


def test_two_hosts_sharing_zookeeper_import_a_new_image_once(
        simulator, wsdl_url, tmp_path, images, control, small_vmdk, destroy_after, zookeeper):
    """Separate state_dirs (no shared lock file): only ZooKeeper's lock keeps them apart."""
    path = f"/vsan-flows-test/{uuid.uuid4().hex[:8]}"
    image_id = images.add_file(small_vmdk, name="two-hosts")
    imports_before = control.calls("ImportVApp")
    control.throttle_nfc(2 * MiB, direction="upload")
    names = [_name("host-a-vm"), _name("host-b-vm")]
    destroy_after.extend(names)
    procs = [_spawn_child(simulator, wsdl_url, images, tmp_path / host, name, image_id,
                          _host(zookeeper, path, host))
             for host, name in zip(("host-a", "host-b"), names, strict=True)]
    with _reaped(procs):
        _go(procs)
        outs = [_outcome(p) for p in procs]
    assert not [o["error"] for o in outs if "error" in o], outs
    entry = _assert_all_linked(control, image_id, names)
    destroy_after.append(entry["name"])
    assert control.calls("ImportVApp") - imports_before == 1, "one import for two hosts"


def test_a_killed_holder_on_one_host_releases_to_a_waiter_on_another(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk, destroy_after,
        zookeeper):
    path = f"/vsan-flows-test/{uuid.uuid4().hex[:8]}"
    state_a = tmp_path / "host-a"
    db_a = f"sqlite:///{state_a}/flows.sqlite"
    image_id = images.add_file(small_vmdk, name="holder-host-dies")
    holder, waiter = _name("host-a-holder"), _name("host-b-waiter")
    destroy_after.extend([holder, waiter])
    imports_before = control.calls("ImportVApp")
    control.throttle_nfc(1 * MiB, direction="upload")  # the holder is mid-transfer a while
    child = _dying_holder(simulator, wsdl_url, images, state_a, db_a, holder, image_id,
                          _host(zookeeper, path, "host-a"))
    procs = [child]
    with _reaped(procs):
        deadline = time.monotonic() + 120
        while control.calls("ImportVApp") == imports_before:  # the holder holds the lock
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the holder never started its import"
            time.sleep(0.2)
        other = _spawn_child(simulator, wsdl_url, images, tmp_path / "host-b", waiter,
                             image_id, _host(zookeeper, path, "host-b"))
        procs.append(other)
        _go([other])
        assert child.wait(timeout=120) == -9, child.communicate()[1][-3000:]
        out = _outcome(other)
    assert "error" not in out, out
    assert control.calls("ImportVApp") - imports_before == 2, "the holder's, then the waiter's"
    entry = _assert_all_linked(control, image_id, [waiter])
    destroy_after.append(entry["name"])
    # Host A restarts: its flow re-takes the lock (never assumed held from before the crash)
    # and finishes, linking to the entry on its chosen datastore.
    conf_a = make_conf(simulator, wsdl_url, state_a, vsan_flows__persistence_connection=db_a,
                       vsan_flows__import_retries=2, **_host(zookeeper, path, "host-a"))
    outcomes = api.resume_unfinished(conf_a, vsphere=vsphere, images=images)
    assert [o[2] for o in outcomes] == ["completed"], outcomes
    entries = {e["name"]: e for e in _entries(control, image_id)}
    destroy_after.extend(n for n in entries if n != entry["name"])
    assert len(entries) <= 2  # at most one per datastore
    assert not [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("vsanflows-import-")], "half-imports left"


def test_a_wait_on_another_hosts_import_is_bounded_and_says_where(
        simulator, wsdl_url, tmp_path, vsphere, images, control, small_vmdk, zookeeper):
    """Another host (its own state_dir: no shared lock file) holds the ZooKeeper lock."""
    path = f"/vsan-flows-test/{uuid.uuid4().hex[:8]}"
    image_id = images.add_file(small_vmdk, name="held-on-another-host")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from vsan_flows.imagelocks import ImageLocks, ZooKeeperLocks
        locks = ImageLocks({str(tmp_path / "host-a" / "locks")!r}, zookeeper=ZooKeeperLocks(
            {zookeeper.hosts!r}, {path!r}, "host-a:holder", 2.0))
        locks.hold({image_id!r}, "someone-else")
        print("held", flush=True)
        sys.stdin.readline()
    """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    conf = make_conf(simulator, wsdl_url, tmp_path / "host-b",
                     vsan_flows__image_lock_timeout=1.0, **_host(zookeeper, path, "host-b"))
    try:
        assert holder.stdout.readline().strip() == "held"
        imports_before = control.calls("ImportVApp")
        with pytest.raises(exceptions.ImageLockTimeout) as caught:
            api.spawn(conf, _name("zk-lock-timeout"), image_id, vsphere=vsphere,
                      images=images)
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert message.startswith(f"Waited 1 s for another spawn's import of image {image_id} "
                              f"on the hosts sharing ZooKeeper {zookeeper.hosts}"), message
    assert "nothing was created" in message
    assert control.calls("ImportVApp") == imports_before
