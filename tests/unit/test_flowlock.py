"""The flow lock: one live runner per flow on a host, released by its holder's death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from vsan_flows import exceptions
from vsan_flows.runtime import flowlock


def _holder(directory, key):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from vsan_flows.runtime.flowlock import FlowLocks
        FlowLocks({str(directory)!r}).acquire({key!r})
        print("held", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_in_another_process_is_named_and_its_death_frees_the_flow(tmp_path):
    key = str(uuid.uuid4())
    locks = flowlock.FlowLocks(tmp_path)
    proc = _holder(tmp_path, key)
    try:
        assert locks.holder(key).startswith(f"process {proc.pid} on ")
        with pytest.raises(exceptions.FlowBusy) as caught:
            locks.acquire(key, "flow-1")
        assert f"Flow flow-1: is being run right now by process {proc.pid} on " in \
            str(caught.value)
        assert locks.holder(key) is not None, "a refused acquire must not disturb the holder"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert locks.holder(key) is None  # the file is still there, nobody holds it
    with locks.hold(key):
        assert locks.holder(key).startswith("this process")
    assert locks.holder(key) is None
    assert os.listdir(tmp_path) == [], "released locks leave no file behind"


def test_threads_of_one_process_exclude_each_other_with_and_without_a_directory(tmp_path):
    for locks in (flowlock.FlowLocks(tmp_path), flowlock.FlowLocks(None)):
        key = str(uuid.uuid4())
        errors: list = []

        def other_thread(locks=locks, key=key, errors=errors):
            try:
                locks.acquire(key)
            except exceptions.FlowBusy as exc:
                errors.append(exc)

        with locks.hold(key):
            t = threading.Thread(target=other_thread)
            t.start()
            t.join()
        assert len(errors) == 1 and "another thread of this process" in str(errors[0])
        with locks.hold(key):  # free again after the block
            pass


def test_many_processes_racing_for_one_flow_never_both_hold_it(tmp_path):
    """Release unlinks the file: an acquirer that opened the old file must not win too."""
    key = str(uuid.uuid4())
    script = textwrap.dedent(f"""
        import os, sys, time
        from vsan_flows.exceptions import FlowBusy
        from vsan_flows.runtime.flowlock import FlowLocks
        locks = FlowLocks({str(tmp_path)!r})
        marker = os.path.join({str(tmp_path)!r}, "inside")
        wins = 0
        for _ in range(600):
            try:
                locks.acquire({key!r})
            except FlowBusy:
                continue
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)  # fails if another holder is in
                os.close(fd)
                wins += 1
                time.sleep(0.001)
                os.unlink(marker)
            finally:
                locks.release({key!r})
        print(wins)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert sum(int(out) for out, _ in results) > 0


def test_keys_are_uuids_only(tmp_path):
    with pytest.raises(ValueError):
        flowlock.FlowLocks(tmp_path).acquire("../../etc/passwd")
