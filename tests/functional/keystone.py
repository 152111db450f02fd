"""A throwaway keystone for tests: gunicorn on loopback, sqlite, fernet tokens.

Real keystone (its own virtualenv, ``.keystone-venv``, made by tools/test-setup.sh), set up as
an operator does: ``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup`` and
``bootstrap`` (the admin user, project and the reader/member/admin/service roles), then the
WSGI app under gunicorn. Users and projects are made through keystone's own API with the
admin's token, from the test process (keystoneauth is in the project's .venv).

keystone's WSGI entry point parses ``sys.argv`` with oslo.config, so gunicorn gets no
arguments at all: its settings are in a ``gunicorn.conf.py`` in its working directory, which
gunicorn reads by default, and keystone finds its config through ``OS_KEYSTONE_CONFIG_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

from tests.functional.glance_api import GunicornServer, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VSAN_FLOWS_KEYSTONE_VENV") or ROOT / ".keystone-venv")
DOMAIN = "default"


class KeystoneError(RuntimeError):
    pass


class Keystone(GunicornServer):
    name = "keystone"
    health_path = "/v3"
    error = KeystoneError

    def __init__(self, workdir: Path, port: int, admin_password: str) -> None:
        # No arguments for gunicorn: see the module's docstring.
        env = dict(os.environ, OS_KEYSTONE_CONFIG_DIR=str(workdir),
                   OS_KEYSTONE_CONFIG_FILES="keystone.conf")
        super().__init__(workdir, port, [str(VENV / "bin" / "gunicorn")], env,
                         log=workdir / "keystone.log", cwd=workdir)
        self.admin_password = admin_password

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    # ------------------------------------------------------------------ identity API

    def session(self, username: str, password: str, project: str):
        """A keystoneauth session of that user, scoped to the project."""
        from keystoneauth1 import session as ksa_session
        from keystoneauth1.identity import v3

        auth = v3.Password(auth_url=self.url, username=username, password=password,
                           user_domain_id=DOMAIN, project_name=project,
                           project_domain_id=DOMAIN)
        return ksa_session.Session(auth=auth)

    def _admin(self):
        return self.session("admin", self.admin_password, "admin")

    def _id(self, kind: str, name: str) -> str | None:
        found = self._admin().get(f"{self.url}/{kind}s", params={"name": name}).json()[f"{kind}s"]
        return found[0]["id"] if found else None

    def project(self, name: str) -> str:
        """The project's id; made if it does not exist."""
        existing = self._id("project", name)
        if existing:
            return existing
        body = {"project": {"name": name, "domain_id": DOMAIN}}
        return self._admin().post(f"{self.url}/projects", json=body).json()["project"]["id"]

    def user(self, name: str, password: str, project: str, roles: list[str]) -> str:
        """A user with these roles on the project (made as needed); returns its id."""
        admin = self._admin()
        project_id = self.project(project)
        user_id = self._id("user", name)
        if user_id is None:
            body = {"user": {"name": name, "password": password, "domain_id": DOMAIN,
                             "default_project_id": project_id}}
            user_id = admin.post(f"{self.url}/users", json=body).json()["user"]["id"]
        for role in roles:
            role_id = self._id("role", role)
            if role_id is None:
                raise KeystoneError(f"keystone has no role {role!r}")
            admin.put(f"{self.url}/projects/{project_id}/users/{user_id}/roles/{role_id}")
        return user_id

    def token(self, username: str, password: str, project: str) -> str:
        """A fresh project-scoped token of the user (what nova's request context carries)."""
        return self.session(username, password, project).get_token()

    def revoke(self, token: str) -> None:
        """Revoke a token (as a logout or a password change does): it is invalid at once."""
        self._admin().delete(f"{self.url}/auth/tokens", headers={"X-Subject-Token": token})

    def expiring_token(self, username: str, password: str, project: str,
                       seconds: float) -> tuple[str, float]:
        """A token that really expires in ``seconds`` (keystone's expiry is one setting for
        every token; a token got through an application credential ends when the credential
        does). Returns the token and the monotonic time after which it is expired."""
        import datetime as dt

        from keystoneauth1 import session as ksa_session
        from keystoneauth1.identity import v3

        user = self.session(username, password, project)
        user_id = user.get_user_id()
        ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        body = {"application_credential": {
            "name": self.new_name("expiring"),
            "expires_at": ends.strftime("%Y-%m-%dT%H:%M:%S.%f")}}
        cred = user.post(f"{self.url}/users/{user_id}/application_credentials",
                         json=body).json()["application_credential"]
        auth = v3.ApplicationCredential(auth_url=self.url, application_credential_id=cred["id"],
                                        application_credential_secret=cred["secret"])
        token = ksa_session.Session(auth=auth).get_token()
        return token, time.monotonic() + seconds + 1.0

    def owner_of(self, token: str) -> str | None:
        """The user name a token belongs to (keystone validates it); None if it is invalid."""
        resp = self._admin().get(f"{self.url}/auth/tokens", raise_exc=False,
                                 headers={"X-Subject-Token": token})
        return resp.json()["token"]["user"]["name"] if resp.status_code == 200 else None

    def register_endpoint(self, service_type: str, name: str, url: str) -> None:
        """Put a service in the catalog (public, internal, admin), as a deployer does."""
        admin = self._admin()
        service = admin.post(f"{self.url}/services", json={"service": {
            "type": service_type, "name": name}}).json()["service"]
        for interface in ("public", "internal", "admin"):
            admin.post(f"{self.url}/endpoints", json={"endpoint": {
                "service_id": service["id"], "interface": interface, "url": url,
                "region_id": "RegionOne"}})

    def new_name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _manage(conf: Path, *args: str) -> None:
    proc = subprocess.run([str(VENV / "bin" / "keystone-manage"), "--config-file", str(conf),
                           *args], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise KeystoneError(f"keystone-manage {args[0]} failed: {proc.stderr[-2000:]}")


def start(workdir: Path, *, timeout: float = 90.0) -> Keystone:
    """Configure, bootstrap and start keystone; returns once it answers on /v3."""
    workdir = Path(workdir)
    if not (VENV / "bin" / "keystone-manage").exists():
        raise KeystoneError(f"keystone is not installed in {VENV}: run tools/test-setup.sh")
    for d in ("fernet-keys", "credential-keys"):
        (workdir / d).mkdir(parents=True, exist_ok=True, mode=0o700)
    port = free_port()
    conf = workdir / "keystone.conf"
    conf.write_text("\n".join([
        "[DEFAULT]",
        f"log_file = {workdir / 'keystone.log'}",
        "[database]",
        f"connection = sqlite:///{workdir / 'keystone.sqlite'}",
        "[fernet_tokens]",
        f"key_repository = {workdir / 'fernet-keys'}",
        "[credential]",
        f"key_repository = {workdir / 'credential-keys'}",
        "",
    ]))
    (workdir / "gunicorn.conf.py").write_text("\n".join([
        "# keystone reads sys.argv itself (oslo.config): gunicorn's settings live here.",
        f'bind = "127.0.0.1:{port}"',
        "workers = 1",
        'wsgi_app = "keystone.wsgi.api:application"',
        "",
    ]))
    admin_password = "admin-" + uuid.uuid4().hex
    user = group = str(os.getuid())
    _manage(conf, "db_sync")
    _manage(conf, "fernet_setup", "--keystone-user", user, "--keystone-group", group)
    _manage(conf, "credential_setup", "--keystone-user", user, "--keystone-group", group)
    url = f"http://127.0.0.1:{port}/v3"
    _manage(conf, "bootstrap", "--bootstrap-password", admin_password,
            "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
            "--bootstrap-public-url", url, "--bootstrap-region-id", "RegionOne")
    ks = Keystone(workdir, port, admin_password)
    ks.run(timeout)
    return ks
