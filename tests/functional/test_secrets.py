"""The secrets walk: every way out of the project, scanned for a password, a cookie, a ticket.

Real flows (a spawn, a snapshot, a spawn that fails and rolls back) run against the simulator
on a PostgreSQL store whose URL carries a password (trust auth accepts any, so the password
is real configuration that reaches every place a URL goes). Then secrets are planted where a
bug elsewhere could put them - a stored failure's text, a library's debug log line - and every
output path is read back: stored rows, log records, CLI text, JSON and CSV (with and without
--debug), graph files. Only redaction stands between the planted values and the output.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from taskflow.types import failure as tf_failure

from tests.functional.conftest import make_conf
from vsan_flows import api, exceptions, imagecache
from vsan_flows.runtime import persistence
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
DB_PASSWORD = "Pl4nted-Db-Pw-7731"
TICKET = "52c0ffee-planted-ticket-9e1d"
NFC_WITH_ID = re.compile(r"/nfc/(?!\*\*\*)[^\s/\"'<]+")


@pytest.fixture
def pg_url():
    name = "vsan_flows_secrets_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test",
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def _rows(url: str) -> list[str]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            out = []
            for table in sa.inspect(conn).get_table_names():
                for row in conn.exec_driver_sql(f"SELECT * FROM {table}"):  # noqa: S608
                    out.append(f"{table}: " + " ".join(str(v) for v in row))
            return out
    finally:
        engine.dispose()


def _plant(url: str, flow_id: str, text: str) -> None:
    """Put ``text`` into the stored failure of the flow's first failed atom."""
    with contextlib.closing(persistence.backend_from_url(url)) as backend:
        _book, fd = persistence.find_flow_detail(backend, flow_id)
        victim = next(ad for ad in fd if ad.failure is not None)
        victim.failure = tf_failure.Failure.from_exception(RuntimeError(text))
        with contextlib.closing(backend.get_connection()) as conn:
            conn.update_atom_details(victim)


