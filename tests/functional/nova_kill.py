"""SIGKILL a nova-compute process (tests/functional/nova_scenario.py) mid-import.

The simulator counts a lease's bytes only once a transfer has ended (it stores an upload before
it answers), so "bytes in a lease" is seen too late: the spawn then finishes in milliseconds.
Instead the upload is throttled to a trickle (the compressed stream is ~100 KB: tens of
seconds) and the kill lands once the import lease has been open for a second, i.e. while the
disk streams into it -- the worst moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spawn_and_kill_mid_import(setup: dict, control, workdir: Path) -> dict:
    """Run nova_scenario.py in ``spawn-until-killed`` mode with ``setup`` (conf_file, good);
    SIGKILL it mid-import; return the instance it announced ({"uuid", "image"})."""
    setup_file = workdir / "killed.json"
    setup_file.write_text(json.dumps(dict(setup, mode="spawn-until-killed")))
    control.throttle_nfc(4 * 1024, direction="upload")
    log = open(workdir / "killed.log", "w+")  # noqa: SIM115 - read back on failure
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("nova_scenario.py")),
                              str(setup_file)], stdout=subprocess.PIPE, stderr=log, text=True,
                             cwd=str(ROOT))

    def tail() -> str:
        log.seek(0)
        return log.read()[-3000:]

    try:
        line = child.stdout.readline()
        assert line.startswith("INSTANCE "), (line, tail())
        info = json.loads(line[len("INSTANCE "):])
        deadline = time.monotonic() + 120
        open_since = None
        while open_since is None or time.monotonic() - open_since < 1.0:
            if open_since is None and any(le.get("state") == "ready"
                                          for le in control.status().get("leases") or []):
                open_since = time.monotonic()
            assert child.poll() is None, tail()
            assert time.monotonic() < deadline, "the import never started"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        log.close()
    control.reset()
    return info
