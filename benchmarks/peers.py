"""What stream.py measures ours against besides a bare client: glance-api, and nova 34's own code.

* **Glance**: a real glance-api (tests/functional/glance_api.py: gunicorn, sqlite, the file
  store, no keystone) started for the section, a ``GlanceImageService`` on it as the flows use
  it, and bare HTTP clients for its image data (``GET``/``PUT /v2/images/<id>/file``).
* **nova**: nova's ``fetch_image_stream_optimized`` (spawn's image import) and
  ``upload_image_stream_optimized`` (snapshot's upload) from ``nova.virt.vmwareapi.images``,
  on a nova ``VMwareAPISession`` to the same simulator, with nova's image API pointed at the
  benchmark's local image store: its downloads read the same file in the 64 KiB chunks
  glanceclient yields, its upload writes through the same ``LocalImageService.upload`` (write,
  sha256, fsync) as our snapshot. nova closes its import before vCenter has answered the PUT,
  so its import is timed until the simulator logged the PUT as stored.
"""

from __future__ import annotations

import http.client
import re
import sys
import time
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from common import ROOT

NOVA_CHUNK = 64 * 1024  # what glanceclient's download iterator yields, and nova's copy loop
GLANCE_TOKEN = "vsan-flows-bench-token"  # noauth glance-api: any token goes
GLANCE_SIZE_CAP = 8 << 30


# --------------------------------------------------------------------------------- glance

def start_glance(workdir: Path):
    """A glance-api for this run (two workers: a bare client and ours never wait on each
    other's leftovers), or raise with why it could not start."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.functional import glance_api

    return glance_api.start(workdir, workers=2, image_size_cap=GLANCE_SIZE_CAP)


def glance_service(conf, glance):
    """The flows' GlanceImageService on ``glance``, configured as a deployment would be
    (the [glance] options; keystoneauth's admin_token plugin stands in for keystone)."""
    from keystoneauth1 import loading as ks_loading

    from vsan_flows.glance import GlanceImageService

    opts = ks_loading.get_auth_plugin_conf_options("admin_token")
    conf.register_opts(opts, group="glance")
    for name, value in (("image_service", "glance"),):
        conf.set_override(name, value, "vsan_flows")
    for name, value in (("auth_type", "admin_token"), ("endpoint", glance.url),
                        ("token", GLANCE_TOKEN), ("timeout", 600)):
        conf.set_override(name, value, "glance")
    return GlanceImageService.from_conf(conf)


def _http(url: str) -> tuple[http.client.HTTPConnection, str]:
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600), u.path


def glance_get(glance_url: str, image_id: str) -> http.client.HTTPResponse:
    """A bare GET of the image's data; the caller reads and closes the response."""
    conn, base = _http(glance_url)
    conn.putrequest("GET", f"{base}/v2/images/{image_id}/file", skip_accept_encoding=True)
    conn.putheader("X-Auth-Token", GLANCE_TOKEN)
    conn.endheaders()
    resp = conn.getresponse()
    if resp.status != 200:
        conn.close()
        raise RuntimeError(f"bare glance GET answered HTTP {resp.status}")
    resp._bench_conn = conn  # closed with the response by the caller
    return resp