def _cli(conf_file: Path, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    argv = [str(Path(sys.executable).with_name("vsan-flows")), "--config-file", str(conf_file),
            *(["--debug"] if debug else []), "flows", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_no_secret_leaves_by_any_path(simulator, wsdl_url, tmp_path, pg_url, vsphere, control,
                                      destroy_after, caplog):
    caplog.set_level(logging.DEBUG)
    images_dir = tmp_path / "images"
    conf = make_conf(simulator, wsdl_url, tmp_path / "state",
                     vsan_flows__persistence_connection=pg_url,
                     vsan_flows__image_store_dir=str(images_dir))
    vmdk = disks.make_stream_optimized(tmp_path / "s.vmdk", 32 * MiB, data_mib=2)
    tag = uuid.uuid4().hex[:6]
    ok, bad = f"sec-ok-{tag}", f"sec-bad-{tag}"
    with api.open_handles(conf) as handles:  # its own login: its own cookie to look for
        cookies = handles.vsphere.cookies()
        assert cookies
        image_id = handles.images.add_file(vmdk, name="sec")
        api.spawn(conf, ok, image_id, handles=handles)
        destroy_after += [ok, *[v["name"] for v in control.status()["vms"]
                                if v["name"].startswith(imagecache.name_prefix(image_id))]]
        api.snapshot(conf, ok, handles.images.create({"name": "sec-snap"}), handles=handles)
        tickets = {m for lease in control.status().get("leases") or []
                   for u in lease.get("urls") or [] for m in re.findall(r"/nfc/([^/]+)/", u)}
        control.fail_method("CreateVM_Task", "SystemError", message="injected by the walk")
        with pytest.raises(exceptions.VsanFlowsError):
            api.spawn(conf, bad, handles.images.add_file(vmdk, name="bad"), handles=handles)
        control.reset()
    secrets = [DB_PASSWORD, *cookies, *tickets]

    # 1. stored rows, as the flows left them
    rows = _rows(pg_url)
    assert len(rows) > 20
    for row in rows:
        for secret in secrets:
            assert secret not in row, f"stored: {row[:200]}"
        assert not NFC_WITH_ID.search(row), f"lease URL stored: {row[:200]}"

    # 2. plant: a stored failure text and library log lines that carry all three
    planted = (f"login failed for postgres:{DB_PASSWORD}@db, then for {DB_PASSWORD}\n"
               f"session vmware_soap_session=\"{cookies[0]}\"; Path=/\n"
               f"PUT https://10.0.0.9/nfc/{TICKET}/disk-0")
    with contextlib.closing(persistence.open_backend(conf)) as backend:
        flows = {(b.meta or {}).get("instance"): fd.uuid
                 for b, fd in persistence.list_flow_details(backend)}
    _plant(pg_url, flows[bad], planted)
    for name in ("vsan_flows.flow", "oslo_vmware.rw_handles", "urllib3.connectionpool"):
        logging.getLogger(name).warning("planted: %s", planted)
    secrets += [TICKET]

    # 3. every CLI view, with and without --debug, and the graph files
    conf_file = tmp_path / "vsan-flows.conf"
    conf_file.write_text(
        f"[vmware]\nhost_ip = {simulator.host}\nhost_port = {simulator.port}\n"
        f"host_username = {simulator.username}\nhost_password = {simulator.password}\n"
        f"insecure = true\nwsdl_location = {wsdl_url}\n"
        f"[vsan_flows]\nstate_dir = {tmp_path / 'state'}\n"
        f"persistence_connection = {pg_url}\nimage_store_dir = {images_dir}\n")
    runs = []
    for debug in (False, True):
        runs.append(_cli(conf_file, "list", debug=debug))
        runs.append(_cli(conf_file, "list", "-f", "json", debug=debug))
        runs.append(_cli(conf_file, "show", flows[bad], debug=debug))
        runs.append(_cli(conf_file, "show", flows[bad], "-f", "json", debug=debug))
    runs.append(_cli(conf_file, "list", "-f", "csv"))
    runs.append(_cli(conf_file, "show", "no-such-flow", debug=True))  # an error path
    pictures = []
    for suffix in ("dot", "svg"):
        out = tmp_path / f"bad.{suffix}"
        runs.append(_cli(conf_file, "graph", flows[bad], "-o", str(out)))
        pictures.append(out)
    assert all(r.returncode == 0 for r in runs[:-4]), [r.stderr[-500:] for r in runs]
    shown = "\n".join(r.stdout + r.stderr for r in runs)
    assert "login failed for postgres:***@db" in shown, "the planted failure was not shown"
    texts = {"CLI output": shown, **{p.name: p.read_text() for p in pictures}}

    # 4. every log record of this process, formatted as a handler would
    formatter = logging.Formatter("%(name)s %(message)s")
    texts["logs"] = "\n".join(formatter.format(r) for r in caplog.records)
    assert "planted: " in texts["logs"]

    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}... in {where}"
        assert not NFC_WITH_ID.search(text), f"lease URL in {where}"
    assert "vmware_soap_session" not in shown, "CLI output names the session cookie"


# --------------------------------------------------------------------------- lease URLs in errors

def _chain_text(exc: BaseException) -> str:
    """Everything an exception carries that a caller could print: str, args, its causes."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + \
        " ".join(repr(a) for a in exc.args) + repr(getattr(exc, "kwargs", ""))


def _zk_texts(hosts: str, path: str) -> list[str]:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts)
    client.start(timeout=15)
    try:
        out, todo = [], [path]
        while todo:
            node = todo.pop()
            if not client.exists(node):
                continue
            data, _stat = client.get(node)
            out.append(f"{node}: {(data or b'').decode('utf-8', 'replace')}")
            todo += [f"{node}/{child}" for child in client.get_children(node)]
        return out
    finally:
        client.stop()
        client.close()


def test_a_failed_transfer_never_hands_out_its_lease_url(simulator, wsdl_url, tmp_path, vsphere,
                                                         images, control, zookeeper, caplog,
                                                         destroy_after):
    """The upload is cut mid-stream: oslo.vmware's error text names the lease URL (a ticket).

    It must not reach the stored failure, the error nova gets, a logged traceback, or the
    jobboard's records and the outcome a poster reads back.
    """
    from types import SimpleNamespace

    from vsan_flows import driver as vdriver
    from vsan_flows.runtime import conductor, jobs

    caplog.set_level(logging.DEBUG)
    db_url = f"sqlite:///{tmp_path}/flows.sqlite"
    board_path = f"/vsan-flows-secrets/{uuid.uuid4().hex[:8]}"
    conf = make_conf(simulator, wsdl_url, tmp_path / "state",
                     vsan_flows__persistence_connection=db_url,
                     vsan_flows__image_store_dir=str(images.directory),
                     vsan_flows__jobboard_hosts=[zookeeper.hosts],
                     vsan_flows__jobboard_path=board_path,
                     vsan_flows__conductor_wait_timeout=0.2)
    vmdk = disks.make_stream_optimized(tmp_path / "cut.vmdk", 32 * MiB, data_mib=8)
    texts: dict[str, str] = {}

    # 1. through the driver, as nova calls it: InstanceDeployFailure's text and its chain
    control.cut_nfc(1 * MiB, direction="upload")
    drv = vdriver.VsanFlowsDriver(conf, handles=api.open_handles(conf, vsphere=vsphere,
                                                                 images=images),
                                  images=images)
    instance = SimpleNamespace(uuid=f"sec-cut-{uuid.uuid4().hex[:6]}")
    with pytest.raises(vdriver.InstanceDeployFailure) as deploy:
        drv.spawn(None, instance, {"id": images.add_file(vmdk, name="cut")}, [], None, {})
    control.reset()
    texts["nova's exception"] = _chain_text(deploy.value)
    assert "cut" in texts["nova's exception"].lower() or "transfer" in \
        texts["nova's exception"].lower(), texts["nova's exception"][:500]

    # 1b. a snapshot whose export stream is cut: the download side's errors
    source = f"sec-src-{uuid.uuid4().hex[:6]}"
    base_image = images.add_file(vmdk, name="src")
    api.spawn(conf, source, base_image, vsphere=vsphere, images=images)
    destroy_after += [source, *[v["name"] for v in control.status()["vms"]
                                if v["name"].startswith(imagecache.name_prefix(base_image))]]
    control.cut_nfc(1 * MiB, direction="download")
    with pytest.raises(exceptions.VsanFlowsError) as snap:
        api.snapshot(conf, source, images.create({"name": "sec-cut-snap"}), vsphere=vsphere,
                     images=images)
    control.reset()
    texts["snapshot's exception"] = _chain_text(snap.value)

    # 2. through the jobboard: a conductor runs the same failure, the poster reads the outcome
    control.cut_nfc(1 * MiB, direction="upload")
    live = api.open_handles(conf, vsphere=vsphere, images=images).transients()
    job_id = jobs.post(conf, api.plan(conf, "spawn", f"sec-job-{uuid.uuid4().hex[:6]}",
                                      images.add_file(vmdk, name="cut-job")))
    zk_during = _zk_texts(zookeeper.hosts, board_path)
    assert conductor.run_conductor(conf, lambda: live, max_jobs=1)["consumed"] == 1
    control.reset()
    with pytest.raises(jobs.JobFailed) as failed:
        jobs.wait(conf, job_id, 10)
    texts["job outcome"] = _chain_text(failed.value)
    texts["jobboard records"] = "\n".join(zk_during + _zk_texts(zookeeper.hosts, board_path))

    # 3. the stored flows (failures with their tracebacks, the outcome in the flow's meta)
    texts["stored rows"] = "\n".join(_rows(db_url))
    assert "Traceback" in texts["stored rows"] or "traceback" in texts["stored rows"]

    # 4. every log record with its traceback, formatted as a handler would
    formatter = logging.Formatter("%(name)s %(message)s")
    texts["logs"] = "\n".join(formatter.format(r) for r in caplog.records)
    assert any(r.exc_info for r in caplog.records), "no traceback was logged"

    for where, text in texts.items():
        found = NFC_WITH_ID.search(text)
        context = text[max(0, found.start() - 200):found.end() + 50] if found else ""
        assert not found, f"lease URL in {where}: ...{context}"
