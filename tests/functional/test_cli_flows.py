"""`vsan-flows flows ...` as an admin runs it: a real subprocess, a config file, real flows.

One module-scoped store holds flows made by the real library against the simulator: a spawn
that succeeded after its import was retried, a snapshot of it, a spawn whose undo failed
(vCenter refused Destroy_Task while reverting), and a spawn whose process was SIGKILLed in the
middle of its disk transfer (tests/functional/crash_child.py). Tests read them with
list/show/graph and act on them with resume/revert/abandon/purge; the tests that change a flow
run in file order, each on its own flow, and purge runs last.

The module runs twice: with the local image store, and with Glance (the session's glance-api;
the config file names it and its service user, the crashed spawn ran as a user's token, and
no command may show either token).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow.persistence import models
from taskflow.persistence.backends.sqlalchemy import tables as tf_tables

from tests.functional.conftest import SERVICE_TOKEN, glance_conf, glance_overrides, make_conf
from tests.unit.test_inspect import _png_pixels, _rgb
from vsan_flows import api, exceptions, imagecache
from vsan_flows.images import LocalImageService
from vsan_flows.runtime import graph, inspect, persistence, runner
from vsan_flows.simulator import disks
from vsan_flows.vsphere import instances

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
OTHER_HOST = "compute-gone-" + uuid.uuid4().hex[:4]
NFC_WITH_ID = re.compile(r"/nfc/(?!\*\*\*)[^\s/\"']+")


@dataclass
class World:
    conf: object
    conf_file: Path
    db_url: str
    images: LocalImageService  # or GlanceImageService
    glance: object = None  # the glance-api, when the world's images are in Glance
    ids: dict[str, str] = field(default_factory=dict)  # role -> flow id
    names: dict[str, str] = field(default_factory=dict)  # role -> instance name


def _write_conf(path: Path, simulator, wsdl_url: str, state_dir: Path, db_url: str,
                images_dir: Path, glance=None) -> None:
    """A compute node's vsan-flows.conf; with ``glance``, Glance and its service user."""
    glance_lines = "" if glance is None else (
        "image_service = glance\n"  # still in [vsan_flows]
        "[glance]\nauth_type = admin_token\n"
        f"endpoint = {glance.url}\ntoken = {SERVICE_TOKEN}\ntimeout = 60\n")
    path.write_text(
        "[vmware]\n"
        f"host_ip = {simulator.host}\nhost_port = {simulator.port}\n"
        f"host_username = {simulator.username}\nhost_password = {simulator.password}\n"
        f"insecure = true\nwsdl_location = {wsdl_url}\n"
        "task_poll_interval = 0.05\napi_retry_count = 2\n"
        "[vsan_flows]\n"
        f"state_dir = {state_dir}\npersistence_connection = {db_url}\n"
        f"image_store_dir = {images_dir}\nimport_retries = 1\n" + glance_lines)


def _flow_ids(backend) -> dict[tuple[str, str], str]:
    """(operation, instance) -> flow id."""
    return {((book.meta or {}).get("operation"), (book.meta or {}).get("instance")): fd.uuid
            for book, fd in persistence.list_flow_details(backend)}


