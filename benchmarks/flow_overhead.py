#!/usr/bin/env python
"""Flow overhead benchmark: what TaskFlow + persistence cost around the vSphere calls.

A benchmark, not a test: it prints figures and asserts nothing about speed (the exit status is
non-zero only when the benchmark itself could not run). See benchmarks/README.md.

Sections (``--sections``, default all), all against one simulator started here:

overhead     ``api.spawn`` on a sqlite persistence file against ``procedural_spawn`` (below):
             the same ``vsan_flows.vsphere.*`` calls the spawn tasks make, in the same order,
             in a plain function (no TaskFlow engine, no persistence). Cold (image cache
             empty: the stream runs) and warm (second spawn of the image: no stream, the
             overhead shows most). ``flow`` is given a backend opened once (as the driver
             does); ``flow_open`` lets api.spawn open the backend from conf (schema check
             included) on every call. The storage time of ``flow`` is measured by timing
             every call on the backend's connection object and every SQL statement.
resume       ``--flows`` spawn flows interrupted by a real SIGKILL: one child process starts
             them one by one (each in its own thread, serially, on one session and one
             backend), each flow parks at its task boundary (or mid-transfer), and once all
             are parked the child SIGKILLs itself. Then, in fresh processes:
             ``find + load + decide`` (runner.unfinished, runner.load + compile + prepare +
             the interrupted-transfer decision) on a byte copy of the store, and the full
             ``api.resume_unfinished(conf)`` on the store itself.
concurrency  ``--concurrency`` warm spawns (distinct names, ``--images`` cached images) run
             serially, then concurrently: threads sharing one vSphere session, threads with a
             session each, and one process per spawn. Throughput and ratio to serial, latency
             percentiles, CPU used by us and by the simulator, and a sampling profile
             (file:line where the worker threads spend their time) of the threaded runs.
             Under each ``--profiles`` latency profile of the simulator (``none``: the CPU
             ceiling of this machine; ``vcenter``: a vCenter's task times, see
             docs/simulator-latency.md; only serial and shared-session threads there).
burst        ``--concurrency`` concurrent cold spawns of ONE new image against one cold spawn
             of another: ImportVApp calls (the simulator's call counts; goal exactly 1),
             bytes streamed (goal: one image), wall time ratio (goal <= 1.5x), per profile.

resume runs under each profile too (the flows are made and killed under ``none``, resumed
under the profile), with a baseline: one flow interrupted at the first cue (the most work
left), resumed alone under the same profile.

Every VM made is destroyed, the simulator is stopped, the work directory removed (unless
--keep), and a leak check is printed (the harness that does this is benchmarks/common.py).
``--smoke`` runs every section at tiny sizes once, to prove the benchmark still runs;
tests/functional/test_benchmarks_smoke.py does.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import common  # benchmarks/common.py: the simulator harness and helpers both benchmarks use
from common import fmt, log, make_conf, parse_size, size_label, timing_listener

# When this interpreter got to run the benchmark's own code: a child's "interpreter+imports".
T_START = time.monotonic()
OVERHEAD_GOAL = 1.10
CONCURRENCY_GOAL = 5.0
BURST_GOAL = 1.5
RESUME_DECIDE_GOAL_S = 5.0
RESUME_RATIO_GOAL = 3.0
PROFILES = ("none", "vcenter")
SPAWN_ATOMS = ["ValidateStreamOptimizedImage", "PickVsanDatastore", "LookupImageCache",
               "CreateImportLease", "StreamDiskToLease", "CompleteLease", "RegisterShadowVM",
               "CloneLinkedDisk"]
# Where the resume section's flows are killed: just before each task (the task is RUNNING in
# the store), mid-transfer (bytes on the wire) and after the last task. Within one image, the
# cues before CloneLinkedDisk run while its cache entry does not exist yet, so the import
# cues really import.
CUES = ([f"{a}:before" for a in SPAWN_ATOMS[:5]] + ["transfer"]
        + [f"{a}:before" for a in SPAWN_ATOMS[5:]] + ["CloneLinkedDisk:after"])


med = common.median


def r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def percentiles(values: list[float]) -> dict:
    """p50/p90/p99/max of latencies (nearest rank; few values make p99 the max)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {}

    def rank(q: float) -> float:
        return vals[min(len(vals) - 1, max(0, int(round(q * len(vals) + 0.5)) - 1))]

    return {"p50": r3(rank(0.50)), "p90": r3(rank(0.90)), "p99": r3(rank(0.99)),
            "max": r3(vals[-1])}


def product_poll_interval() -> float:
    """``[vmware] task_poll_interval`` as shipped (what a compute host polls vCenter at)."""
    from vsan_flows import conf as vconf

    return next(o.default for o in vconf.vmware_opts if o.name == "task_poll_interval")


def poll_for(profile: str) -> float | None:
    """The task poll interval a measurement under ``profile`` runs with.

    Under ``none`` tasks end at once and the test suite's 0.05 s (make_conf) costs nothing.
    Under a latency profile, which stands for a deployment, flows poll at the product default:
    with 0.05 s, 95 of a spawn's 124 SOAP calls under ``vcenter`` were polls (a task or lease
    every 50 ms), and 20-40 concurrent flows spent the process's one GIL on suds parsing them.
    """
    return None if profile == "none" else product_poll_interval()


def sql_conf(sim_info: dict, wsdl: str, state_dir: str, db: str, poll: float | None = None,
             **flows):
    conf = make_conf(sim_info, wsdl, state_dir)
    if poll is not None:
        conf.set_override("task_poll_interval", poll, "vmware")
    url = db if db.startswith("memory://") else f"sqlite:///{db}"
    conf.set_override("persistence_connection", url, "vsan_flows")
    for name, value in flows.items():
        conf.set_override(name, value, "vsan_flows")
    return conf


# --------------------------------------------------------------------------------- procedural

