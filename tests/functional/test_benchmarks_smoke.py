"""The benchmarks still run: each script in its smoke mode, as someone measuring would run it.

Nothing else runs benchmarks/, so a renamed function, a task whose result changed shape or a
section that no longer completes would otherwise go unnoticed until someone needs the figures.
``--smoke`` runs every section at tiny sizes, once; this test runs each script as a
subprocess (its own simulator, children and leak check, from another working directory) and
checks what a reader of the report relies on: the exit status, every section's table, and
the figures in the JSON line, down to the names of the tasks they are broken into. It checks
no speed: the figures of a smoke run mean nothing.

Both scripts are started together (each is mostly one core: its Python and its simulator)
and each test waits for its own. A hang cannot block the suite: the script's ``--watchdog``
prints every thread's stack and exits, and this test kills the script's process group if
even that does not happen.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsan_flows import names

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("stream", "flow_overhead", "nova_side_by_side")
# Measured on a 2-core machine shared with other test runs (load 5-9): stream 55-76 s before
# its glance and nova sections, 185-205 s with them (load 6-12); flow_overhead 90-175 s;
# nova_side_by_side 190-235 s (two 60 s glance-api stalls after nova's broken transfers).
WATCHDOG_S = 540   # the script dumps its stacks and exits after this long
DEADLINE_S = 600   # then this test kills its process group
SPAWN_TASKS = [names.VALIDATE_IMAGE, names.PICK_DATASTORE, names.LOOKUP_IMAGE_CACHE,
               names.CREATE_IMPORT_LEASE, names.STREAM_DISK_TO_LEASE,
               names.COMPLETE_IMPORT_LEASE, names.REGISTER_SHADOW_VM, names.CLONE_LINKED_DISK]
SNAPSHOT_TASKS = [names.RESERVE_IMAGE, names.READ_INSTANCE, names.CREATE_VM_SNAPSHOT,
                  names.CLONE_FROM_SNAPSHOT, names.CREATE_EXPORT_LEASE,
                  names.STREAM_DISK_TO_IMAGE, names.COMPLETE_EXPORT_LEASE, names.CLEANUP]

pytestmark = pytest.mark.slow


class Run:
    """One benchmark script running in smoke mode, in a process group of its own."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        workdir.mkdir()
        self.out = workdir / "stdout"
        self.err = workdir / "stderr"
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke",
                 "--watchdog", str(WATCHDOG_S), "--workdir", str(workdir)],
                cwd=workdir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self._result: tuple[int, str, str] | None = None
        self.seconds: float | None = None

    def result(self) -> tuple[int, str, str]:
        """(exit status, stdout, stderr), waiting for the script to end."""
        if self._result is None:
            try:
                rc = self.proc.wait(timeout=max(1.0, DEADLINE_S
                                                - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.kill()
                rc = self.proc.wait()
            self.seconds = time.monotonic() - self.started
            self._result = (rc, self.out.read_text(), self.err.read_text())
        return self._result

    def kill(self) -> None:
        """Kill what the script left: its process group (children of a hung section) and the
        simulator (a session of its own) if the script died without stopping it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for state in self.out.parent.glob("*/vcsim/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = int(json.loads(state.read_text())["pid"])
                # Only the simulator that this state file belongs to (not a reused pid).
                if str(state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """The smoke runs of the scripts whose tests were selected, all started now."""
    selected = {item.name for item in request.session.items}
    base = tmp_path_factory.mktemp("bench-smoke")
    runs = {name: Run(name, base / name) for name in SCRIPTS
            if f"test_{name}_smoke" in selected}
    yield runs
    for run in runs.values():
        run.result()
        run.kill()  # whatever the script left in its group (children of a hung section)
    print("\nbenchmark smoke runs: " + ", ".join(
        f"{n} {r.seconds:.0f}s" for n, r in runs.items()))


def report(run: Run) -> tuple[str, dict]:
    """The report a successful run prints, and its JSON line; fails with the run's stderr."""
    rc, out, err = run.result()
    lines = out.strip().splitlines()
    assert rc == 0 and lines and lines[-1].startswith("{"), (
        f"benchmarks/{run.name}.py --smoke exited {rc} after {run.seconds:.0f}s; "
        f"stderr (tail):\n{err[-6000:]}\nstdout (tail):\n{out[-2000:]}")
    results = json.loads(lines[-1])
    assert results["errors"] == [] and results["leaks"] == [], (results["errors"],
                                                                results["leaks"])
    assert "leak check: nothing left behind" in out
    assert results["args"]["smoke"] is True
    return out, results


def positive(figures: dict, *keys: str) -> None:
    for key in keys:
        value = figures[key]["median"] if isinstance(figures[key], dict) else figures[key]
        assert isinstance(value, int | float) and value > 0, (key, figures[key])


def test_stream_smoke(smoke):
    out, res = report(smoke["stream"])
    assert res["args"]["sections"] == ["import", "memory", "export", "export-memory",
                                       "glance", "nova"]
    for title in ("== Import (spawn) direction", "== Memory: peak RSS",
                  "== Export (snapshot) direction", "== Export memory: peak RSS",
                  "== Glance as source and sink", "== Ours beside nova 34"):
        assert title in out

    [(label, imp)] = res["import"].items()
    positive(imp["mbps"], "spawn", "stream", "upload", "bare", "bare64k")
    positive(imp["ratio"], "stream", "upload", "spawn")
    assert imp["ratio_runs"]["stream"] and imp["ratio_runs"]["upload"]
    # The spawn is broken down by task: a renamed or missing task shows here.
    assert set(imp["spawn_task_seconds_median"]) == {*SPAWN_TASKS, names.SPAWN_FLOW}

    [(mem_label, mem)] = res["memory"]["sizes"].items()
    positive(mem, "floor_mib", "warm_mib", "spawn_mib", "spawn_in_spawn_mib",
             "warm_in_spawn_mib")

    exp = res["export"][label]
    positive(exp["mbps"], "snapshot", "stream", "bare", "bare_store", "handle")
    positive(exp["mbps"], "store_write")
    positive(exp["ratio"], "stream", "snapshot", "bare_store", "handle", "stream/bare_store",
             "stream/slower_end")
    assert exp["export_bytes"] > 0
    assert set(exp["snapshot_task_seconds_median"]) == {*SNAPSHOT_TASKS, names.SNAPSHOT_FLOW}

    emem = res["export_memory"]["sizes"][mem_label]
    positive(emem, "floor_mib", "snapshot_mib", "snapshot_in_snapshot_mib")

    glance = res["glance"][label]
    positive(glance["mbps"], "import_stream", "import_bare", "import_spawn", "export_stream",
             "export_bare", "export_snapshot")
    positive(glance["ratio"], "import_stream/bare", "export_stream/bare")

    nova = res["nova"][label]
    positive(nova["seconds"], "spawn", "stream", "nova_import", "nova_copy", "export",
             "snapshot", "nova_upload")
    positive(nova["ratio"], "spawn_vs_nova_import", "stream_vs_nova_copy",
             "export_vs_nova_upload", "snapshot_vs_nova_upload")


def test_flow_overhead_smoke(smoke):
    out, res = report(smoke["flow_overhead"])
    assert res["args"]["sections"] == ["overhead", "resume", "concurrency", "burst"]
    assert res["args"]["profiles"] == ["none", "vcenter"]
    for title in ("== Flow overhead: api.spawn", "SIGKILLed spawn flows",
                  "serial vs concurrent ==", "concurrent cold spawns of ONE new image"):
        assert title in out

    ov = res["overhead"]
    for variant in ("cold", "warm"):
        positive(ov[variant]["seconds"], "proc", "flow", "flow_open")
        positive(ov[variant]["ratio"], "flow", "flow_open")
        breakdown = ov[variant]["flow_breakdown"]
        positive(breakdown, "storage_s", "storage_calls", "sql_statements")
        assert breakdown["per_method_calls"], breakdown

    assert set(res["resume"]) == {"vcenter"}  # smoke: the last profile only
    for rs in res["resume"].values():
        flows = rs["flows"]
        # One flow parked and killed at each cue; every one found, decided and completed.
        assert rs["parked"] == flows and rs["create_errors"] == []
        assert sum(rs["cues"].values()) == flows
        assert rs["probe"]["found"] == flows
        restarted = sum(n for cue, n in rs["cues"].items()
                        if cue in ("transfer", f"{names.STREAM_DISK_TO_LEASE}:before"))
        assert restarted > 0 and rs["probe"]["transfers_restarted"] == restarted
        assert rs["full"]["outcomes"] == {"completed": flows}, rs["full"]
        assert rs["one_flow"]["outcomes"] == {"completed": 1}, rs["one_flow"]
        assert rs["unfinished_after"] == 0 and rs["ratio_to_one_flow"] > 0

    assert set(res["concurrency"]) == {"none", "vcenter"}
    everything = ("serial", "threads_shared_session", "threads_own_session", "processes",
                  "serial_memory_backend", "threads_shared_memory_backend",
                  "processes_memory_backend")
    for profile, cc in res["concurrency"].items():
        modes = everything if profile == "none" else ("serial", "threads_shared_session")
        assert set(cc["modes"]) == set(modes)
        for mode in modes:
            m = cc["modes"][mode]
            assert m["ok"] == cc["spawns"] and m["errors"] == [], (mode, m)
            positive(m, "wall_s", "throughput_per_s")
            positive(m["latency_percentiles_s"], "p50", "p90", "p99")
            assert cc["ratio_to_serial"][mode] > 0
        for mode in set(modes) & {"threads_shared_session", "threads_own_session",
                                  "threads_shared_memory_backend"}:
            assert cc["modes"][mode]["profile"]["samples"] > 0, mode
        positive(cc["cpu_bound_max_ratio"], "one_process", "processes")

    assert set(res["burst"]) == {"none", "vcenter"}
    for b in res["burst"].values():
        # Concurrent cold spawns of one new image: one import, one image's bytes.
        assert b["ok"] == b["spawns"] and b["errors"] == [], b
        assert b["import_vapp_calls"] == 1 and b["one_import_vapp_calls"] == 1, b
        assert b["cache_entries"] == 1 and b["bytes_sent"] == b["image_file_bytes"], b
        positive(b, "one_cold_s", "burst_wall_s", "ratio_to_one")


def test_nova_side_by_side_smoke(smoke):
    out, res = report(smoke["nova_side_by_side"])
    assert res["args"]["sections"] == ["spawn", "failures", "classic"]
    assert "== nova's VMware driver vs ours" in out
    sp = res["spawn"]
    for driver in ("nova", "ours"):
        assert [r["outcome"] for r in sp[driver]["runs"]] == ["ok"], sp[driver]
        positive(sp[driver], "mbps_median", "seconds_median")
    cases = res["cases"]
    # ours: a bad image is refused with nova's abort-the-build exception; nothing is left
    # behind by any failure; the classic image converted to streamOptimized deploys
    assert cases["bad-image"]["ours"]["outcome"] == "nova.exception.ImageUnacceptable"
    assert cases["classic"]["ours"]["outcome"] == "ok"
    for case in ("bad-image", "nfc-cut", "classic"):
        r = cases[case]["ours"]
        assert (r["vms"], r["files"], r["leases"]) == (0, 0, 0), (case, r)
    # nova's classic path cannot use the vsan datastore; its own transfer is refused there
    assert cases["classic"]["nova"]["outcome"].endswith("DatastoreNotFound")
    assert cases["classic-put"]["nova@vsan"]["outcome"] != "ok"
    assert cases["classic-put"]["nova@VMFS"]["outcome"] == "ok"
