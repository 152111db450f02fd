"""The simulator launcher's bad-input promises: one clear line, never a hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from vsan_flows.simulator import launcher


@pytest.fixture(scope="module")
def binary():
    return launcher.build()


def _run(binary, *args, timeout=20):
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)


def test_busy_port_is_one_line(binary, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run(binary, "-state", str(tmp_path / "s.json"), "-listen", f"127.0.0.1:{port}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "address already in use" in lines[0], proc.stderr


def test_stale_state_file_is_one_line(binary, tmp_path):
    state = tmp_path / "s.json"
    dead = subprocess.Popen(["true"])
    dead.wait()
    state.write_text(json.dumps({"pid": dead.pid}))
    proc = _run(binary, "-state", str(state))
    assert proc.returncode == 2
    assert "stale state file" in proc.stderr and "delete it" in proc.stderr


def test_sigterm_cleans_up(tmp_path):
    sim = launcher.start(tmp_path / "sim")
    dirs = [d["path"] for d in sim.datastores]
    assert all(os.path.isdir(d) for d in dirs)
    sim.stop()
    assert sim.process.returncode == 0
    assert not sim.state_file.exists()
    assert not any(os.path.exists(d) for d in dirs)


def test_a_simulator_that_never_gets_ready_is_reported_with_its_log(tmp_path):
    fake = tmp_path / "hangs.sh"
    fake.write_text("#!/bin/sh\necho 'stuck waiting for something'\nexec sleep 60\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(launcher.SimulatorError) as err:
        launcher.start(tmp_path / "sim", timeout=2, binary=fake)
    assert time.monotonic() - t0 < 10
    assert "not ready within 2s" in str(err.value)
    assert "stuck waiting for something" in str(err.value)


def test_a_simulator_that_dies_is_reported_with_its_log(tmp_path):
    fake = tmp_path / "dies.sh"
    fake.write_text("#!/bin/sh\necho 'vsan-vcsim: something broke' >&2\nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(launcher.SimulatorError) as err:
        launcher.start(tmp_path / "sim", timeout=10, binary=fake)
    assert "exited with status 2" in str(err.value) and "something broke" in str(err.value)