def procedural_spawn(vsphere, images, policy, instance_name: str, image_id: str) -> dict:
    """The spawn flow's vSphere calls, in its order, as one plain function.

    Task by task (vsan_flows/tasks/*.py), without the engine, the store, the Retry, the
    locks and the reverts: what a hand-written spawn would do, checking what it sends as the
    flow does (stream structure, the image's recorded hash, the stored disk). Returns what
    the flow returns that the benchmark needs (instance and shadow VM names, bytes sent).
    """
    from vsan_flows import exceptions, imagecache
    from vsan_flows.streamcheck import StreamTap
    from vsan_flows.tasks.image import ValidateStreamOptimizedImage
    from vsan_flows.tasks.stream import _same_hash as same_hash
    from vsan_flows.vsphere import imports, instances, leases, placement

    token = uuid.uuid4().hex[:12]
    import_vm_name = f"vsanflows-import-{token}"
    # ValidateStreamOptimizedImage: image service only; the same checks, called plainly.
    image = ValidateStreamOptimizedImage().execute(images, image_id)
    # PickVsanDatastore
    candidates = imports.list_datastores(vsphere)
    rules = {"allowed_types": policy.datastore_types, "name_regex": policy.datastore_regex,
             "required_bytes": image["virtual_size"]}
    cached = set(instances.names_with_prefix(vsphere, imagecache.vm_name(image["id"], "")))
    warm = [d for d in candidates if imagecache.vm_name(image["id"], d.moref) in cached]
    chosen = None
    if warm:
        with contextlib.suppress(exceptions.NoSuitableDatastore):
            chosen, _ = placement.choose_datastore(warm, **rules)
    if chosen is None:
        chosen, _ = placement.choose_datastore(candidates, **rules)
    # LookupImageCache
    cache_name = imagecache.vm_name(image["id"], chosen.moref)
    shadow = None
    vm_id = instances.find(vsphere, cache_name)
    if vm_id is not None:
        note = instances.annotation(vsphere, vm_id)
        if imagecache.is_entry_for(note, image["id"]):
            disk = instances.first_disk(vsphere, vm_id)
            shadow = {"vm": vm_id, "name": cache_name, "disk": disk["path"]}
    sent = 0
    if shadow is None:
        # CreateImportLease
        leftover = instances.find(vsphere, import_vm_name)
        if leftover is not None:
            instances.destroy(vsphere, leftover)
        lease = imports.begin_import(
            vsphere, vm_name=import_vm_name, datastore_name=chosen.name,
            capacity_bytes=image["virtual_size"], adapter_type=image["adapter_type"],
            guest_id=image["os_type"])
        # StreamDiskToLease: the same checks, the recorded hash included (as the task: unless
        # the source checks it itself).
        with images.open(image["id"]) as source:
            recorded = image.get("hash")
            if recorded and same_hash(getattr(source, "verifies_hash", None), recorded):
                recorded = None
            tap = StreamTap(source, image_id=image["id"],
                            expected_hash=tuple(recorded) if recorded else None)
            sent = imports.upload(vsphere, lease["lease"], tap, image["size"])
        tap.check_complete()
        if policy.verify_stored_size and lease.get("vm"):
            imports.check_imported_disk(vsphere, lease["lease"], lease["vm"], chosen.name,
                                        image["virtual_size"])
        # CompleteLease
        leases.complete(vsphere, lease["lease"])
        # RegisterShadowVM
        existing = instances.find(vsphere, cache_name)
        if existing is not None:
            raise RuntimeError(f"{cache_name} appeared meanwhile")
        imported = instances.find(vsphere, import_vm_name)
        instances.rename(vsphere, imported, cache_name, imagecache.note(image, token))
        disk = instances.first_disk(vsphere, imported)
        shadow = {"vm": imported, "name": cache_name, "disk": disk["path"]}
    # CloneLinkedDisk
    if instances.find(vsphere, instance_name) is not None:
        raise RuntimeError(f"{instance_name} exists")
    new = instances.create_linked(
        vsphere, name=instance_name, datastore_name=chosen.name, parent_vm_id=shadow["vm"],
        adapter_type=image["adapter_type"], guest_id=image["os_type"],
        note=f"vsan_flows instance: flow={token}")
    # ... and checks that the entry is still the entry (not evicted while it linked)
    if instances.current_name(vsphere, shadow["vm"]) != shadow["name"]:
        raise RuntimeError(f"{shadow['name']} was evicted while it was linked to")
    instances.first_disk(vsphere, new)
    return {"instance": instance_name, "shadow": shadow["name"], "bytes_sent": sent}


# --------------------------------------------------------------------------------- storage meter

class StorageMeter:
    """Times every call on a backend's (shared) connection object and every SQL statement.

    Benchmark-side instrumentation only: the connection's public methods are wrapped on the
    instance, and SQLAlchemy cursor events time statement execution.
    """

    def __init__(self, backend) -> None:
        import sqlalchemy as sa

        self.calls: collections.Counter = collections.Counter()
        self.secs: collections.defaultdict = collections.defaultdict(float)
        self.sql_n = 0
        self.sql_s = 0.0
        conn = backend.get_connection()
        if backend.get_connection() is not conn:
            raise RuntimeError("the backend does not share its connection object")
        for name in dir(conn):
            attr = getattr(conn, name)
            if name.startswith("_") or name in ("close", "backend") or not callable(attr):
                continue
            setattr(conn, name, self._wrap(name, attr))

        def before(conn_, cursor, statement, params, context, many):
            conn_.info.setdefault("bench_t0", []).append(time.perf_counter())

        def after(conn_, cursor, statement, params, context, many):
            self.sql_s += time.perf_counter() - conn_.info["bench_t0"].pop()
            self.sql_n += 1

        sa.event.listen(backend.engine, "before_cursor_execute", before)
        sa.event.listen(backend.engine, "after_cursor_execute", after)

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.secs[name] += time.perf_counter() - t0
                self.calls[name] += 1
        return timed

    def snapshot(self) -> tuple:
        return (sum(self.secs.values()), sum(self.calls.values()), self.sql_s, self.sql_n,
                dict(self.secs), dict(self.calls))

    @staticmethod
    def delta(a: tuple, b: tuple) -> dict:
        per = {k: round(b[4][k] - a[4].get(k, 0.0), 4) for k in b[4]
               if b[5][k] != a[5].get(k, 0)}
        return {"storage_s": b[0] - a[0], "storage_calls": b[1] - a[1],
                "sql_exec_s": b[2] - a[2], "sql_statements": b[3] - a[3],
                "per_method_s": per,
                "per_method_calls": {k: b[5][k] - a[5].get(k, 0) for k in per}}


# --------------------------------------------------------------------------------- sampler

class StackSampler(threading.Thread):
    """A wall-clock sampling profiler over a set of threads: where each one is, every few ms.

    Counts the innermost frame (leaf) and the innermost frame in our code per sample, so a
    lock or a serial resource shows up as many threads sitting on the same file:line.
    """

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.idents: set[int] = set()
        self.leaf: collections.Counter = collections.Counter()
        self.ours: collections.Counter = collections.Counter()
        self.lib: collections.Counter = collections.Counter()
        self.samples = 0
        self._halt = threading.Event()

    @staticmethod
    def _site(frame) -> str:
        code = frame.f_code
        parts = code.co_filename.split("/site-packages/")
        path = parts[-1] if len(parts) > 1 else os.path.relpath(code.co_filename, common.ROOT)
        return f"{path}:{frame.f_lineno} {code.co_name}"

    @staticmethod
    def _frames() -> dict:
        """``sys._current_frames()`` with the garbage collector paused.

        On CPython <= 3.11 it holds the interpreter's thread-list lock while it allocates frame
        objects; an allocation may run the collector, and freeing a ``threading.local`` takes
        that lock again: this thread then blocks forever holding the GIL, and every other
        thread stops at its next GIL hand-over (CPython gh-106883). That, and nothing in the
        library, was the 25-minute hang of this section (docs/concurrency.md).
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return sys._current_frames()
        finally:
            if enabled:
                gc.enable()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            frames = self._frames()
            for ident in list(self.idents):
                frame = frames.get(ident)
                if frame is None:
                    continue
                self.samples += 1
                self.leaf[self._site(frame)] += 1
                f, lib_done = frame, False
                while f is not None:
                    name = f.f_code.co_filename
                    if not lib_done and "/site-packages/" in name and "/threading.py" not in name:
                        top = name.split("/site-packages/")[-1].split("/")[0]
                        self.lib[top] += 1
                        lib_done = True
                    if "/vsan_flows/" in name:
                        self.ours[self._site(f)] += 1
                        break
                    f = f.f_back

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        n = max(1, self.samples)

        def top(counter, k=12):
            return [[site, round(c / n, 3)] for site, c in counter.most_common(k)]

        return {"samples": self.samples, "leaf": top(self.leaf), "ours": top(self.ours),
                "library_share": top(self.lib, 8)}


# --------------------------------------------------------------------------------- children

def _park_listener(cue: str, parked: threading.Event):
    """A listener factory that blocks the flow's thread forever at ``cue``, after saying so."""
    from taskflow import states, task

    forever = threading.Event()

    def park(*_a, **_kw) -> None:
        parked.set()
        forever.wait()

    if cue == "transfer":
        def on_event(state, details):
            if details.get("task_name", "").endswith("StreamDiskToLease") and \
                    state == states.RUNNING:
                for atom in engine_ref[0].compilation.execution_graph.nodes:
                    if atom.name.endswith("StreamDiskToLease"):
                        # The first progress call comes after the first chunk went out.
                        atom.notifier.register(task.EVENT_UPDATE_PROGRESS, park)
    else:
        atom_name, when = cue.split(":")
        wanted = states.RUNNING if when == "before" else states.SUCCESS

        def on_event(state, details):
            if details.get("task_name", "").endswith(atom_name) and state == wanted:
                park()

    engine_ref: list = []

    def make(engine):
        engine_ref.append(engine)

        class _Reg:
            def __enter__(self):
                engine.atom_notifier.register("*", on_event)

            def __exit__(self, *exc):
                return False

        return _Reg()

    return make


