"""vCenter's certificate is verified, and a failure to verify it is final and says what to set.

A second simulator serves a certificate signed by a CA this module makes. With verification on
(the default) and the CA not trusted, every way in - a session, the driver's init_host, `flows
resume` - fails within seconds with one error naming ``[vmware] ca_file``/``insecure``;
oslo.vmware alone retries that login for ever. With ``ca_file`` naming the CA the login works.
An unreachable vCenter is retried ``api_retry_count`` times, then reported. nova's compute
driver, started in a child process as nova-compute starts it, stops the same way with nova's
``InvalidConfiguration`` / ``HypervisorUnavailable`` carrying that one line. The environment
a user sets before starting (``REQUESTS_CA_BUNDLE``, ``https_proxy``, ``no_proxy``) is
honoured by every SOAP call, though our sessions read it only once.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.functional.conftest import make_conf
from vsan_flows import driver as vdriver
from vsan_flows import exceptions
from vsan_flows.simulator import launcher
from vsan_flows.vsphere import session

ROOT = Path(__file__).resolve().parents[2]
# Far more than a bounded failure needs, far less than "for ever".
WATCHDOG_SECS = 90


def _ca_and_server(directory: Path, name: str) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = (directory / f"{name}-ca.pem", directory / f"{name}.pem",
                                    directory / f"{name}.key")
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_file, cert, key = _ca_and_server(d, "vcenter")
    other_ca, _c, _k = _ca_and_server(d, "other")
    return {"ca": ca_file, "cert": cert, "key": key, "other_ca": other_ca}


@pytest.fixture(scope="module")
def tls_sim(pki, tmp_path_factory):
    sim = launcher.start(tmp_path_factory.mktemp("tls-vcsim"), tls_cert=pki["cert"],
                         tls_key=pki["key"])
    yield sim
    sim.stop()


def _conf(sim, wsdl_url, tmp_path, **overrides):
    values = {"vmware__insecure": False, **overrides}
    return make_conf(sim, wsdl_url, tmp_path / "state", **values)


def _bounded(fn, *args, **kwargs):
    """Call fn in a thread; fail the test instead of hanging when it does not return."""
    out: dict = {}

    def run():
        start = time.monotonic()
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
        out["secs"] = time.monotonic() - start

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WATCHDOG_SECS)
    assert not t.is_alive(), f"still trying after {WATCHDOG_SECS} s: not a final failure"
    return out


def _assert_cert_error(out, ca_file=None) -> None:
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterCertificateError), repr(err)
    msg = str(err)
    assert "[vmware] ca_file" in msg and "insecure" in msg, msg
    assert "\n" not in msg
    if ca_file:
        assert str(ca_file) in msg
    assert out["secs"] < 30, out["secs"]


def test_untrusted_certificate_is_one_clear_error(tls_sim, wsdl_url, tmp_path):
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path, vmware__api_retry_count=10))
    _assert_cert_error(out)


def test_certificate_from_another_ca_names_the_bundle(tls_sim, wsdl_url, tmp_path, pki):
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path,
                                          vmware__ca_file=str(pki["other_ca"])))
    _assert_cert_error(out, pki["other_ca"])


def test_ca_file_makes_the_certificate_trusted(tls_sim, wsdl_url, tmp_path, pki):
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path,
                                          vmware__ca_file=str(pki["ca"])))
    assert "error" not in out, out.get("error")
    ctx = out["value"]
    try:
        assert ctx.cacerts == str(pki["ca"])  # lease URLs are verified the same way
        assert ctx.session.vim.service_content.about.name
    finally:
        ctx.close()


def test_unreachable_vcenter_is_retried_a_bounded_number_of_times(wsdl_url, tmp_path, tls_sim):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = _conf(tls_sim, wsdl_url, tmp_path, vmware__host_port=port,
                 vmware__api_retry_count=2)
    out = _bounded(session.connect, conf)
    err = out.get("error")
    assert isinstance(err, exceptions.VCenterUnreachable), repr(err)
    assert f"127.0.0.1:{port}" in str(err) and "3 attempts" in str(err), str(err)
    assert 2.5 < out["secs"] < 60, out["secs"]  # back-off 1 s + 2 s between three attempts


@pytest.fixture(scope="module")
def stored_flow(simulator, wsdl_url, tmp_path_factory):
    """A spawn whose process died before it touched vCenter: init_host/resume will connect."""
    from vsan_flows.images import LocalImageService
    from vsan_flows.simulator import disks

    base = tmp_path_factory.mktemp("tls-flow")
    images = LocalImageService(base / "images")
    vmdk = base / "d.vmdk"
    disks.make_stream_optimized(vmdk, 16 * 1024 * 1024, data_mib=1)
    image_id = images.add_file(vmdk, name="tls")
    db_url = f"sqlite:///{base}/flows.sqlite"
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(base / "state"), "db_url": db_url, "op": "spawn",
            "instance": "tls-" + uuid.uuid4().hex[:8], "image_id": image_id,
            "cue": "PickVsanDatastore:before", "images_dir": str(images.directory)}
    proc = subprocess.run([sys.executable, "-m", "tests.functional.crash_child",
                           json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return {"db_url": db_url, "base": base, "images": images}


def test_init_host_with_untrusted_certificate_fails_at_once(tls_sim, wsdl_url, tmp_path,
                                                            stored_flow):
    conf = _conf(tls_sim, wsdl_url, tmp_path,
                 vsan_flows__persistence_connection=stored_flow["db_url"])
    drv = vdriver.VsanFlowsDriver(conf, images=stored_flow["images"])
    try:
        out = _bounded(drv.init_host)
    finally:
        drv.close()
    _assert_cert_error(out)


def _run_cli(conf_file: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).with_name("vsan-flows")),
                           "--config-file", str(conf_file), *args],
                          capture_output=True, text=True, timeout=WATCHDOG_SECS,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - start


def _assert_one_line_cert_error(proc, secs, sim) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "[vmware] ca_file" in lines[0] and "Traceback" not in proc.stderr, lines
    assert sim.password not in proc.stdout + proc.stderr
    assert secs < 60, secs


def _write_tls_conf(path, tls_sim, wsdl_url: str, tmp_path, db_url: str, images_dir,
                    extra: str = ""):
    """A config file for the TLS simulator with verification on (the default), no ca_file."""
    path.write_text(
        "[vmware]\n"
        f"host_ip = {tls_sim.host}\nhost_port = {tls_sim.port}\n"
        f"host_username = {tls_sim.username}\nhost_password = {tls_sim.password}\n"
        f"wsdl_location = {wsdl_url}\napi_retry_count = 10\n"
        "[vsan_flows]\n"
        f"state_dir = {tmp_path / 'state'}\n"
        f"persistence_connection = {db_url}\n"
        f"image_store_dir = {images_dir}\n" + extra)
    return path


def test_conductor_with_untrusted_certificate_stops_at_start(tls_sim, wsdl_url, tmp_path,
                                                            zookeeper):
    conf_file = _write_tls_conf(
        tmp_path / "conductor.conf", tls_sim, wsdl_url, tmp_path,
        f"sqlite:///{tmp_path}/flows.sqlite", tmp_path / "images",
        f"jobboard_hosts = {zookeeper.hosts}\n"
        f"jobboard_path = /vsan-flows-tls/{uuid.uuid4().hex[:8]}\n")
    proc, secs = _run_cli(conf_file, "conductor")
    _assert_one_line_cert_error(proc, secs, tls_sim)


def test_flows_resume_with_untrusted_certificate_is_one_line(tls_sim, wsdl_url, tmp_path,
                                                             stored_flow):
    from vsan_flows.runtime import persistence

    backend = persistence.backend_from_url(stored_flow["db_url"])
    flow_id = next(fd.uuid for _book, fd in persistence.list_flow_details(backend))
    conf_file = _write_tls_conf(tmp_path / "tls.conf", tls_sim, wsdl_url, tmp_path,
                                stored_flow["db_url"], stored_flow["images"].directory)
    proc, secs = _run_cli(conf_file, "flows", "resume", flow_id, "--force")
    _assert_one_line_cert_error(proc, secs, tls_sim)


# nova's driver, started as nova-compute starts it, in a child process (nova's CONF is the
# process's). The child arms the watchdog's backstop: a start that never ends (oslo.vmware's
# login retrying for ever) dumps every stack and exits, and the test fails showing them.
NOVA_BACKSTOP_SECS = 45


def _start_nova(tmp_path, sim, **vmware) -> tuple[str, dict, subprocess.CompletedProcess]:
    from tests.functional import nova_scenario

    conf_file, _sim = nova_scenario.write_nova_conf(tmp_path, sim, None, "compute-tls",
                                                    **{"insecure": "false", **vmware})
    setup = tmp_path / "start.json"
    setup.write_text(json.dumps({"conf_file": conf_file, "mode": "start-only",
                                 "backstop_secs": NOVA_BACKSTOP_SECS}))
    proc = subprocess.run([sys.executable, "-m", "tests.functional.nova_scenario", str(setup)],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=NOVA_BACKSTOP_SECS + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED ", "STARTED "))]
    assert proc.returncode == 0 and lines, (
        f"nova's driver neither started nor failed (exit {proc.returncode}); stderr ends:\n"
        + proc.stderr[-8000:])
    kind, _, facts = lines[-1].partition(" ")
    assert sim.password not in proc.stdout + proc.stderr
    return kind, json.loads(facts), proc


def test_nova_driver_with_untrusted_certificate_stops_at_once(tls_sim, tmp_path):
    """Without the check nova's own login fails too, but as requests' SSLError about
    ``HTTPSConnectionPool`` and /sdk/vimService.wsdl, naming no option to set."""
    # Ten retries with back-off would outlast the backstop: only a final failure ends in time.
    kind, facts, proc = _start_nova(tmp_path, tls_sim, api_retry_count=10)
    assert kind == "FAILED", facts
    assert facts["type"] == "nova.exception.InvalidConfiguration", facts
    msg = facts["message"]
    assert "[vmware] ca_file" in msg and "insecure" in msg and "\n" not in msg, msg
    assert f"{tls_sim.host}:{tls_sim.port}" in msg, msg
    assert "not reachable" not in proc.stderr  # not one retry


def test_nova_driver_with_another_ca_names_the_bundle(tls_sim, tmp_path, pki):
    kind, facts, _proc = _start_nova(tmp_path, tls_sim, api_retry_count=10,
                                     ca_file=pki["other_ca"])
    assert (kind, facts["type"]) == ("FAILED", "nova.exception.InvalidConfiguration"), facts
    assert str(pki["other_ca"]) in facts["message"] and "[vmware] ca_file" in facts["message"]


def test_nova_driver_with_ca_file_starts(tls_sim, tmp_path, pki):
    kind, facts, _proc = _start_nova(tmp_path, tls_sim, ca_file=pki["ca"])
    assert kind == "STARTED", facts
    # nova's node name: the cluster's moref and vCenter's uuid, read over the verified session
    moref, _, vc_uuid = facts["node"].partition(".")
    assert moref and uuid.UUID(vc_uuid), facts


def test_nova_driver_with_unreachable_vcenter_stops_after_its_retries(tls_sim, tmp_path):
    """Retried as our own sessions retry, then one line (nova alone gave up at the first
    refusal with requests' ConnectionError)."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kind, facts, proc = _start_nova(tmp_path, tls_sim, host_port=port, api_retry_count=1)
    assert (kind, facts["type"]) == ("FAILED", "nova.exception.HypervisorUnavailable"), facts
    assert f"127.0.0.1:{port}" in facts["message"] and "2 attempts" in facts["message"], facts
    assert "\n" not in facts["message"]
    assert "attempt 1 of 2" in proc.stderr  # the one retry, logged

def test_lease_transfer_verifies_the_host_with_ca_file(tls_sim, wsdl_url, tmp_path, pki):
    """The disk PUT verifies vCenter's certificate as the login does: with ``ca_file`` it goes
    through, against another CA it is refused at the handshake, before a byte of disk moves."""
    import ssl

    from vsan_flows.simulator import disks
    from vsan_flows.vsphere import imports, instances, leases, transfer
    from vsan_flows.vsphere.session import ref

    image = tmp_path / "tls.vmdk"
    disks.make_stream_optimized(image, 4 << 20, data_mib=1)
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path,
                                          vmware__ca_file=str(pki["ca"])))
    assert "error" not in out, out.get("error")
    ctx = out["value"]
    name = f"tls-{uuid.uuid4().hex[:6]}"
    try:
        lease = imports.begin_import(ctx, vm_name=name, datastore_name="vsanDatastore",
                                     capacity_bytes=4 << 20, adapter_type=None, guest_id=None)
        device = transfer.disk_device(ctx.session, ref(lease["lease"], "HttpNfcLease"),
                                      ctx.host, ctx.port)
        with pytest.raises(ssl.SSLCertVerificationError):
            transfer.open_lease_request("PUT", device.url, cacerts=str(pki["other_ca"]),
                                        thumbprint=None, headers={"Content-Length": "1"})
        with open(image, "rb") as f:
            sent = imports.upload(ctx, lease["lease"], f, image.stat().st_size)
        assert sent == image.stat().st_size
        leases.complete(ctx, lease["lease"])
    finally:
        instances.destroy_by_name(ctx, name)
        ctx.close()


