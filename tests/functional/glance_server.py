"""A real glance-api (gunicorn, sqlite, file store, no keystone) for the nova driver tests.

glance refuses to run without a WSGI server, so it is started as `gunicorn
glance.wsgi.api:application` with its config directory in OS_GLANCE_CONFIG_DIR. Unauthenticated
requests get an admin context (no keystone in the paste pipeline, old policy defaults).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GlanceServer:
    def __init__(self, workdir: Path, timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        conf_dir = self.workdir / "etc"
        conf_dir.mkdir(parents=True, exist_ok=True)
        paste = Path(sys.prefix) / "etc" / "glance" / "glance-api-paste.ini"
        shutil.copy(paste, conf_dir / "glance-api-paste.ini")
        dirs = {name: self.workdir / name for name in ("images", "staging", "tasks")}
        for d in dirs.values():
            d.mkdir(exist_ok=True)
        conf = conf_dir / "glance-api.conf"
        conf.write_text(f"""[DEFAULT]
enabled_backends = fs:file
[database]
connection = sqlite:///{self.workdir / "glance.sqlite"}
[paste_deploy]
flavor =
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {dirs["images"]}
[os_glance_staging_store]
filesystem_store_datadir = {dirs["staging"]}
[os_glance_tasks_store]
filesystem_store_datadir = {dirs["tasks"]}
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
""")
        log = open(self.workdir / "glance.log", "ab")  # noqa: SIM115 - kept for the process
        subprocess.run([str(VENV_BIN / "glance-manage"), "--config-file", str(conf),
                        "db_sync"], check=True, stdout=log, stderr=subprocess.STDOUT)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=str(conf_dir))
        self.process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-b", f"127.0.0.1:{self.port}", "-w", "1",
             "--timeout", "120", "glance.wsgi.api:application"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"glance-api exited ({self.process.returncode}); see "
                                   f"{self.workdir / 'glance.log'}")
            try:
                with urllib.request.urlopen(self.url + "/healthcheck", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"glance-api did not answer within {timeout:.0f}s") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