def child_create(spec: dict) -> None:
    """Start every planned spawn, let each park at its cue, then SIGKILL this process."""
    from vsan_flows import api
    from vsan_flows.images import LocalImageService
    from vsan_flows.runtime import persistence
    from vsan_flows.vsphere.session import connect

    conf = sql_conf(spec["sim"], spec["wsdl"], spec["state_dir"], spec["db"],
                    import_retries=2)
    vsphere = connect(conf)
    images = LocalImageService(spec["images_dir"])
    backend = persistence.open_backend(conf)
    t0 = time.monotonic()
    parked, errors = 0, []
    for name, image_id, cue in spec["plan"]:
        got, done, err = threading.Event(), threading.Event(), []

        def run(name=name, image_id=image_id, cue=cue, got=got, done=done, err=err):
            try:
                api.spawn(conf, name, image_id, vsphere=vsphere, images=images,
                          backend=backend, listeners=(_park_listener(cue, got),))
            except Exception as exc:  # noqa: BLE001 - reported
                err.append(f"{type(exc).__name__}: {exc}")
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        while not (got.wait(0.01) or done.is_set()):
            pass
        if got.is_set():
            parked += 1
        else:
            errors.append(f"{name} ({cue}) did not park: {err or 'it finished'}")
    print(json.dumps({"parked": parked, "errors": errors,
                      "seconds": time.monotonic() - t0}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def child_probe(spec: dict, t_start: float) -> dict:
    """find + load + decide on a copy of the store, in a fresh process; runs nothing."""
    import cProfile
    import pstats

    from taskflow import atom as tf_atom
    from taskflow import states

    from vsan_flows import api
    from vsan_flows.images import LocalImageService
    from vsan_flows.runtime import persistence, runner

    out: dict = {"imports_s": time.monotonic() - t_start}
    conf = sql_conf(spec["sim"], spec["wsdl"], spec["state_dir"], spec["db"],
                    import_retries=2)
    t = time.monotonic()
    backend = persistence.open_backend(conf)
    out["open_backend_s"] = time.monotonic() - t
    t = time.monotonic()
    todo = runner.unfinished(backend)
    out["find_s"] = time.monotonic() - t
    out["found"] = len(todo)
    t = time.monotonic()
    transients = api.open_handles(
        conf, images=LocalImageService(spec["images_dir"])).transients()
    out["login_s"] = time.monotonic() - t
    states_seen: collections.Counter = collections.Counter()
    failed_transfers = 0
    prof = cProfile.Profile()
    t = time.monotonic()
    prof.enable()
    for book, fd in todo:
        eng = runner.load(backend, fd, transients, book=book)  # as runner.resume_all does
        eng.compile()
        eng.prepare()
        before = {a.name: eng.storage.get_atom_state(a.name)
                  for a in eng.compilation.execution_graph.nodes
                  if isinstance(a, tf_atom.Atom)}
        runner.fail_interrupted_transfers(eng)
        restartable = {a.name for a in eng.compilation.execution_graph.nodes
                       if getattr(a, "restart_after_crash", False)}
        for name, st in before.items():
            states_seen[st] += 1
            if st == states.RUNNING and name in restartable:
                failed_transfers += 1
    prof.disable()
    out["load_decide_s"] = time.monotonic() - t
    out["atom_states"] = dict(states_seen)
    out["transfers_restarted"] = failed_transfers
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
        if "taskflow" in path or "vsan_flows" in path or "sqlalchemy" in path:
            rows.append((ct, f"{path.split('site-packages/')[-1]}:{line} {func}", nc))
    rows.sort(reverse=True)
    out["profile_top_cumulative"] = [[s, round(ct, 3), nc] for ct, s, nc in rows[:12]]
    return out


def _instance_name(eng) -> str:
    from vsan_flows import names

    try:
        return eng.storage.fetch(names.INSTANCE_NAME)
    except Exception:  # noqa: BLE001 - a label only
        return "?"


def child_resume(spec: dict, t_start: float) -> dict:
    """The real thing: api.resume_unfinished(conf) in a fresh process, timed as a whole; the
    engine runs are timed by wrapping runner._run (benchmark-side, not a code change)."""
    from vsan_flows import api
    from vsan_flows.images import LocalImageService
    from vsan_flows.runtime import runner

    out: dict = {"imports_s": time.monotonic() - t_start}
    conf = sql_conf(spec["sim"], spec["wsdl"], spec["state_dir"], spec["db"],
                    poll=spec.get("poll"), import_retries=2)
    if spec.get("width"):
        conf.set_override("max_concurrent_flows", spec["width"], "vsan_flows")
    run_s = [0.0]
    run_lock = threading.Lock()
    real_run = runner._run
    # Where the resumed flows spend their time: seconds per atom and phase (execute/revert),
    # summed over flows, and each flow's (start, end, atoms run) for the schedule's shape.
    atom_s: collections.Counter = collections.Counter()
    atom_n: collections.Counter = collections.Counter()
    flow_spans: list = []
    t_origin = time.monotonic()

    def timed_run(eng, listeners=()):
        began: dict = {}
        ran = [0]
        atoms: list = []

        def on_atom(state, details):
            name = details.get("task_name") or details.get("retry_name") or "?"
            now = time.monotonic()
            if state in ("RUNNING", "REVERTING"):
                began[name] = (state, now)
            elif name in began:
                phase, t0 = began.pop(name)
                key = f"{name}:{'run' if phase == 'RUNNING' else 'revert'}"
                ran[0] += 1
                atoms.append((key, round(t0 - t, 2), round(now - t0, 2)))
                with run_lock:
                    atom_s[key] += now - t0
                    atom_n[key] += 1

        eng.atom_notifier.register("*", on_atom)
        t = time.monotonic()
        try:
            return real_run(eng, listeners)
        finally:
            end = time.monotonic()
            with run_lock:
                run_s[0] += end - t
                flow_spans.append((round(t - t_origin, 2), round(end - t_origin, 2), ran[0],
                                   _instance_name(eng), atoms))

    runner._run = timed_run
    # Garbage collections during the resume: how many per generation, and their pause.
    gc_s: collections.Counter = collections.Counter()
    gc_n: collections.Counter = collections.Counter()
    gc_t0 = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_s[info["generation"]] += time.perf_counter() - gc_t0[0]
            gc_n[info["generation"]] += 1

    gc.callbacks.append(on_gc)
    t = time.monotonic()
    cpu = time.process_time()
    outcomes = api.resume_unfinished(conf, images=LocalImageService(spec["images_dir"]))
    out["resume_unfinished_s"] = time.monotonic() - t
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    gc.callbacks.remove(on_gc)
    out["gc"] = {g: [gc_n[g], round(gc_s[g], 3)] for g in sorted(gc_n)}
    out["gc_frozen"] = gc.get_freeze_count()
    out["task_poll_interval"] = conf.vmware.task_poll_interval
    out["engine_run_s"] = run_s[0]  # summed over flows (they overlap)
    out["atom_s"] = {k: [round(v, 2), atom_n[k]] for k, v in atom_s.most_common()}
    # The schedule's shape: (start, end, tasks run, flow) per flow; the per-task detail of the
    # slowest five (the JSON line stays readable).
    spans = sorted(flow_spans)
    out["flow_spans"] = [sp[:4] for sp in spans]
    out["slowest_flows"] = sorted(spans, key=lambda sp: sp[0] - sp[1])[:5]
    out["max_concurrent_flows"] = conf.vsan_flows.max_concurrent_flows
    out["outcomes"] = dict(collections.Counter(o[2].split(":")[0] for o in outcomes))
    out["failures"] = [o[2] for o in outcomes if o[2] != "completed"][:5]
    return out


def child_worker(spec: dict) -> None:
    """One process of the concurrency section: log in, say ready, wait for go, spawn."""
    from vsan_flows import api
    from vsan_flows.images import LocalImageService
    from vsan_flows.runtime import persistence
    from vsan_flows.vsphere import instances
    from vsan_flows.vsphere.session import connect

    conf = sql_conf(spec["sim"], spec["wsdl"], spec["state_dir"], spec["db"],
                    poll=spec.get("poll"))
    vsphere = connect(conf)
    instances.find(vsphere, "bench-warm-up")  # placement cache, as the serial run has it
    images = LocalImageService(spec["images_dir"])
    backend = persistence.open_backend(conf)
    print("ready", flush=True)
    sys.stdin.readline()
    res = []
    cpu0 = time.process_time()
    for name, image_id in spec["plan"]:
        t = time.monotonic()
        err = None
        try:
            api.spawn(conf, name, image_id, vsphere=vsphere, images=images, backend=backend)
        except Exception as exc:  # noqa: BLE001 - reported
            err = f"{type(exc).__name__}: {exc}"
        res.append({"start": t, "end": time.monotonic(), "error": err})
    print(json.dumps({"spawns": res, "cpu_s": time.process_time() - cpu0}), flush=True)
    with contextlib.suppress(Exception):
        vsphere.close()


# --------------------------------------------------------------------------------- bench

class FlowBench(common.Harness):
    """The flow sections on the shared harness (one simulator, fixtures, leak check)."""

    SCRIPT = Path(__file__).resolve()

    def __init__(self, args, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.results = {"overhead": {}, "resume": {}, "concurrency": {}, "burst": {}}
        for sub in ("overhead", "concurrency"):
            (workdir / sub).mkdir()

    def more_images(self, fx: dict, n: int) -> list[str]:
        """``n`` image ids with the fixture's bytes (distinct ids = distinct cache entries)."""
        ids = [fx["image_id"]]
        for i in range(1, n):
            ids.append(self.images.add_file(fx["path"], name=f"{fx['path'].name}-{i}"))
        return ids

    profile = "none"

    def set_profile(self, profile: str) -> dict:
        """The simulator's latency profile for what follows (scaled by --latency-scale)."""
        scale = self.args.latency_scale if profile != "none" else 1.0
        self.profile = profile
        return self.sim.control.set_latency(profile, scale=scale)

    def destroy_quiet(self, names) -> None:
        """Clean-up is not measured: it runs without the profile's delays."""
        current = self.profile
        if current != "none":
            self.set_profile("none")
        try:
            super().destroy_quiet(names)
        finally:
            if current != "none":
                self.set_profile(current)

    def sim_cpu(self) -> float:
        import psutil

        t = psutil.Process(self.sim.process.pid).cpu_times()
        return t.user + t.system

    # ---------------------------------------------------------------- overhead

    def section_overhead(self) -> None:
        from vsan_flows import api
        from vsan_flows.policy import Policy
        from vsan_flows.runtime import persistence

        self.set_profile("none")  # flow overhead is CPU: measured with nothing to wait on
        fx = self.fixture(self.args.size)
        db = self.workdir / "overhead" / "flows.sqlite"
        conf = sql_conf(self.sim_info, self.wsdl_url, str(self.state_dir), str(db))
        backend = persistence.open_backend(conf)
        meter = StorageMeter(backend)
        policy = Policy.from_conf(conf)
        image_id = fx["image_id"]

        def flow(name: str) -> dict:
            durations: dict = {}
            a = meter.snapshot()
            t = time.monotonic()
            res = api.spawn(conf, name, image_id, vsphere=self.vsphere, images=self.images,
                            backend=backend, listeners=(timing_listener(durations),))
            secs = time.monotonic() - t
            d = StorageMeter.delta(a, meter.snapshot())
            tasks = sum(v for k, v in durations.items() if k != "spawn")
            return {"seconds": secs, "shadow": res["shadow_vm"]["name"], **d,
                    "tasks_s": tasks, "tasks": durations}

        def flow_open(name: str) -> dict:
            t = time.monotonic()
            res = api.spawn(conf, name, image_id, vsphere=self.vsphere, images=self.images)
            return {"seconds": time.monotonic() - t, "shadow": res["shadow_vm"]["name"]}

        def proc(name: str) -> dict:
            t = time.monotonic()
            res = procedural_spawn(self.vsphere, self.images, policy, name, image_id)
            return {"seconds": time.monotonic() - t, "shadow": res["shadow"]}

        kinds = {"proc": proc, "flow": flow, "flow_open": flow_open}
        out: dict = {"size": fx["label"], "file_bytes": fx["file_bytes"], "db": "sqlite file"}
        for variant in ("cold", "warm"):
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            keep_shadow = None
            if variant == "warm":
                name = f"bench-ovh-prime-{uuid.uuid4().hex[:6]}"
                keep_shadow = flow_open(name)["shadow"]
                self.destroy_quiet([name])
            order = list(kinds)
            for i in range(self.args.runs):
                for kind in order[i % len(order):] + order[: i % len(order)]:
                    name = f"bench-ovh-{kind}-{uuid.uuid4().hex[:6]}"
                    r = kinds[kind](name)
                    runs[kind].append(r)
                    self.destroy_quiet([name] + ([r["shadow"]] if variant == "cold" else []))
                    log(f"  overhead {variant} run {i + 1} {kind:9s} {r['seconds']:6.3f}s")
            if keep_shadow:
                self.destroy_quiet([keep_shadow])
            out[variant] = summarize_overhead(runs)
        # What flow_open adds: open_backend (engine, pool, schema check under the file lock).
        opens = []
        for _ in range(self.args.runs):
            t = time.monotonic()
            b = persistence.open_backend(conf)
            opens.append(time.monotonic() - t)
            b.close()
        out["open_backend_s"] = r3(med(opens))
        self.results["overhead"] = out

    # ---------------------------------------------------------------- resume

    def section_resume(self) -> None:
        out: dict = {}
        # --smoke: the last profile only (each profile kills and resumes its own flows).
        for profile in self.args.profiles[-1:] if self.args.smoke else self.args.profiles:
            res = self.resume_once(profile, self.args.flows, probe=True)
            one = self.resume_once(profile, 1, probe=False, cue=CUES[0])
            res["one_flow"] = one["full"]
            res["ratio_to_one_flow"] = round(res["full"]["resume_unfinished_s"]
                                             / one["full"]["resume_unfinished_s"], 2)
            log(f"  resume [{profile}]: {res['flows']} flows "
                f"{res['full']['resume_unfinished_s']:.1f}s, one flow "
                f"{one['full']['resume_unfinished_s']:.1f}s: {res['ratio_to_one_flow']}x")
            # The same again, more at a time: the default width bounds the completion at
            # (the flows' summed remaining work) / width, whatever the code does.
            res["wider"] = {}
            for width in self.args.resume_widths if profile != "none" else ():
                w = self.resume_once(profile, self.args.flows, probe=False, width=width)
                w["ratio_to_one_flow"] = round(w["full"]["resume_unfinished_s"]
                                               / one["full"]["resume_unfinished_s"], 2)
                log(f"  resume [{profile}] {width} at a time: "
                    f"{w['full']['resume_unfinished_s']:.1f}s: {w['ratio_to_one_flow']}x")
                res["wider"][str(width)] = w
            out[profile] = res
        self.set_profile("none")
        self.results["resume"] = out

    def resume_once(self, profile: str, n: int, *, probe: bool, cue: str | None = None,
                    width: int | None = None) -> dict:
        """``n`` spawns killed at their cues (under ``none``), resumed under ``profile``,
        ``width`` ([vsan_flows] max_concurrent_flows; None: its default) at a time."""
        from vsan_flows.runtime import persistence, runner

        self.set_profile("none")
        fx = self.fixture(self.args.resume_size)
        # One image per interrupted flow: the create child parks every flow at its cue in one
        # process, and a flow parked inside its import holds that image's import lock (one
        # import per image), so a second flow of the same image would wait for it forever.
        rounds = n
        image_ids = self.more_images(fx, rounds)
        tok = uuid.uuid4().hex[:4]
        plan = [(f"bench-res-{tok}-{i:03d}", image_ids[i], cue or CUES[i % len(CUES)])
                for i in range(n)]
        rdir = self.workdir / f"resume-{profile}-{tok}"
        rdir.mkdir(exist_ok=True)
        db = rdir / "flows.sqlite"
        out: dict = {"flows": n, "size": fx["label"], "images": rounds, "profile": profile,
                     "cues": dict(collections.Counter(c for _, _, c in plan))}
        log(f"  resume [{profile}]: creating {n} interrupted spawns in a child that SIGKILLs "
            "itself")
        t = time.monotonic()
        rc, made, err = self.run_child(self.spec(mode="create", db=str(db), plan=plan))
        out["create_s"] = round(time.monotonic() - t, 2)
        if rc != -signal.SIGKILL or not made:
            raise RuntimeError(f"create child ended with {rc}: {err[-2000:]}")
        out["parked"], out["create_errors"] = made["parked"], made["errors"]
        log(f"  resume: {made['parked']} flows parked and killed in {out['create_s']:.1f}s "
            f"({len(made['errors'])} did not park)")
        self.set_profile(profile)
        if probe:
            # find + load + decide on a byte copy (sqlite file + WAL), so the real run sees
            # the store exactly as the kill left it.
            pdir = rdir / "probe"
            pdir.mkdir()
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(db) + suffix)
                if src.exists():
                    shutil.copy2(src, pdir / src.name)
            rc, probe_out, err = self.run_child(self.spec(mode="probe",
                                                          db=str(pdir / db.name)))
            if rc != 0:
                raise RuntimeError(f"probe child failed ({rc}): {err[-2000:]}")
            out["probe"] = probe_out
            log(f"  resume probe: found {probe_out['found']} in {probe_out['find_s']:.2f}s, "
                f"load+decide {probe_out['load_decide_s']:.2f}s")
        rc, full, err = self.run_child(self.spec(mode="resume", db=str(db), width=width,
                                                 poll=poll_for(profile)))
        if rc != 0:
            raise RuntimeError(f"resume child failed ({rc}): {err[-2000:]}")
        out["full"] = full
        log(f"  resume: api.resume_unfinished {full['resume_unfinished_s']:.1f}s "
            f"(engine runs {full['engine_run_s']:.1f}s summed): {full['outcomes']}")
        self.set_profile("none")
        backend = persistence.backend_from_url(f"sqlite:///{db}")
        out["unfinished_after"] = len(runner.unfinished(backend))
        backend.close()
        self.cleanup_all()
        return out

    # ---------------------------------------------------------------- concurrency

    def per_profile(self, section: str, measure) -> None:
        """``measure(profile)`` under each --profiles profile; then back to ``none``."""
        self.results[section] = {p: measure(p) for p in self.args.profiles}
        self.set_profile("none")

    def section_concurrency(self) -> None:
        self.per_profile("concurrency", self.concurrency_once)

    def concurrency_once(self, profile: str) -> dict:  # noqa: C901 - one measurement per mode
        from vsan_flows import api
        from vsan_flows.runtime import persistence
        from vsan_flows.vsphere import instances
        from vsan_flows.vsphere.session import connect

        n, k = self.args.concurrency, self.args.images
        fx = self.fixture(self.args.size)
        image_ids = self.more_images(fx, k)
        cdir = self.workdir / "concurrency" / profile
        cdir.mkdir(parents=True, exist_ok=True)
        db = cdir / "flows.sqlite"
        conf = sql_conf(self.sim_info, self.wsdl_url, str(self.state_dir), str(db),
                        poll=poll_for(profile))
        # Warm every image's cache entry: each spawn below is a cache hit (same work each).
        self.set_profile("none")
        warm_names = []
        for i, img in enumerate(image_ids):
            name = f"bench-cc-warm-{profile}-{i}"
            api.spawn(conf, name, img, vsphere=self.vsphere, images=self.images)
            self.destroy_quiet([name])
            warm_names.append(name)
        latency = self.set_profile(profile)
        backends = {"sqlite": persistence.open_backend(conf),
                    "memory": persistence.backend_from_url("memory://")}
        persistence.upgrade_schema(backends["memory"])
        out: dict = {"spawns": n, "images": k, "size": fx["label"], "variant": "warm (cache hit)",
                     "profile": profile, "latency_scale": latency["scale"], "modes": {}}
        everything = profile == "none"  # the other profiles: serial and shared-session threads

        def one(vsphere, name, img, sink, store="sqlite") -> None:
            t = time.monotonic()
            err = None
            try:
                api.spawn(conf, name, img, vsphere=vsphere, images=self.images,
                          backend=backends[store])
            except Exception as exc:  # noqa: BLE001 - reported
                err = f"{type(exc).__name__}: {exc}"
            sink.append({"seconds": time.monotonic() - t, "error": err})

        def plan(mode):
            tok = uuid.uuid4().hex[:4]
            return [(f"bench-cc-{mode}-{tok}-{i:02d}", image_ids[i % k]) for i in range(n)]

        def threaded(mode, sessions, store="sqlite") -> dict:
            p = plan(mode)
            sink: list = []
            sampler = StackSampler()
            barrier = threading.Barrier(n + 1)

            def worker(i):
                barrier.wait()
                one(sessions[i], p[i][0], p[i][1], sink, store)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
            for th in threads:
                th.start()
            sampler.idents = {th.ident for th in threads}
            sampler.start()
            cpu0, sim0 = time.process_time(), self.sim_cpu()
            t = time.monotonic()
            barrier.wait()
            for th in threads:
                th.join()
            wall = time.monotonic() - t
            cpu, sim = time.process_time() - cpu0, self.sim_cpu() - sim0
            prof = sampler.stop()
            self.destroy_quiet([name for name, _ in p])
            return {"wall_s": wall, "cpu_s": cpu, "sim_cpu_s": sim, "runs": sink,
                    "profile": prof}

        modes: dict = {}
        # serial
        p = plan("serial")
        sink: list = []
        cpu0, sim0 = time.process_time(), self.sim_cpu()
        t = time.monotonic()
        for name, img in p:
            one(self.vsphere, name, img, sink)
        modes["serial"] = {"wall_s": time.monotonic() - t, "cpu_s": time.process_time() - cpu0,
                           "sim_cpu_s": self.sim_cpu() - sim0, "runs": sink}
        self.destroy_quiet([name for name, _ in p])
        log(f"  concurrency [{profile}] serial: {modes['serial']['wall_s']:.2f}s")
        # threads, one shared session
        modes["threads_shared_session"] = threaded("tshared", [self.vsphere] * n)
        log(f"  concurrency [{profile}] threads (shared session): "
            f"{modes['threads_shared_session']['wall_s']:.2f}s")
        if everything:
            self.concurrency_more(modes, n, conf, db, threaded, plan, one, connect, instances)
        self.finish_concurrency(out, modes, n)
        # The cache entries of this profile's images (their spawns were destroyed above).
        self.cleanup_all()
        return out

    def concurrency_more(self, modes, n, conf, db, threaded, plan, one, connect,
                         instances) -> None:
        """The modes measured under ``none`` only: sessions each, processes, memory backend."""
        # threads, a session each (logins untimed)
        sessions = [connect(conf) for _ in range(n)]
        for s in sessions:
            instances.find(s, "bench-warm-up")  # placement cache, as the shared one has it
        try:
            modes["threads_own_session"] = threaded("town", sessions)
        finally:
            for s in sessions:
                with contextlib.suppress(Exception):
                    s.close()
        log(f"  concurrency threads (session each): "
            f"{modes['threads_own_session']['wall_s']:.2f}s")
        # processes, one spawn each (start-up and login untimed)
        modes["processes"] = self.processes(plan("proc"), str(db))
        log(f"  concurrency processes: {modes['processes']['wall_s']:.2f}s")
        # Controls: the same with TaskFlow's in-memory backend instead of the sqlite file, to
        # show what the persistence backend costs in concurrency (not a deployable setup).
        p = plan("mserial")
        sink = []
        cpu0, sim0 = time.process_time(), self.sim_cpu()
        t = time.monotonic()
        for name, img in p:
            one(self.vsphere, name, img, sink, "memory")
        modes["serial_memory_backend"] = {
            "wall_s": time.monotonic() - t, "cpu_s": time.process_time() - cpu0,
            "sim_cpu_s": self.sim_cpu() - sim0, "runs": sink}
        self.destroy_quiet([name for name, _ in p])
        modes["threads_shared_memory_backend"] = threaded("tmem", [self.vsphere] * n, "memory")
        modes["processes_memory_backend"] = self.processes(plan("pmem"), "memory://")
        log(f"  concurrency memory backend: serial "
            f"{modes['serial_memory_backend']['wall_s']:.2f}s, threads "
            f"{modes['threads_shared_memory_backend']['wall_s']:.2f}s, processes "
            f"{modes['processes_memory_backend']['wall_s']:.2f}s")

    def finish_concurrency(self, out: dict, modes: dict, n: int) -> None:
        for name, m in modes.items():
            runs = m["runs"]
            ok = [r for r in runs if not r["error"]]
            m["ok"] = len(ok)
            m["errors"] = sorted({r["error"] for r in runs if r["error"]})[:5]
            m["throughput_per_s"] = round(len(ok) / m["wall_s"], 3) if m["wall_s"] else None
            m["latency_median_s"] = r3(med([r["seconds"] for r in ok]))
            m["latency_max_s"] = r3(max((r["seconds"] for r in ok), default=None))
            m["latency_percentiles_s"] = percentiles([r["seconds"] for r in ok])
            m["wall_s"], m["cpu_s"], m["sim_cpu_s"] = (r3(m["wall_s"]), r3(m["cpu_s"]),
                                                       r3(m["sim_cpu_s"]))
            del m["runs"]
            out["modes"][name] = m
        base = out["modes"]["serial"]["throughput_per_s"]
        out["ratio_to_serial"] = {k_: (round(m["throughput_per_s"] / base, 2) if base and
                                       m["throughput_per_s"] else None)
                                  for k_, m in out["modes"].items()}
        s = out["modes"]["serial"]
        # CPU bound on this machine: our process can use at most one core for Python (GIL),
        # the simulator the rest.
        cpus = os.cpu_count() or 1
        per_spawn_us, per_spawn_sim = s["cpu_s"] / n, s["sim_cpu_s"] / n
        out["cpu_per_spawn_s"] = {"ours": r3(per_spawn_us), "simulator": r3(per_spawn_sim)}
        out["cpu_bound_max_ratio"] = {
            "one_process": r3(min(1 / per_spawn_us, cpus / (per_spawn_us + per_spawn_sim))
                              * s["wall_s"] / n),
            "processes": r3(cpus / (per_spawn_us + per_spawn_sim) * s["wall_s"] / n)}
        out["goal"] = CONCURRENCY_GOAL

    # ---------------------------------------------------------------- burst

    def section_burst(self) -> None:
        self.per_profile("burst", self.burst_once)

    def burst_once(self, profile: str) -> dict:
        """One cold spawn of a new image, then ``n`` concurrent cold spawns of another."""
        from vsan_flows import api, imagecache
        from vsan_flows.runtime import persistence

        n = self.args.concurrency
        fx = self.fixture(self.args.size)
        bdir = self.workdir / "burst" / profile
        bdir.mkdir(parents=True, exist_ok=True)
        conf = sql_conf(self.sim_info, self.wsdl_url, str(self.state_dir),
                        str(bdir / "flows.sqlite"), poll=poll_for(profile))
        backend = persistence.open_backend(conf)
        tok = uuid.uuid4().hex[:4]
        self.set_profile(profile)
        control = self.sim.control

        def calls() -> dict:
            return control.status()["calls"]

        def spawn(name: str, image_id: str, sink: list) -> None:
            t = time.monotonic()
            err, sent = None, 0
            try:
                res = api.spawn(conf, name, image_id, vsphere=self.vsphere, images=self.images,
                                backend=backend)
                sent = int(res.get("bytes_sent") or 0)
            except Exception as exc:  # noqa: BLE001 - reported
                err = f"{type(exc).__name__}: {exc}"
            sink.append({"seconds": time.monotonic() - t, "error": err, "bytes_sent": sent})

        def cache_entries(image_id: str) -> list[str]:
            prefix = imagecache.vm_name(image_id, "")
            return [vm["name"] for vm in control.status()["vms"]
                    if vm["name"].startswith(prefix)]

        one_img = self.images.add_file(fx["path"], name=f"burst-one-{profile}-{tok}")
        one: list = []
        c0 = calls()
        spawn(f"bench-burst-one-{tok}", one_img, one)
        c1 = calls()
        self.destroy_quiet([f"bench-burst-one-{tok}"] + cache_entries(one_img))
        log(f"  burst [{profile}]: one cold spawn {one[0]['seconds']:.2f}s")

        img = self.images.add_file(fx["path"], name=f"burst-{profile}-{tok}")
        names_ = [f"bench-burst-{tok}-{i:02d}" for i in range(n)]
        sink: list = []
        barrier = threading.Barrier(n + 1)

        def worker(name: str) -> None:
            barrier.wait()
            spawn(name, img, sink)

        threads = [threading.Thread(target=worker, args=(nm,)) for nm in names_]
        for th in threads:
            th.start()
        c2 = calls()
        t = time.monotonic()
        barrier.wait()
        for th in threads:
            th.join()
        wall = time.monotonic() - t
        c3 = calls()
        entries = cache_entries(img)
        self.destroy_quiet(names_ + entries)
        backend.close()

        def delta(a: dict, b: dict, m: str) -> int:
            return int(b.get(m, 0) - a.get(m, 0))

        ok = [r for r in sink if not r["error"]]
        out = {"profile": profile, "spawns": n, "size": fx["label"],
               "image_file_bytes": fx["file_bytes"],
               "one_cold_s": r3(one[0]["seconds"]), "one_error": one[0]["error"],
               "one_import_vapp_calls": delta(c0, c1, "ImportVApp"),
               "burst_wall_s": r3(wall), "ok": len(ok),
               "errors": sorted({r["error"] for r in sink if r["error"]})[:5],
               "import_vapp_calls": delta(c2, c3, "ImportVApp"),
               "lease_completes": delta(c2, c3, "HttpNfcLeaseComplete"),
               "cache_entries": len(entries),
               "bytes_sent": sum(r["bytes_sent"] for r in sink),
               "latency_percentiles_s": percentiles([r["seconds"] for r in ok]),
               "goal": BURST_GOAL}
        out["ratio_to_one"] = round(wall / one[0]["seconds"], 2) if one[0]["seconds"] else None
        log(f"  burst [{profile}]: {n} cold spawns of one image {wall:.2f}s "
            f"({out['ratio_to_one']}x one), ImportVApp x{out['import_vapp_calls']}, "
            f"{out['bytes_sent']} bytes sent")
        return out

    def processes(self, p: list, db: str) -> dict:
        procs = []
        for name, img in p:
            spec = self.spec(mode="worker", db=db, plan=[(name, img)],
                             poll=poll_for(self.profile))
            procs.append(subprocess.Popen(
                [sys.executable, str(self.SCRIPT), "--child", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True))
        try:
            for pr in procs:
                line = pr.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"worker did not start: {line} {pr.stderr.read()[-1500:]}")
            cpu0 = self.sim_cpu()
            t = time.monotonic()
            for pr in procs:
                pr.stdin.write("go\n")
                pr.stdin.flush()
            results = []
            for pr in procs:
                stdout, stderr = pr.communicate(timeout=600)
                lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
                if not lines:
                    raise RuntimeError(f"worker failed: {stderr[-1500:]}")
                results.append(json.loads(lines[-1]))
            end = max(s["end"] for r in results for s in r["spawns"])
            runs = [{"seconds": s["end"] - s["start"], "error": s["error"]}
                    for r in results for s in r["spawns"]]
            return {"wall_s": end - t, "cpu_s": sum(r["cpu_s"] for r in results),
                    "sim_cpu_s": self.sim_cpu() - cpu0, "runs": runs}
        finally:
            for pr in procs:
                if pr.poll() is None:
                    pr.kill()
                    pr.wait()
            self.destroy_quiet([name for name, _ in p])


# --------------------------------------------------------------------------------- report

def summarize_overhead(runs: dict[str, list[dict]]) -> dict:
    out: dict = {"seconds": {k: {"median": r3(med([r["seconds"] for r in rs])),
                                 "runs": [r3(r["seconds"]) for r in rs]}
                             for k, rs in runs.items()}}
    proc = out["seconds"]["proc"]["median"]
    out["ratio"] = {k: (round(v["median"] / proc, 3) if proc else None)
                    for k, v in out["seconds"].items() if k != "proc"}
    fl = runs["flow"]
    storage = med([r["storage_s"] for r in fl])
    flow = out["seconds"]["flow"]["median"]
    out["flow_breakdown"] = {
        "storage_s": r3(storage),
        "storage_calls": med([r["storage_calls"] for r in fl]),
        "sql_exec_s": r3(med([r["sql_exec_s"] for r in fl])),
        "sql_statements": med([r["sql_statements"] for r in fl]),
        "tasks_s (listener, incl. result saves)": r3(med([r["tasks_s"] for r in fl])),
        "engine_other_s (flow - proc - storage)": r3(flow - proc - storage)
        if None not in (flow, proc, storage) else None,
        "per_method_s": {m: r3(med([r["per_method_s"].get(m, 0.0) for r in fl]))
                         for m in fl[-1]["per_method_s"]},
        "per_method_calls": {m: med([r["per_method_calls"].get(m, 0) for r in fl])
                             for m in fl[-1]["per_method_calls"]},
    }
    return out


def print_report(res: dict) -> None:
    ov = res.get("overhead") or {}
    if ov:
        print(f"\n== Flow overhead: api.spawn (sqlite file) vs the same vSphere calls in a plain "
              f"function; {ov['size']} image, seconds, median ==")
        print(f"{'variant':>8} {'proc':>8} {'flow':>8} {'flow_open':>10} {'flow/proc':>10} "
              f"{'open/proc':>10} {'storage':>8} {'calls':>6} {'sql exec':>9} {'stmts':>6}")
        for v in ("cold", "warm"):
            s = ov[v]
            b = s["flow_breakdown"]
            print(f"{v:>8} {fmt(s['seconds']['proc']['median'], '.3f'):>8} "
                  f"{fmt(s['seconds']['flow']['median'], '.3f'):>8} "
                  f"{fmt(s['seconds']['flow_open']['median'], '.3f'):>10} "
                  f"{fmt(s['ratio']['flow'], '.3f'):>10} "
                  f"{fmt(s['ratio']['flow_open'], '.3f'):>10} "
                  f"{fmt(b['storage_s'], '.3f'):>8} {fmt(b['storage_calls'], '.0f'):>6} "
                  f"{fmt(b['sql_exec_s'], '.3f'):>9} {fmt(b['sql_statements'], '.0f'):>6}")
        print(f"  goal: flow/proc <= {OVERHEAD_GOAL:.2f}.  flow = api.spawn with a backend "
              "opened once; flow_open = api.spawn opening the backend\n  from conf itself "
              f"(open_backend alone: {fmt(ov['open_backend_s'], '.3f')}s median). storage ="
              " time in the backend's connection calls\n  during one flow spawn (sql exec = "
              "statement execution inside it; the rest is commit/fsync, SQLAlchemy, models).")
        for v in ("cold", "warm"):
            b = ov[v]["flow_breakdown"]
            print(f"  {v}: per run proc "
                  f"{', '.join(fmt(x, '.3f') for x in ov[v]['seconds']['proc']['runs'])}; "
                  f"flow {', '.join(fmt(x, '.3f') for x in ov[v]['seconds']['flow']['runs'])}")
            print(f"  {v}: engine other than storage "
                  f"{fmt(b['engine_other_s (flow - proc - storage)'], '.3f')}s; storage by "
                  "method: " + ", ".join(f"{m} {b['per_method_calls'][m]:.0f}x "
                                         f"{b['per_method_s'][m]:.3f}s"
                                         for m in b["per_method_s"]))
    for profile, rs in (res.get("resume") or {}).items():
        print_resume(profile, rs)
    for profile, cc in (res.get("concurrency") or {}).items():
        print_concurrency(profile, cc)
    for profile, b in (res.get("burst") or {}).items():
        print(f"\n== Burst [{profile}]: {b['spawns']} concurrent cold spawns of ONE new image "
              f"({b['size']}) vs one cold spawn ==")
        print(f"  one cold spawn {fmt(b['one_cold_s'], '.2f')}s (ImportVApp "
              f"x{b['one_import_vapp_calls']}); burst {fmt(b['burst_wall_s'], '.2f')}s = "
              f"{fmt(b['ratio_to_one'], '.2f')}x one (goal <= {b['goal']}x); ok {b['ok']}/"
              f"{b['spawns']}")
        print(f"  ImportVApp x{b['import_vapp_calls']} (goal exactly 1), lease completes "
              f"x{b['lease_completes']}, cache entries {b['cache_entries']}; bytes sent "
              f"{b['bytes_sent']} for an image file of {b['image_file_bytes']} "
              f"(goal: one image); latency {b['latency_percentiles_s']}")
        for e in b["errors"]:
            print(f"      error: {e}")


def print_resume(profile: str, rs: dict) -> None:
    f = rs["full"]
    print(f"\n== Resume [{profile}] of {rs['flows']} SIGKILLed spawn flows (sqlite file), fresh "
          "processes, seconds ==")
    print(f"  made: {rs['parked']} flows parked at {len(rs['cues'])} cues "
          f"({', '.join(f'{c} x{n}' for c, n in rs['cues'].items())}),\n  over "
          f"{rs['images']} images of {rs['size']}, by one child that then SIGKILLed itself:"
          f" {rs['create_s']:.1f}s")
    p = rs.get("probe")
    if p:
        print(f"  find + load + decide (copy of the store): interpreter+imports "
              f"{p['imports_s']:.2f}, open_backend {p['open_backend_s']:.3f}, find "
              f"{p['find_s']:.3f} ({p['found']} found), login {p['login_s']:.2f}, "
              f"load+compile+prepare+decide {p['load_decide_s']:.2f} "
              f"-> {p['find_s'] + p['load_decide_s']:.2f}s without login "
              f"(goal < {RESUME_DECIDE_GOAL_S:.0f} s)")
        print(f"  atom states found: {p['atom_states']}; transfers restarted: "
              f"{p['transfers_restarted']}")
        print("  load+decide profile (cumulative s, calls): "
              + "; ".join(f"{s} {ct:.2f}s x{nc}" for s, ct, nc in p["profile_top_cumulative"][:6]))
    print(f"  full completion: api.resume_unfinished {f['resume_unfinished_s']:.2f}s "
          f"({f['max_concurrent_flows']} flows at a time; engine runs {f['engine_run_s']:.2f}s "
          f"summed over flows); outcomes {f['outcomes']}; unfinished after: "
          f"{rs['unfinished_after']}")
    if f.get("atom_s"):
        print("  where the resumed flows spent their time (s summed over flows, times run): "
              + "; ".join(f"{k} {v[0]:.1f}s x{v[1]}" for k, v in list(f["atom_s"].items())[:10]))
    if f.get("gc"):
        print(f"  CPU {f['cpu_s']}s; garbage collections (generation: count, s): {f['gc']}; "
              f"task_poll_interval {f.get('task_poll_interval')}s")
    one = rs.get("one_flow")
    if one:
        print(f"  one flow interrupted at {CUES[0]} resumed alone: "
              f"{one['resume_unfinished_s']:.2f}s -> all {rs['flows']} take "
              f"{rs['ratio_to_one_flow']}x one flow's remaining work (goal <= "
              f"{RESUME_RATIO_GOAL:.0f}x)")
    for width, w in (rs.get("wider") or {}).items():
        wf = w["full"]
        print(f"  {width} at a time: api.resume_unfinished {wf['resume_unfinished_s']:.2f}s "
              f"(engine runs {wf['engine_run_s']:.2f}s summed; CPU {wf.get('cpu_s')}s; gc "
              f"{wf.get('gc')}); outcomes {wf['outcomes']}; unfinished after: "
              f"{w['unfinished_after']} -> {w['ratio_to_one_flow']}x one flow")


def print_concurrency(profile: str, cc: dict) -> None:
    print(f"\n== [{profile} x{cc['latency_scale']}] {cc['spawns']} spawns ({cc['variant']}, "
          f"{cc['images']} images of {cc['size']}): serial vs concurrent ==")
    print(f"{'mode':>30} {'ok':>4} {'wall s':>8} {'spawns/s':>9} {'x serial':>9} "
          f"{'p50':>6} {'p90':>6} {'p99':>6} {'our cpu':>8} {'sim cpu':>8}")
    for name, m in cc["modes"].items():
        pc = m.get("latency_percentiles_s") or {}
        print(f"{name:>30} {m['ok']:>4} {fmt(m['wall_s'], '.2f'):>8} "
              f"{fmt(m['throughput_per_s'], '.2f'):>9} "
              f"{fmt(cc['ratio_to_serial'][name], '.2f'):>9} "
              f"{fmt(pc.get('p50'), '.2f'):>6} {fmt(pc.get('p90'), '.2f'):>6} "
              f"{fmt(pc.get('p99'), '.2f'):>6} {fmt(m['cpu_s'], '.2f'):>8} "
              f"{fmt(m['sim_cpu_s'], '.2f'):>8}")
        for e in m["errors"]:
            print(f"      error: {e}")
    print(f"  goal: >= {CONCURRENCY_GOAL:.0f}x serial (under vcenter).  CPU per serial spawn: "
          f"ours {cc['cpu_per_spawn_s']['ours']}s, simulator "
          f"{cc['cpu_per_spawn_s']['simulator']}s; with {os.cpu_count()} CPUs that caps the "
          f"ratio at {cc['cpu_bound_max_ratio']['one_process']}x in one process (GIL: one "
          f"core for us) and {cc['cpu_bound_max_ratio']['processes']}x with processes.")
    for name in ("threads_shared_session", "threads_own_session",
                 "threads_shared_memory_backend"):
        prof = (cc["modes"].get(name) or {}).get("profile")
        if not prof:
            continue
        print(f"  {name} profile ({prof['samples']} samples; share of worker-thread time):")
        print("    leaf: " + "; ".join(f"{s} {v:.0%}" for s, v in prof["leaf"][:6]))
        print("    ours: " + "; ".join(f"{s} {v:.0%}" for s, v in prof["ours"][:6]))
        print("    library: " + ", ".join(f"{s} {v:.0%}" for s, v in prof["library_share"]))


# --------------------------------------------------------------------------------- main

SECTIONS = ("overhead", "resume", "concurrency", "burst")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true",
                   help="small: 3 runs, 20 flows to resume, 8 concurrent spawns")
    p.add_argument("--runs", type=int, help="runs per overhead figure (median), default 5 "
                   "(1 with --smoke)")
    p.add_argument("--size", help="image size for overhead/concurrency (64M; 4M with --smoke)")
    p.add_argument("--resume-size", help="image size of the resume flows (16M; 4M with --smoke)")
    p.add_argument("--flows", type=int, help=f"interrupted flows to resume (default 100; "
                   f"{len(CUES)} with --smoke: one per cue)")
    p.add_argument("--concurrency", type=int, help="spawns, serial and concurrent (20; 2 with "
                   "--smoke)")
    p.add_argument("--images", type=int, help="distinct images (concurrency, 4; 2 with --smoke)")
    p.add_argument("--profiles", default=",".join(PROFILES),
                   help="simulator latency profiles for resume, concurrency and burst "
                   f"(default {','.join(PROFILES)}; docs/simulator-latency.md)")
    p.add_argument("--resume-widths", default=None,
                   help="also resume the flows this many at a time under each latency profile "
                   "(comma-separated; default 32; none with --smoke or --quick)")
    p.add_argument("--latency-scale", type=float,
                   help="multiply the profile's delays (1; 0.1 with --smoke)")
    common.add_harness_args(p)
    args = p.parse_args(argv)
    if args.smoke and args.quick:
        p.error("--smoke and --quick are two different sizes: choose one")

    def pick(default, quick, smoke):
        return smoke if args.smoke else quick if args.quick else default

    args.runs = args.runs or pick(5, 3, 1)
    args.flows = args.flows or pick(100, 20, len(CUES))
    args.concurrency = args.concurrency or pick(20, 8, 2)
    args.images = args.images or pick(4, 4, 2)
    args.size = parse_size(args.size or pick("64M", "64M", "4M"))
    args.resume_size = parse_size(args.resume_size or pick("16M", "16M", "4M"))
    args.latency_scale = args.latency_scale or pick(1.0, 1.0, 0.1)
    args.profiles = [s.strip() for s in args.profiles.split(",") if s.strip()]
    widths = args.resume_widths if args.resume_widths is not None else pick("32", "", "")
    args.resume_widths = [int(w) for w in widths.split(",") if w.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(args.sections) - set(SECTIONS):
        p.error(f"unknown section(s): {set(args.sections) - set(SECTIONS)}")
    return args


def args_summary(args: argparse.Namespace) -> dict:
    return {"runs": args.runs, "size": size_label(args.size),
            "resume_size": size_label(args.resume_size), "flows": args.flows,
            "concurrency": args.concurrency, "images": args.images,
            "profiles": args.profiles, "latency_scale": args.latency_scale,
            "resume_widths": args.resume_widths}


def child_main(spec: dict) -> None:
    t_start = T_START
    mode = spec["mode"]
    if mode == "create":
        child_create(spec)
    elif mode == "worker":
        child_worker(spec)
    else:
        out = child_probe(spec, t_start) if mode == "probe" else child_resume(spec, t_start)
        print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    return common.main(FlowBench, parse_args, child_main, print_report, args_summary,
                       prefix="vsan-flows-ovh-", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