def glance_put(glance_url: str, image_id: str, body) -> int:
    """A bare chunked PUT of ``body`` (an iterable of bytes) as the image's data; the status."""
    conn, base = _http(glance_url)
    try:
        conn.request("PUT", f"{base}/v2/images/{image_id}/file", body=body,
                     headers={"X-Auth-Token": GLANCE_TOKEN,
                              "Content-Type": "application/octet-stream"},
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------------- nova

class LocalImageAPI:
    """nova's ``IMAGE_API`` (nova.image.glance.API) on the benchmark's local image store."""

    def __init__(self, images) -> None:
        self.images = images

    def get(self, context, image_id, **kw) -> dict:
        m = self.images.show(image_id)
        return {"id": m.id, "name": m.name, "size": m.size, "status": m.status,
                "disk_format": m.disk_format, "container_format": m.container_format,
                "properties": dict(m.properties)}

    def download(self, context, image_id, **kw):
        f = self.images.open(image_id)

        def chunks():
            with f:
                while data := f.read(NOVA_CHUNK):
                    yield data
        return chunks()

    def update(self, context, image_id, meta, data=None, **kw) -> dict:
        return self.images.upload(image_id, data, {"disk_format": "vmdk"}).to_dict()


class Nova:
    """nova 34's two image functions, on a nova session to the simulator."""

    def __init__(self, sim_info: dict, images, poll_interval: float) -> None:
        import nova.conf

        ncf = nova.conf.CONF
        ncf([], project="nova", default_config_files=[])
        ncf.set_override("task_poll_interval", poll_interval, "vmware")
        from nova.virt.vmwareapi import images as nimages
        from nova.virt.vmwareapi import session as nsession

        self.images_mod = nimages
        nimages.IMAGE_API = LocalImageAPI(images)
        self.session = nsession.VMwareAPISession(
            host_ip=sim_info["host"], host_port=sim_info["port"],
            username=sim_info["username"], password=sim_info["password"], retry_count=2,
            insecure=True)
        self.copy_loops: list[tuple[float, float]] = []
        original = nimages.image_transfer

        def timed_transfer(read_handle, write_handle):
            t0 = time.time()
            try:
                return original(read_handle, write_handle)
            finally:
                self.copy_loops.append((t0, time.time()))

        nimages.image_transfer = timed_transfer

    def close(self) -> None:
        try:
            self.session.logout()
        except Exception:  # noqa: BLE001 - the simulator may be gone
            pass

    @staticmethod
    def instance(image_id: str) -> SimpleNamespace:
        return SimpleNamespace(uuid=str(uuid.uuid4()), image_ref=image_id,
                               project_id="bench", name="bench")

    def fetch(self, image_id: str, vm_name: str, ds_name: str, folder, pool) -> dict:
        """fetch_image_stream_optimized; returns its own and its copy loop's (start, end)."""
        self.copy_loops.clear()
        t0 = time.time()
        self.images_mod.fetch_image_stream_optimized(None, self.instance(image_id),
                                                     self.session, vm_name, ds_name, folder,
                                                     pool)
        t1 = time.time()
        (c0, c1), = self.copy_loops
        return {"start": t0, "returned": t1, "copy_start": c0, "copy_returned": c1}

    def upload(self, image_id: str, vm_ref, vmdk_size: int) -> float:
        t0 = time.monotonic()
        self.images_mod.upload_image_stream_optimized(None, image_id, self.instance(image_id),
                                                      self.session, vm_ref, vmdk_size)
        return time.monotonic() - t0


_LOG_TIME = re.compile(r"^vsan-vcsim: (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) nfc PUT (\S+) "
                       r"bytes=(\d+) status=(\w+)")


class NovaImportCut(RuntimeError):
    """nova's PUT did not store: its close completed the lease while the host was still
    receiving the body, and the host dropped the rest (a nova bug the handle in
    vsan_flows/vsphere/transfer.py exists to avoid). Such a run has no "until stored" time."""


def stored_at(sim, vm_name: str, timeout: float = 120.0) -> tuple[float, int]:
    """When the simulator finished storing the PUT of ``vm_name``'s disk (its log line's
    time, on this machine's clock) and how many bytes it stored."""
    end = time.monotonic() + timeout
    while True:
        for line in reversed(sim.log_tail(400).splitlines()):
            m = _LOG_TIME.match(line)
            if m and f"/{vm_name}/" in m.group(2):
                if m.group(4) == "dropped":
                    raise NovaImportCut(f"nova's PUT of {vm_name} was dropped after "
                                        f"{m.group(3)} bytes: the lease was completed first")
                if m.group(4) != "200":
                    raise RuntimeError(f"nova's PUT of {vm_name}: HTTP {m.group(4)}")
                when = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                return when, int(m.group(3))
        if time.monotonic() > end:
            raise RuntimeError(f"the simulator logged no PUT for {vm_name}")
        time.sleep(0.05)


def delete_vm_folder(vsphere, nova_session, vm_name: str, ds_name: str) -> None:
    """What nova leaves of its import: an unregistered VM's folder (its image cache moves the
    disk out of it; we only remove it)."""
    from nova.virt.vmwareapi import ds_util
    from oslo_vmware import vim_util
    from oslo_vmware.objects import datastore as ds_obj

    result = vsphere.session.invoke_api(vim_util, "get_objects", vsphere.session.vim,
                                        "Datacenter", 1, ["name"])
    dc = result.objects[0].obj
    ds_util.file_delete(nova_session, ds_obj.DatastorePath(ds_name, vm_name), dc)