# ----------------------------------------------------------------- the environment, read once
# Our sessions resolve requests' environment when they are made (session.settle_environment),
# not on every call: what a user sets before starting the service must still be honoured.

class _ConnectProxy:
    """An HTTP CONNECT proxy (what ``https_proxy`` names): tunnels, and counts, each CONNECT."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.tunnels: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        assert method == "CONNECT", method
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.tunnels.append(target)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def connect_proxy(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                 "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    proxy = _ConnectProxy()
    yield proxy
    proxy.close()


def _calls_work(ctx) -> None:
    """Login done; a few more SOAP calls through the same transport."""
    from oslo_vmware import vim_util

    vim = ctx.session.vim
    for _ in range(3):
        assert vim_util.get_object_property(vim, vim.service_content.rootFolder, "name")


def test_requests_ca_bundle_is_trusted_without_ca_file(tls_sim, wsdl_url, tmp_path, pki,
                                                       connect_proxy, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path))
    assert "error" not in out, out.get("error")
    ctx = out["value"]
    try:
        assert ctx.session.vim.client.options.transport.session.trust_env is False
        _calls_work(ctx)
    finally:
        ctx.close()


def test_https_proxy_carries_every_call(tls_sim, wsdl_url, tmp_path, pki, connect_proxy,
                                        monkeypatch):
    monkeypatch.setenv("https_proxy", connect_proxy.url)
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path,
                                          vmware__ca_file=str(pki["ca"])))
    assert "error" not in out, out.get("error")
    ctx = out["value"]
    try:
        _calls_work(ctx)
        assert connect_proxy.tunnels
        assert set(connect_proxy.tunnels) == {f"127.0.0.1:{tls_sim.port}"}
    finally:
        ctx.close()


def test_no_proxy_naming_vcenter_goes_direct(tls_sim, wsdl_url, tmp_path, pki, connect_proxy,
                                             monkeypatch):
    monkeypatch.setenv("https_proxy", connect_proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    out = _bounded(session.connect, _conf(tls_sim, wsdl_url, tmp_path,
                                          vmware__ca_file=str(pki["ca"])))
    assert "error" not in out, out.get("error")
    ctx = out["value"]
    try:
        _calls_work(ctx)
        assert connect_proxy.tunnels == []
    finally:
        ctx.close()
