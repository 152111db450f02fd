"""The simulator's locks hold under concurrent VM creation, destruction, leases and clones.

vcsim locks the object a SOAP call is on for the whole call, and the call then locks what else
it changes; two calls taking two locks in opposite orders deadlock, and every later call queues
behind them. That hung the resume benchmark (20 flows under the ``vcenter`` profile):
CreateVM_Task held its folder and wanted the resource pool while ImportVApp held the pool and
wanted the folder. The lock order is written down in tools/vcsim/simulator-extra/vsan_locks.go.

THREADS threads run every kind of call that takes several locks at once, on one folder and one
pool, each checking its own outcome: CreateVM_Task + Destroy_Task; ImportVApp, a Destroy the
lease refuses, HttpNfcLeaseAbort (the rollback destroys the VM under the lease's lock); an
import left to time out (the lease watcher rolls it back); an import whose lease task is
cancelled; a linked CloneVM_Task (under its source's lock) + Destroy_Task; with FindChild and
property reads of what they made. Before the fix the first of these runs hung within seconds.

The simulator is the test's own (a deadlock must not take the session's simulator with it).
A hang fails the test: when no call has finished for STALL_SECS, the report carries every
client thread's stack and the simulator's goroutines that wait for a lock (SIGQUIT dump), and
the simulator is gone, so the blocked threads end. Rounds: ``VSAN_FLOWS_LOCK_ROUNDS`` (default
3 iterations per thread, about 20-40 s on a loaded 2-core machine).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest
from oslo_vmware import api as vapi
from oslo_vmware import exceptions as vexc
from oslo_vmware import vim_util

from vsan_flows.simulator import launcher
from vsan_flows.vsphere import faults, inventory, transfer, vm

from . import watchdog

THREADS = 20
ROUNDS = int(os.environ.get("VSAN_FLOWS_LOCK_ROUNDS", "3"))
LATENCY_SCALE = 0.05  # the vcenter profile's shape, its delays cut to a twentieth
LEASE_TIMEOUT = 3  # seconds: an import left alone times out within a round
STALL_SECS = 45.0  # no call finished for this long: the simulator is stuck
DATASTORE = "vsanDatastore"
PREFIX = "lockt-"

pytestmark = [pytest.mark.slow, pytest.mark.stress]


@pytest.fixture(scope="module")
def own_simulator(tmp_path_factory):
    try:
        sim = launcher.start(tmp_path_factory.mktemp("vcsim-locks"), timeout=90,
                             latency="vcenter", latency_scale=LATENCY_SCALE)
    except launcher.SimulatorError as exc:
        pytest.fail(f"the vCenter simulator did not start: {exc}", pytrace=False)
    sim.control.lease_timeout(LEASE_TIMEOUT)
    yield sim
    if sim.alive():
        sim.stop()


@pytest.fixture(scope="module")
def session(own_simulator, wsdl_url):
    s = vapi.VMwareAPISession(
        own_simulator.host, own_simulator.username, own_simulator.password,
        api_retry_count=0, task_poll_interval=0.05, port=own_simulator.port,
        insecure=True, wsdl_loc=wsdl_url)
    yield s
    if own_simulator.alive():
        s.logout()


class Progress:
    """When a call last finished, and what failed: the workers' shared record."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.done = 0
        self.errors: list[str] = []

    def tick(self) -> None:
        with self.lock:
            self.last = time.monotonic()
            self.done += 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


