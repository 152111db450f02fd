"""Concurrent flows on one host: 20 spawns + snapshots at once, on every database, with and
without eventlet monkey-patching (nova-compute runs either way).

Each case runs rounds in a child process (tests/functional/stress_child.py) behind a watchdog:
a hang fails the test with every thread's stack, it never blocks the run. A round is 20
threads, each spawning an instance from one of 4 cached images and then snapshotting it, all on
one vSphere session and one persistence backend.

Rounds per case: ``VSAN_FLOWS_STRESS_ROUNDS`` (default 2; the issue's bar is 20 in a row on
each database: ``VSAN_FLOWS_STRESS_ROUNDS=20 pytest -m stress``). Two rounds of 40 flows keep
the six cases at a few minutes of the suite; the deadlock this guards against (docs/
concurrency.md) showed within one benchmark round of 20 flows about one run in two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from vsan_flows import api
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
THREADS = 20
IMAGES = 4
ROUNDS = int(os.environ.get("VSAN_FLOWS_STRESS_ROUNDS", "2"))
ROUND_TIMEOUT = 240.0  # a round takes ~10-40 s on a loaded 2-core machine
SETUP_TIMEOUT = 120.0
ADMIN = {"postgresql": ("postgresql+psycopg2://postgres@127.0.0.1:5432/test",
                        "postgresql://postgres@127.0.0.1:5432/{}"),
         "mysql": ("mysql+pymysql://root@127.0.0.1:3306/test",
                   "mysql+pymysql://root@127.0.0.1:3306/{}")}

pytestmark = [pytest.mark.slow, pytest.mark.stress]


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "stress.vmdk"
    disks.make_stream_optimized(path, 4 * MiB, data_mib=1)
    return path


@pytest.fixture(scope="module")
def database():
    """A throwaway database per call on the real servers, all dropped at the end."""
    made: list[tuple[str, str]] = []

    def new(kind: str, tmp_path: Path) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/state/flows.sqlite"
        name = f"vsan_flows_stress_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(ADMIN[kind][0], isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        made.append((kind, name))
        return ADMIN[kind][1].format(name)

    yield new
    for kind, name in made:
        engine = sa.create_engine(ADMIN[kind][0], isolation_level="AUTOCOMMIT")
        force = " WITH (FORCE)" if kind == "postgresql" else ""
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        engine.dispose()


@pytest.fixture(scope="module")
def cached_images(sim_conf, vsphere, tmp_path_factory, small_vmdk):
    """IMAGES images, each imported once (the stress is on flows, not on first imports)."""
    from vsan_flows.images import LocalImageService
    from vsan_flows.vsphere import instances

    images = LocalImageService(tmp_path_factory.mktemp("stress-images"))
    ids, cache_names = [], []
    for i in range(IMAGES):
        image_id = images.add_file(small_vmdk, name=f"stress-{i}")
        warm = f"stress-warm-{uuid.uuid4().hex[:6]}"
        result = api.spawn(sim_conf, warm, image_id, vsphere=vsphere, images=images)
        instances.destroy_by_name(vsphere, warm)
        ids.append(image_id)
        cache_names.append(result["shadow_vm"]["name"])
    yield images, ids
    for name in cache_names:
        instances.destroy_by_name(vsphere, name)


def _run_child(simulator, wsdl_url, tmp_path, db_url, images, image_ids, *, eventlet: bool):
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(tmp_path / "state"), "db_url": db_url,
            "images_dir": str(images.directory), "image_ids": image_ids,
            "rounds": ROUNDS, "threads": THREADS, "round_timeout": ROUND_TIMEOUT,
            "setup_timeout": SETUP_TIMEOUT, "eventlet": eventlet}
    limit = SETUP_TIMEOUT + ROUNDS * ROUND_TIMEOUT + 60
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.functional.stress_child",
                               json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired as exc:  # the child's own watchdogs did not fire
        pytest.fail(f"stress child still running after {limit:g} s; its output:\n"
                    f"{exc.stdout}\n{exc.stderr}", pytrace=False)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    hangs = [ln["hang"] for ln in lines if "hang" in ln]
    if hangs:
        pytest.fail(hangs[0], pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"stress child exited {proc.returncode} (a stack dump means the "
                    f"faulthandler backstop fired: a thread blocked holding the GIL):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-20000:]}", pytrace=False)
    return lines


@pytest.mark.parametrize("mode", ["native-threads", "eventlet"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_concurrent_spawns_and_snapshots(kind, mode, simulator, wsdl_url, tmp_path, database,
                                         cached_images, control):
    images, image_ids = cached_images
    imports_before = control.calls("ImportVApp")
    lines = _run_child(simulator, wsdl_url, tmp_path, database(kind, tmp_path), images,
                       image_ids, eventlet=(mode == "eventlet"))
    head, rounds, summary = lines[0], [ln for ln in lines if "round" in ln], lines[-1]
    # The loops of oslo.vmware run on the process's kind of thread (docs/concurrency.md).
    assert head == {"backend": "eventlet" if mode == "eventlet" else "threading",
                    "eventlet": mode == "eventlet"}
    assert len(rounds) == ROUNDS and summary.get("done"), lines
    print(f"{kind}/{mode}: rounds took {[r['seconds'] for r in rounds]} s")
    failed = [(r["round"], e) for r in rounds for e in r["errors"]]
    assert not failed, f"{len(failed)} of {ROUNDS * THREADS} spawn+snapshot failed: {failed[:5]}"
    # Every image was cached already: concurrent spawns link, they never import.
    assert control.calls("ImportVApp") == imports_before
    assert not [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("stress-")], "instances left behind"
    if ROUNDS > 1:
        # New threads each round must not leave descriptors behind (an eventlet hub per
        # native thread did: +1 per thread, for ever).
        grown = summary["fds_end"] - summary["fds_after_first"]
        assert grown < THREADS // 2, f"{grown} more open files after {ROUNDS - 1} rounds"


def test_watchdog_fails_a_hang_with_every_threads_stack(tmp_path):
    """Two threads deadlock on purpose: the report names both, with their stacks."""
    script = tmp_path / "deadlock.py"
    script.write_text(textwrap.dedent("""
        import threading, time
        from tests.functional import watchdog
        a, b = threading.Lock(), threading.Lock()
        ready = threading.Barrier(2)
        def first_a_then_b():
            with a:
                ready.wait(); time.sleep(0.1)
                with b: pass
        def first_b_then_a():
            with b:
                ready.wait(); time.sleep(0.1)
                with a: pass
        ts = [threading.Thread(target=f, name=f.__name__, daemon=True)
              for f in (first_a_then_b, first_b_then_a)]
        for t in ts: t.start()
        try:
            watchdog.join_all(ts, 1.0, "deadlock demo")
        except watchdog.Hang as exc:
            print(exc)
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout
    assert "deadlock demo: 2 of 2 threads still running after 1 s" in out, proc.stderr
    assert "first_a_then_b" in out and "first_b_then_a" in out
    assert out.count("File ") >= 4  # real stacks, not just names
