"""A throwaway glance-api for tests: gunicorn on loopback, sqlite, the file store; no keystone
unless a test asks for one (``start(..., keystone=...)``: tests/functional/keystone.py).

glance-api refuses to run standalone ("Deploy Glance under a WSGI server"), so it runs as
``gunicorn glance.wsgi.api:application`` from its own virtualenv (``.glance-venv``, made by
tools/test-setup.sh: glance pins much of OpenStack and keeps out of the project's .venv). With
the empty paste flavor every request gets an unauthenticated admin-less context, which glance
33 only lets through with ``enforce_new_defaults`` and ``enforce_scope`` off.

One sync worker by default: a download the client never closes then holds the only worker,
and the next request stalls, so every test against this server proves we close what we open.
gunicorn's access log records each request's method, path, status, Range and X-Auth-Token
headers, which is how tests see which credentials and which ranges went over the wire.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VSAN_FLOWS_GLANCE_VENV") or ROOT / ".glance-venv")

ACCESS_FORMAT = '%(m)s %(U)s %(s)s range=%({range}i)s token=%({x-auth-token}i)s'


class GlanceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """An OpenStack service under gunicorn in a session of its own (stopped with its workers),
    started again on the same port and data by ``run``, which returns once it answers."""

    name = "server"
    health_path = "/"
    error: type[Exception] = RuntimeError

    def __init__(self, workdir: Path, port: int, argv: list[str], env: dict,
                 log: Path, cwd: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log = log

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM lets gunicorn finish requests; SIGKILL is a crash (a request cut short)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def run(self, timeout: float = 90.0) -> None:
        """Start gunicorn (again, on the same port and database); return once it answers."""
        with open(self.workdir / "gunicorn.log", "ab") as out:
            self.proc = subprocess.Popen(self._argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._env,
                                         cwd=self._cwd, start_new_session=True)
        health = f"http://127.0.0.1:{self.port}{self.health_path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.error(f"{self.name} exited with {self.proc.returncode}: "
                                 f"{(self.workdir / 'gunicorn.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise self.error(f"{self.name} did not answer on port {self.port} within "
                         f"{timeout:g} s: {self.log_tail()}")


class GlanceAPI(GunicornServer):
    name = "glance-api"
    health_path = "/healthcheck"
    error = GlanceError

    def __init__(self, workdir: Path, port: int, argv: list[str], env: dict) -> None:
        super().__init__(workdir, port, argv, env, log=workdir / "glance-api.log")
        self.access_log = workdir / "access.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def settled_mark(self, images, timeout: float = 10.0) -> int:
        """The access-log length once every earlier request is in it.

        gunicorn writes a request's line after answering it, so a test that takes
        ``len(access_lines())`` right after its own setup calls may count a setup request as
        one of its own. A request for an image that does not exist is made and waited for.
        """
        import time
        import uuid

        from vsan_flows import exceptions

        probe = f"settle-{uuid.uuid4().hex}"
        with contextlib.suppress(exceptions.VsanFlowsError):
            images.show(probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.access_lines()
            for i, line in enumerate(lines):
                if probe in line:
                    return i + 1
            time.sleep(0.05)
        raise AssertionError(f"glance-api never logged the probe request {probe}")

    def stored_files(self) -> list[Path]:
        """Image files in the file store: a deleted or refused image leaves none behind."""
        return sorted(p for p in (self.workdir / "images").iterdir() if p.is_file())


def _auth_lines(keystone: dict | None) -> list[str]:
    """No keystone: the empty paste flavor gives every request an unauthenticated context,
    which glance 33 only lets through with its old policy defaults. With keystone: the
    keystonemiddleware pipeline and glance's own (new, project-scoped) policy defaults."""
    if keystone is None:
        return ["[paste_deploy]", "flavor =", "[oslo_policy]", "enforce_new_defaults = False",
                "enforce_scope = False"]
    return ["[paste_deploy]", "flavor = keystone", "[keystone_authtoken]",
            *(f"{k} = {v}" for k, v in keystone.items())]


def _write_config(conf_dir: Path, workdir: Path, image_size_cap: int,
                  keystone: dict | None = None) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    paste = VENV / "etc" / "glance" / "glance-api-paste.ini"
    if not paste.exists():
        raise GlanceError(f"{paste} is missing: run tools/test-setup.sh (it makes {VENV})")
    shutil.copy(paste, conf_dir / "glance-api-paste.ini")
    for d in ("images", "staging", "tasks"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "glance-api.conf"
    conf.write_text("\n".join([
        "[DEFAULT]",
        "enabled_backends = fs:file",
        f"image_size_cap = {image_size_cap}",
        f"log_file = {workdir / 'glance-api.log'}",
        "[database]",
        f"connection = sqlite:///{workdir / 'glance.sqlite'}",
        *_auth_lines(keystone),
        "[glance_store]",
        "default_backend = fs",
        "[fs]",
        f"filesystem_store_datadir = {workdir / 'images'}",
        "[os_glance_staging_store]",
        f"filesystem_store_datadir = {workdir / 'staging'}",
        "[os_glance_tasks_store]",
        f"filesystem_store_datadir = {workdir / 'tasks'}",
        "",
    ]))
    return conf


IMAGE_SIZE_CAP = 40 * 1024 * 1024


def start(workdir: Path, *, workers: int = 1, worker_timeout: int = 600,
          image_size_cap: int = IMAGE_SIZE_CAP, timeout: float = 90.0,
          keystone: dict | None = None) -> GlanceAPI:
    """db_sync, then gunicorn; returns once /healthcheck answers.

    ``image_size_cap`` is low by default so a test can meet Glance's 413 with a small disk.
    ``keystone``: the ``[keystone_authtoken]`` options (keystonemiddleware's service user and
    keystone's URL); without it glance-api runs with no authentication at all.
    """
    workdir = Path(workdir)
    gunicorn = VENV / "bin" / "gunicorn"
    manage = VENV / "bin" / "glance-manage"
    if not gunicorn.exists() or not manage.exists():
        raise GlanceError(f"glance is not installed in {VENV}: run tools/test-setup.sh")
    conf_dir = workdir / "etc"
    conf = _write_config(conf_dir, workdir, image_size_cap, keystone)
    sync = subprocess.run([str(manage), "--config-file", str(conf), "db_sync"],
                          capture_output=True, text=True, timeout=300)
    if sync.returncode:
        raise GlanceError(f"glance-manage db_sync failed: {sync.stderr[-2000:]}")
    port = free_port()
    argv = [str(gunicorn), "-b", f"127.0.0.1:{port}", "-w", str(workers),
            "--timeout", str(worker_timeout), "--access-logfile", str(workdir / "access.log"),
            "--access-logformat", ACCESS_FORMAT, "glance.wsgi.api:application"]
    api = GlanceAPI(workdir, port, argv, dict(os.environ, OS_GLANCE_CONFIG_DIR=str(conf_dir)))
    api.run(timeout)
    return api