class Ops:
    """The calls each worker makes, on one folder and pool; each checks its own outcome."""

    def __init__(self, session, progress: Progress) -> None:
        self.s = session
        self.p = progress
        cluster = inventory.cluster_by_name(session, None)
        self.pool = inventory.resource_pool(session, cluster)
        self.folder = inventory.vm_folder(session, cluster)

    def call(self, method, obj, **kwargs):
        out = self.s.invoke_api(self.s.vim, method, obj, **kwargs)
        self.p.tick()
        return out

    def wait(self, task):
        info = self.s.wait_for_task(task)
        self.p.tick()
        return info

    def prop(self, obj, name):
        out = self.s.invoke_api(vim_util, "get_object_property", self.s.vim, obj, name)
        self.p.tick()
        return out

    def config(self, name):
        return vm.import_spec(self.s.vim.client.factory, name, DATASTORE, 1024).configSpec

    def create(self, name):
        return self.wait(self.call("CreateVM_Task", self.folder, config=self.config(name),
                                   pool=self.pool)).result

    def destroy(self, ref) -> None:
        self.wait(self.call("Destroy_Task", ref))

    def found(self, name):
        """FindChild under the folder's lock, then a read of the VM under its own."""
        ref = self.call("FindChild", self.s.vim.service_content.searchIndex,
                        entity=self.folder, name=name)
        if ref is not None:
            assert self.prop(ref, "name") == name
        return ref

    def gone(self, ref) -> bool:
        try:
            self.prop(ref, "name")
        except vexc.VimException as exc:
            if faults.is_gone(exc):
                return True
            raise
        return False

    def start_import(self, name):
        spec = vm.import_spec(self.s.vim.client.factory, name, DATASTORE, 1024)
        lease = self.call("ImportVApp", self.pool, spec=spec, folder=self.folder)
        transfer.wait_ready(self.s, lease)
        self.p.tick()
        return lease, transfer.lease_entity(self.s, lease)

    # --- one iteration of each kind

    def create_destroy(self, name):
        ref = self.create(name)
        assert self.found(name) is not None, f"{name}: FindChild did not find the new VM"
        self.destroy(ref)
        assert self.gone(ref) and self.found(name) is None, f"{name}: still there"

    def import_abort(self, name):
        lease, ref = self.start_import(name)
        self.call("HttpNfcLeaseProgress", lease, percent=10)  # renews the lease just before
        try:
            self.wait(self.call("Destroy_Task", ref))
        except vexc.VimException as exc:
            refused = type(exc).__name__ == "TaskInProgress" or \
                "TaskInProgress" in (getattr(exc, "fault_list", None) or [])
            assert refused, f"{name}: destroy refused with {exc!r}"
        else:
            raise AssertionError(f"{name}: Destroy_Task succeeded while the lease was held")
        assert not self.gone(ref), f"{name}: a refused destroy removed the VM"
        assert transfer.abort(self.s, lease), f"{name}: the lease was gone before its abort"
        self.p.tick()
        assert self.gone(ref), f"{name}: the aborted import kept its VM"

    def import_expire(self, name):
        lease, ref = self.start_import(name)
        deadline = time.monotonic() + LEASE_TIMEOUT + 60
        while transfer.lease_state(self.s, lease) == "ready":
            assert time.monotonic() < deadline, f"{name}: the lease never timed out"
            self.p.tick()
            # The folder's lock, while the watcher may be rolling the import back.
            self.call("FindChild", self.s.vim.service_content.searchIndex,
                      entity=self.folder, name=name)
            time.sleep(0.25)
        assert transfer.lease_state(self.s, lease) == "error", f"{name}: lease not in error"
        assert self.gone(ref), f"{name}: the timed-out import kept its VM"
        transfer.abort(self.s, lease)  # a lease in error is released by the client

    def import_cancel(self, name):
        lease, ref = self.start_import(name)
        recent = self.prop(ref, "recentTask")
        (task,) = getattr(recent, "ManagedObjectReference", None) or [None]
        assert task is not None, f"{name}: the lease has no task on its VM"
        self.call("CancelTask", task)
        assert self.gone(ref), f"{name}: the cancelled import kept its VM"
        assert not transfer.abort(self.s, lease), f"{name}: the cancelled lease is still there"

    def clone_destroy(self, name, source, snapshot):
        ref = vm.clone_linked(self.s, source, snapshot, name=name, folder=self.folder,
                              pool=self.pool)
        self.p.tick()
        assert self.found(name) is not None, f"{name}: FindChild did not find the clone"
        self.destroy(ref)
        assert self.gone(ref), f"{name}: the clone is still there"


KINDS = ("create_destroy", "import_abort", "import_expire", "import_cancel", "clone_destroy")


def _blocked_goroutines(log_text: str) -> str:
    """The simulator's goroutines waiting for a mutex, one line each: their simulator frames."""
    out = []
    for block in re.split(r"\n(?=goroutine \d+ \[)", log_text.split("SIGQUIT", 1)[-1]):
        head = block.split("\n", 1)[0]
        if not head.startswith("goroutine") or "semacquire" not in head:
            continue
        lines = block.split("\n")
        frames = []
        for i, line in enumerate(lines[:-1]):
            if line.startswith("github.com/vmware/govmomi/simulator."):
                fn = line.split("github.com/vmware/govmomi/simulator.", 1)[1].split("(0x")[0]
                where = lines[i + 1].strip().split(" +")[0].rsplit("/", 1)[-1]
                frames.append(f"{fn.rstrip('(')} {where}")
        out.append(f"{head}\n    " + "\n    ".join(frames[:14]))
    return "\n".join(out) or "(no goroutine waits for a lock)"


def _join(threads, progress: Progress, sim) -> None:
    """Join the workers; a stall (no call finished for STALL_SECS) is a watchdog.Hang."""
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
        if time.monotonic() - progress.last > STALL_SECS and any(t.is_alive() for t in threads):
            alive = [t.name for t in threads if t.is_alive()]
            client = watchdog.stacks()
            sim.process.send_signal(signal.SIGQUIT)  # Go writes every goroutine and exits
            try:
                sim.process.wait(15)
            except Exception:  # noqa: BLE001 - still report what there is
                pass
            dump = _blocked_goroutines(sim.log_file.read_text(errors="replace"))
            raise watchdog.Hang(
                f"simulator locks: {len(alive)} of {len(threads)} threads made no progress "
                f"for {STALL_SECS:g} s ({', '.join(alive[:8])}) after {progress.done} calls; "
                f"the simulator's goroutines waiting for a lock:\n{dump}\n"
                f"--- client stacks ---\n{client}")


def test_concurrent_creates_imports_leases_clones_and_destroys_never_deadlock(
        own_simulator, session):
    progress = Progress()
    ops = Ops(session, progress)
    run = uuid.uuid4().hex[:6]
    source = ops.create(f"{PREFIX}{run}-source")
    snapshot = vm.create_snapshot(session, source, "base")

    def worker(i: int) -> None:
        kind = KINDS[i % len(KINDS)]
        for n in range(ROUNDS):
            name = f"{PREFIX}{run}-{i}-{n}"
            try:
                if kind == "clone_destroy":
                    ops.clone_destroy(name, source, snapshot)
                else:
                    getattr(ops, kind)(name)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                if not own_simulator.alive():
                    return  # the hang report says why
                progress.fail(f"{kind} {name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), name=f"locks-{KINDS[i % 5]}-{i}",
                                daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    _join(threads, progress, own_simulator)

    assert not progress.errors, (f"{len(progress.errors)} of {THREADS * ROUNDS} operations "
                                 f"failed: {progress.errors[:5]}")
    ops.destroy(source)
    left = [v["name"] for v in own_simulator.control.status()["vms"]
            if v["name"].startswith(PREFIX)]
    assert not left, f"VMs left behind: {left}"
    assert not own_simulator.control.status()["leases"], "leases left behind"