@pytest.fixture(scope="module", params=["local", "glance"])
def world(request, simulator, wsdl_url, vsphere, tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-flows")
    state_dir, images_dir = base / "state", base / "images"
    db_url = f"sqlite:///{base}/flows.sqlite"
    glance = request.getfixturevalue("glance_api") if request.param == "glance" else None
    conf = make_conf(simulator, wsdl_url, state_dir,
                     vsan_flows__persistence_connection=db_url,
                     vsan_flows__image_store_dir=str(images_dir),
                     vsan_flows__import_retries=1,
                     **(glance_overrides(glance) if glance is not None else {}))
    conf_file = base / "vsan-flows.conf"
    _write_conf(conf_file, simulator, wsdl_url, state_dir, db_url, images_dir, glance)
    if glance is None:
        images = LocalImageService(images_dir)
    else:
        from vsan_flows.glance import GlanceImageService

        images = GlanceImageService.from_conf(glance_conf(glance))
        images_before = {m.id for m in images.list()}
    w = World(conf, conf_file, db_url, images, glance)
    ctl = simulator.control
    vms_before = {vm["name"] for vm in ctl.status()["vms"]}
    vmdk = base / "disk.vmdk"
    disks.make_stream_optimized(vmdk, 64 * MiB, data_mib=8)
    tag = uuid.uuid4().hex[:6]
    w.names = {role: f"cli-{role}-{tag}" for role in ("ok", "bad", "half")}
    try:
        # 1. success, after the first import lease failed and the Retry tried again
        ctl.lease_fault("error", "next")
        api.spawn(conf, w.names["ok"], images.add_file(vmdk, name="ok"), vsphere=vsphere,
                  images=images)
        ctl.reset()
        # 2. a snapshot of it
        w.names["snap"] = w.names["ok"]
        snap_image = images.create({"name": "cli-snap"})
        api.snapshot(conf, w.names["ok"], snap_image, vsphere=vsphere, images=images)
        # 3. failed, and its undo failed too: the shadow VM stays, the flow ends FAILURE
        ctl.fail_method("CreateVM_Task", "SystemError", message="injected by test_cli_flows")
        ctl.fail_method("Destroy_Task", "SystemError", count=5)
        with pytest.raises(exceptions.VsanFlowsError):
            api.spawn(conf, w.names["bad"], images.add_file(vmdk, name="bad"),
                      vsphere=vsphere, images=images)
        ctl.reset()
        # 4. half done: the compute process dies in the middle of the disk transfer
        ctl.throttle_nfc(2 * MiB, direction="upload")
        args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
                "state_dir": str(state_dir), "db_url": db_url, "op": "spawn",
                "instance": w.names["half"], "image_id": images.add_file(vmdk, name="half"),
                "images_dir": str(images_dir), "cue": "transfer"}
        if glance is not None:  # the configured service, as a user's request
            from tests.functional.test_crash_resume import USER_TOKEN

            args.update(images_dir=None, conf=glance_overrides(glance), context=USER_TOKEN)
        proc = subprocess.run([sys.executable, "-m", "tests.functional.crash_child",
                               json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == -9, proc.stderr[-2000:]
        ctl.reset()
        backend = persistence.open_backend(conf)
        with contextlib.closing(backend):
            found = _flow_ids(backend)
        w.ids = {role: found[("snapshot" if role == "snap" else "spawn", w.names[role])]
                 for role in ("ok", "snap", "bad", "half")}
        yield w
    finally:
        ctl.reset()
        _cleanup(conf, vsphere, images, ctl, vms_before)
        if glance is not None:
            for meta in images.list():
                if meta.id not in images_before:
                    images.delete(meta.id)


def _cleanup(conf, vsphere, images, ctl, vms_before) -> None:
    """Undo whatever the tests left half done, then remove every VM this module made."""

    with contextlib.suppress(Exception), contextlib.closing(
            persistence.open_backend(conf)) as backend:
        for _book, fd in persistence.list_flow_details(backend):
            if fd.state not in ("SUCCESS", "REVERTED"):
                with contextlib.suppress(Exception):
                    runner.revert(backend, fd, api.open_handles(
                        conf, vsphere=vsphere, images=images).transients())
    made = [vm["name"] for vm in ctl.status()["vms"] if vm["name"] not in vms_before]
    # instances first: image cache VMs refuse to go while linked clones use them
    for name in sorted(made, key=lambda n: n.startswith("vsanflows-")):
        with contextlib.suppress(Exception):
            instances.destroy_by_name(vsphere, name)


#: Every command this module ran: (debug?, arguments, result); the secrets test scans them all.
RUNS: list[tuple[bool, tuple[str, ...], subprocess.CompletedProcess]] = []

# A process that has imported the CLI once and forks a child per command: the child runs the
# real `vsan-flows` main() with its own stdin (/dev/null: not a terminal), stdout, stderr and
# exit code, exactly as the console script does, minus ~2.5 s of interpreter start and
# imports per run (oslo.vmware, eventlet, SQLAlchemy, TaskFlow). A few runs below still
# start the console script from scratch (fresh=True).
_FORK_SERVER = r"""
import json, os, sys
import vsan_flows.cmd.cli as cli
import vsan_flows.cmd.flows, vsan_flows.runtime.inspect, vsan_flows.runtime.persistence
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.stdin = open(0, closefd=False)
        try:
            rc = cli.main(req["argv"])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what the interpreter does with an escape
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)
    _pid, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class _Forker:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout.readline().strip() == "ready"
        self.count = 0

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = (self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err")
        self.proc.stdin.write(json.dumps({"argv": argv, "stdout": str(out),
                                          "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return subprocess.CompletedProcess(argv, rc, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_FORKER: _Forker | None = None


@pytest.fixture(scope="module", autouse=True)
def _forker(tmp_path_factory):
    global _FORKER
    _FORKER = _Forker(tmp_path_factory.mktemp("cli-runs"))
    yield
    _FORKER.close()
    _FORKER = None


def cli(w: World, *args: str, debug: bool = False, config: Path | None = None,
        fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `vsan-flows [--debug] flows ARGS` in its own process, stdin not a terminal."""
    argv = ["--config-file", str(config or w.conf_file)] + (["--debug"] if debug else []) + \
        ["flows", *args]
    if fresh or _FORKER is None:
        proc = subprocess.run([str(Path(sys.executable).with_name("vsan-flows")), *argv],
                              cwd=ROOT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
    else:
        proc = _FORKER.run(argv)
    RUNS.append((debug, args, proc))
    return proc


def cli_many(w: World, *calls: tuple[tuple[str, ...], bool]) -> list[subprocess.CompletedProcess]:
    """Several commands ((args, debug) each), one after the other; results in order."""
    return [cli(w, *args, debug=debug) for args, debug in calls]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `vsan-flows: error:` line of a failed run (and no traceback)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("vsan-flows:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def _backend(w: World):
    return persistence.open_backend(w.conf)


def _hand_made_flow(w: World, *, host: str, state: str, instance: str, op: str = "spawn",
                    image: str = "no-such-image") -> str:
    """A flow saved but never run (as a job a host accepted), then put in ``state``."""
    backend = _backend(w)
    with contextlib.closing(backend):
        book = models.LogBook(f"{op} {instance}")
        book.meta = {"host": host, "operation": op, "instance": instance, "image": image}
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
        factory = api.SPAWN_FACTORY if op == "spawn" else api.SNAPSHOT_FACTORY
        token = uuid.uuid4().hex[:12]
        store = {"instance_name": instance, "image_id": image, "flow_token": token,
                 "import_vm_name": f"vsanflows-import-{token}",
                 "snapshot_name": f"vsanflows-snapshot-{token}",
                 "clone_vm_name": f"vsanflows-export-{token}"}
        eng = taskflow.engines.load_from_factory(factory, factory_kwargs={"retries": 0},
                                                 store=store, book=book, backend=backend)
        eng.compile()
        eng.prepare()
        flow_id = eng.storage.flow_uuid
        _b, fd = persistence.find_flow_detail(backend, flow_id)
        fd.state = state
        with contextlib.closing(backend.get_connection()) as conn:
            conn.update_flow_details(fd)
    return flow_id


# --------------------------------------------------------------------------- views


def test_list_in_every_format_and_filter(world):
    table, as_json, as_csv, running, snapshots, bad = cli_many(
        world, (("list",), False), (("list", "-f", "json"), True), (("list", "-f", "csv"), False),
        (("list", "-f", "json", "--state", "running"), True),
        (("list", "-f", "json", "--operation", "snapshot", "--newer-than", "2h"), False),
        (("list", "-f", "json", "--instance", "cli-bad-*", "--older-than", "0s"), False))
    header = ok(table).splitlines()[0].split()
    assert header == ["ID", "OPERATION", "INSTANCE", "IMAGE", "STATE", "HOST", "STARTED",
                      "DURATION"]
    for flow_id in world.ids.values():
        assert flow_id in table.stdout

    rows = json.loads(ok(as_json))
    assert all(tuple(r) == inspect.LIST_FIELDS for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert by_id[world.ids["ok"]]["state"] == "SUCCESS"
    assert by_id[world.ids["snap"]]["operation"] == "snapshot"
    assert by_id[world.ids["bad"]]["state"] == "FAILURE"
    assert by_id[world.ids["half"]]["state"] == "RUNNING"
    for r in rows:
        assert dt.datetime.fromisoformat(r["started"]).utcoffset() == dt.timedelta(0)
        assert r["host"] == runner.host_name()
    assert by_id[world.ids["ok"]]["duration"] > 0

    assert ok(as_csv).splitlines()[0] == ",".join(inspect.LIST_FIELDS)
    assert {r["id"] for r in json.loads(ok(running))} == {world.ids["half"]}
    assert {r["id"] for r in json.loads(ok(snapshots))} == {world.ids["snap"]}
    assert {r["id"] for r in json.loads(ok(bad))} == {world.ids["bad"]}


def test_show_success_and_failure(world):
    ok_json, ok_text, bad_json, bad_text = cli_many(
        world, (("show", world.ids["ok"], "-f", "json"), True),
        (("show", world.ids["ok"]), False), (("show", world.ids["bad"], "-f", "json"), False),
        (("show", world.ids["bad"]), True))

    report = json.loads(ok(ok_json))
    assert report["factory"]["name"] == api.SPAWN_FACTORY
    assert report["factory"]["kwargs"]["retries"] == 1
    assert report["inputs"]["instance_name"] == world.names["ok"]
    atoms = {a["short_name"]: a for a in report["atoms"]}
    assert atoms["CloneLinkedDisk"]["state"] == "SUCCESS"
    assert atoms["import-retry"]["attempts"] == 2
    assert atoms["StreamDiskToLease"]["retried_by"] == "import-retry"
    retries = {r["name"]: r for r in report["retries"]}
    # The spawn's two Retries; only the import's was needed (the cache entry never vanished).
    assert set(retries) == {"import-retry", "cache-entry-retry"}
    assert [a["failures"] for a in retries["cache-entry-retry"]["attempts"]] == [[]]
    retry = retries["import-retry"]
    first, second = retry["attempts"]
    assert first["failures"] and first["failures"][0]["atom"] == "CreateImportLease"
    assert "LeaseError" in first["failures"][0]["type"]
    assert second["failures"] == []
    text = ok(ok_text)
    assert "Retry history of import-retry (subflow import-image" in text
    assert "attempt 1: failed in CreateImportLease" in text
    assert "make_spawn_flow(retries=1" in text

    report = json.loads(ok(bad_json))
    assert report["state"] == "FAILURE"
    atoms = {a["short_name"]: a for a in report["atoms"]}
    clone = atoms["CloneLinkedDisk"]
    assert "VimFaultException" in clone["failure"]["type"]
    assert "injected by test_cli_flows" in clone["failure"]["message"]
    assert "File " in clone["failure"]["traceback"]
    shadow = atoms["RegisterShadowVM"]
    assert shadow["state"] == "REVERT_FAILURE"
    assert "SystemError" in shadow["revert_failure"]["message"]
    text = ok(bad_text)
    assert "Failures:" in text and "revert raised" in text and "traceback:" in text


def test_graph_png_svg_dot(world, tmp_path):
    png, half, svg, dot = (tmp_path / n for n in ("bad.png", "half.png", "ok.svg", "snap.dot"))
    runs = cli_many(world, (("graph", world.ids["bad"], "--output", str(png)), False),
                    (("graph", world.ids["half"], "-o", str(half)), True),
                    (("graph", world.ids["ok"], "-o", str(svg)), True),
                    (("graph", world.ids["snap"], "-o", str(dot)), False),
                    (("graph", world.ids["ok"], "-o", str(tmp_path / "x.gif")), False))
    for proc in runs[:4]:
        ok(proc)
    assert str(png) in runs[0].stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    colours = _png_pixels(data)
    assert _rgb(graph.STATE_COLOURS["REVERT_FAILURE"]) in colours  # the failed undo
    assert _rgb(graph.FAILED_OUTLINE) in colours  # the atom that raised
    assert _rgb(graph.STATE_COLOURS["SUCCESS"]) in colours  # steps not yet undone
    assert _rgb(graph.STATE_COLOURS["RUNNING"]) in _png_pixels(half.read_bytes())
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and graph.STATE_COLOURS["SUCCESS"] in text
    assert "TransferRetry" in text and "CloneLinkedDisk" in text
    assert "export-retry" in dot.read_text()
    assert "use a .png" in one_error_line(runs[4])


# --------------------------------------------------------------------------- errors


def test_unknown_id_and_unreachable_store(world, tmp_path, simulator, wsdl_url):
    for proc in cli_many(world, (("show", "nope-0000"), False),
                         (("resume", "nope-0000"), False)):
        line = one_error_line(proc)
        assert "nope-0000" in line and "no such flow" in line
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://u:secret@127.0.0.1:{port}/db"
    conf_file = tmp_path / "unreachable.conf"
    _write_conf(conf_file, simulator, wsdl_url, tmp_path / "state", url, tmp_path / "img")
    quiet = cli(world, "list", config=conf_file, fresh=True)
    line = one_error_line(quiet)
    assert f"127.0.0.1:{port}" in line and "u:***@" in line
    loud = cli(world, "list", config=conf_file, debug=True, fresh=True)
    assert loud.returncode != 0
    for proc in (quiet, loud):
        assert "secret" not in proc.stdout + proc.stderr


def test_refusals(world):
    other = _hand_made_flow(world, host=OTHER_HOST, state="RUNNING", instance="cli-other")
    for args in (("resume", other, "--force"), ("abandon", other, "--yes", "--force")):
        line = one_error_line(cli(world, *args))
        assert f"belongs to host {OTHER_HOST}" in line and "--take-over" in line
    # RUNNING on this host: the store cannot say whether a process still runs it
    line = one_error_line(cli(world, "resume", world.ids["half"]))
    assert "may be running right now" in line and "--force" in line
    # no terminal, no --yes: refuse instead of guessing
    line = one_error_line(cli(world, "revert", world.ids["bad"]))
    assert "stdin is not a terminal" in line and "--yes" in line
    # a finished flow is not undone behind nova's back
    assert "delete the instance" in one_error_line(
        cli(world, "revert", world.ids["ok"], "--yes")).lower()
    # taking over a dead host's flow: abandon it from here
    out = ok(cli(world, "abandon", other, "--take-over", OTHER_HOST, "--yes", debug=True))
    assert "abandoned (was RUNNING)" in out
    with contextlib.closing(_backend(world)) as backend:
        book, fd = persistence.find_flow_detail(backend, other)
    assert book.meta["host"] == runner.host_name()
    assert book.meta["taken_over_from"] == OTHER_HOST
    assert fd.state == "FAILURE" and fd.meta["abandoned"]["previous_state"] == "RUNNING"


# --------------------------------------------------------------------------- actions


def test_resume_the_half_done_spawn(world, control, destroy_after):
    name = world.names["half"]
    with contextlib.closing(_backend(world)) as backend:
        image = persistence.find_flow_detail(backend, world.ids["half"])[0].meta["image"]
    destroy_after.extend([name, imagecache.vm_name(image, "")])
    mark = world.glance.settled_mark(world.images) if world.glance else 0
    out = ok(cli(world, "resume", world.ids["half"], "--force", debug=True))
    assert "resumed: SUCCESS" in out
    if world.glance:  # the config file's service user read the image: no user request left
        end = world.glance.settled_mark(world.images)
        resumed = [ln for ln in world.glance.access_lines()[mark:end] if image in ln]
        assert resumed and all(ln.endswith("token=" + SERVICE_TOKEN) for ln in resumed)
    vms = {vm["name"] for vm in control.status()["vms"]}
    assert name in vms
    (cached,) = [n for n in vms if n.startswith(imagecache.vm_name(image, ""))]
    destroy_after[-1] = cached
    report = json.loads(ok(cli(world, "show", world.ids["half"], "-f", "json")))
    assert report["state"] == "SUCCESS"
    retry = {r["name"]: r for r in report["retries"]}["import-retry"]
    failures = [f for a in retry["attempts"] for f in a["failures"]]
    assert any("interrupted by a restart" in f["message"] for f in failures), retry


def test_revert_retries_the_failed_undo(world, control):
    def shadows() -> list[str]:
        return [vm["name"] for vm in control.status()["vms"]
                if vm["name"].startswith("vsanflows-image-")]

    before = shadows()
    out = ok(cli(world, "revert", world.ids["bad"], "--yes", debug=True))
    assert "reverted: REVERTED" in out
    assert len(shadows()) == len(before) - 1  # the shadow VM the failed undo left is gone
    report = json.loads(ok(cli(world, "show", world.ids["bad"], "-f", "json")))
    atoms = {a["short_name"]: a for a in report["atoms"]}
    assert atoms["RegisterShadowVM"]["state"] == "REVERTED"
    assert "injected by test_cli_flows" in atoms["CloneLinkedDisk"]["failure"]["message"]


def test_abandon_keeps_the_record_and_stops_resume(world):
    flow_id = _hand_made_flow(world, host=runner.host_name(), state="SUSPENDED",
                              instance="cli-abandon")
    with contextlib.closing(_backend(world)) as backend:
        assert flow_id in {fd.uuid for _b, fd in runner.unfinished(backend)}
    out = ok(cli(world, "abandon", flow_id, "--yes", "--reason", "cleaned by hand"))
    assert "abandoned (was SUSPENDED)" in out
    with contextlib.closing(_backend(world)) as backend:
        assert flow_id not in {fd.uuid for _b, fd in runner.unfinished(backend)}
    resumed, listed, shown = cli_many(
        world, (("resume", flow_id), False),
        (("list", "--state", "abandoned", "-f", "json"), False), (("show", flow_id), False))
    assert "abandoned" in one_error_line(resumed)
    assert flow_id in {r["id"] for r in json.loads(ok(listed))}
    text = ok(shown)
    assert "abandoned:" in text and "cleaned by hand" in text and "(was SUSPENDED)" in text


def test_purge_removes_only_old_finished_flows(world):
    """Deletes the success and snapshot flows (backdated by 8 days), nothing else."""
    t = tf_tables.fetch(sa.MetaData())
    then = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=8)
    engine = sa.create_engine(world.db_url)
    with engine.begin() as conn:
        for role in ("ok", "snap"):
            parent = conn.execute(sa.select(t.flowdetails.c.parent_uuid)
                                  .where(t.flowdetails.c.uuid == world.ids[role])).scalar()
            conn.execute(t.logbooks.update().where(t.logbooks.c.uuid == parent)
                         .values(created_at=then))
            conn.execute(t.flowdetails.update().where(t.flowdetails.c.uuid == world.ids[role])
                         .values(updated_at=then))
            conn.execute(t.atomdetails.update()
                         .where(t.atomdetails.c.parent_uuid == world.ids[role])
                         .values(updated_at=then))
    engine.dispose()
    dry, unconfirmed = cli_many(world, (("purge", "--older-than", "7d", "--dry-run"), True),
                                (("purge", "--older-than", "7d"), False))
    assert world.ids["ok"] in ok(dry) and world.ids["snap"] in dry.stdout
    assert world.ids["bad"] not in dry.stdout  # REVERTED just now: not old enough
    assert "stdin is not a terminal" in one_error_line(unconfirmed)
    assert "purged 2 flow(s)" in ok(cli(world, "purge", "--older-than", "7d", "--yes"))
    left = {r["id"] for r in json.loads(ok(cli(world, "list", "-f", "json")))}
    assert world.ids["ok"] not in left and world.ids["snap"] not in left
    assert world.ids["half"] in left and world.ids["bad"] in left


def test_secrets_never_shown(world, simulator, tmp_path):
    """Last: every command, with and without --debug, scanned for secrets.

    Most runs happened in the tests above (recorded in RUNS); what is missing here is run now,
    including resume and revert of flows that log in to vCenter without --debug.
    """
    to_resume = _hand_made_flow(world, host=runner.host_name(), state="SUSPENDED",
                                instance="cli-nosuch", op="snapshot",
                                image=world.images.create({"name": "never"}))
    to_revert = _hand_made_flow(world, host=runner.host_name(), state="SUSPENDED",
                                instance="cli-revert")
    resumed = cli(world, "resume", to_resume, fresh=True)
    assert "has no VM in vCenter" in one_error_line(resumed)  # it logged in and looked
    assert "REVERTED" in ok(cli(world, "revert", to_revert, "--yes"))
    seen = {(args[0], debug) for debug, args, _p in RUNS}
    missing = [((cmd, *extra), debug)
               for cmd, extra in (("list", ()), ("show", (world.ids["ok"],)),
                                  ("graph", (world.ids["ok"], "-o", str(tmp_path / "g.dot"))),
                                  ("purge", ("--older-than", "7d", "--dry-run")))
               for debug in (False, True) if (cmd, debug) not in seen]
    cli_many(world, *missing)
    commands = ("list", "show", "graph", "resume", "revert", "abandon", "purge")
    seen = {(args[0], debug) for debug, args, _p in RUNS}
    assert {(c, d) for c in commands for d in (False, True)} <= seen
    assert any("DEBUG" in p.stderr for debug, _a, p in RUNS if debug)
    for debug, args, proc in RUNS:
        text = proc.stdout + proc.stderr
        where = f"{'--debug ' if debug else ''}{' '.join(args)}"
        assert simulator.password not in text, where
        assert SERVICE_TOKEN not in text and "user-token" not in text, where
        assert "vmware_soap_session" not in text, where
        assert not NFC_WITH_ID.search(text), where
