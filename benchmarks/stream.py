#!/usr/bin/env python
"""Stream benchmark: our disk transfer paths against a bare HTTP client, on one simulator.

This is a benchmark, not a test: it prints figures and asserts nothing about speed (the exit
status is non-zero only when the benchmark itself could not run). See benchmarks/README.md.

Sections (``--sections``, default all):

import  For each image size, N runs (median and per-run figures) of
          spawn    the full ``api.spawn`` of a streamOptimized image (cold image cache), with
                   the stream step (the StreamDiskToLease task) timed by a TaskFlow listener;
          upload   ``imports.upload`` alone on a lease made with ``imports.begin_import``;
          bare     a bare ``http.client`` PUT of the same file to the same kind of lease, in
                   --bare-chunk chunks (and ``bare64k``: 64 KiB chunks, oslo's chunk size).
        MB/s are over the image FILE bytes (MB = 10**6 bytes); ratios are ours/bare.
memory  Peak RSS (ru_maxrss) of a fresh child interpreter per measurement, against the same
        running simulator: ``floor`` (imports, login, image validation), ``warm`` (a whole
        spawn that hits the image cache, so everything but the stream) and ``spawn`` (a cold
        spawn that streams the image). Reported per --mem-sizes size, with the growth of
        ``spawn`` from the smallest to the largest size.
export  For each image size, an instance is spawned (untimed), then N runs of the whole
        ``api.snapshot`` (its StreamDiskToImage step timed by a listener) against readers of
        an ExportVm lease of a snapshot clone of the instance (what the flow exports): a bare
        ``http.client`` GET, the same GET piped into the image store, and
        ``transfer.LeaseDownloadHandle`` in our read-ahead copy loop (``handle``); and the
        image store alone storing the exported bytes from a file (``store_write``). More
        lease readers go in EXPORT_PATHS.
export-memory  Peak RSS of a fresh child running ``api.snapshot``, per --mem-sizes size.
glance  Glance as source and sink (a glance-api of its own): spawn from it and snapshot into
        it against a bare GET from glance piped into a bare PUT, and a bare lease GET piped
        into a bare Glance upload.
nova    nova 34's fetch_image_stream_optimized and upload_image_stream_optimized beside our
        spawn and snapshot, on the same simulator and image store (benchmarks/peers.py).

Every VM the benchmark creates is destroyed, the simulator is stopped, and the work directory
removed (unless --keep); a leak check over VMs, datastore files and leases is printed (the
harness that does this is benchmarks/common.py). ``--smoke`` runs every section at tiny sizes
once, to prove the benchmark still runs; tests/functional/test_benchmarks_smoke.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import resource
import ssl
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import common  # benchmarks/common.py: the simulator harness and helpers both benchmarks use
import peers  # benchmarks/peers.py: glance-api and nova's own image code, to compare with
from common import (
    DATASTORE,
    MB,
    MiB,
    fmt,
    log,
    make_conf,
    mbps,
    median,
    parse_size,
    rounded,
    size_label,
    timing_listener,
)

DEFAULT_SIZES = "256M,2G"
DEFAULT_MEM_SIZES = "256M,2G"
QUICK_SIZES = "64M"
QUICK_MEM_SIZES = "32M,64M"
QUICK_RUNS = 2
SMOKE_SIZES = "4M"
SMOKE_MEM_SIZES = "4M"  # one child per measurement: each logs in (~3 s of CPU)
RATIO_GOAL = 0.90
RSS_FLAT_GOAL_MIB = 20.0
SECTIONS = ("import", "memory", "export", "export-memory", "glance", "nova")
# The snapshot flow's tasks that nova's upload_image_stream_optimized does too.
EXPORT_STEPS = ("CreateExportLease", "StreamDiskToImage", "CompleteLease")


# --------------------------------------------------------------------------------- helpers

def cookie_header(vsphere) -> str | None:
    """The vCenter session cookie, as oslo's handles send it with a lease URL request."""
    for cookie in vsphere.vim.client.cookiejar:
        return f"{cookie.name}={cookie.value}"
    return None


def _https(url: str) -> tuple[http.client.HTTPSConnection, str]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=120,
                                       context=ssl._create_unverified_context())
    return conn, u.path + (f"?{u.query}" if u.query else "")


def bare_put(url: str, cookie: str | None, path: Path, chunk: int) -> tuple[int, int]:
    """PUT the file in ``chunk``-sized sends and read the answer; (bytes sent, HTTP status)."""
    with open(path, "rb", buffering=0) as f:
        return bare_put_from(url, cookie, f, path.stat().st_size, chunk)


def bare_put_from(url: str, cookie: str | None, source, size: int,
                  chunk: int) -> tuple[int, int]:
    """PUT ``size`` bytes read from ``source`` (anything with readinto: a file, an HTTP
    response) in ``chunk``-sized reads and sends, one after the other; (sent, HTTP status)."""
    conn, target = _https(url)
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        conn.putheader("Content-Type", "binary/octet-stream")
        conn.putheader("Overwrite", "t")
        if cookie:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        buf = bytearray(chunk)
        view = memoryview(buf)
        sent = 0
        while n := source.readinto(buf):
            conn.send(view[:n])
            sent += n
        resp = conn.getresponse()
        resp.read()
        return sent, resp.status
    finally:
        conn.close()


def bare_get(url: str, cookie: str | None, chunk: int) -> tuple[int, int]:
    """GET the URL, reading the body into one reused buffer; (bytes received, HTTP status)."""
    conn, target = _https(url)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        if cookie:
            conn.putheader("Cookie", cookie)
        conn.endheaders()
        resp = conn.getresponse()
        buf = bytearray(chunk)
        got = 0
        while n := resp.readinto(buf):
            got += n
        return got, resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------------- child

def _proc_status_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: clear_refs 5) so it measures from now on."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_main(spec: dict) -> None:
    """One memory measurement in a fresh interpreter; prints one JSON line.

    Everything but the stream happens first (imports, login, image validation) and is
    measured as the floor; then the spawn runs, with the peak RSS reset just before it so
    that its own peak is known apart from the login's (suds parsing the WSDL peaks high).
    """
    t0 = time.monotonic()
    from vsan_flows import api
    from vsan_flows.flows import spawn as _spawn_flow  # noqa: F401 - what spawn imports
    from vsan_flows.images import LocalImageService
    from vsan_flows.tasks.image import ValidateStreamOptimizedImage
    from vsan_flows.vsphere.session import connect

    conf = make_conf(spec["sim"], spec["wsdl"], spec["state_dir"])
    images = LocalImageService(spec["images_dir"])
    vsphere = connect(conf)
    if spec["mode"] == "snapshot":
        _child_snapshot(spec, conf, vsphere, images, t0)
        return
    ValidateStreamOptimizedImage().execute(images, spec["image_id"])
    out: dict = {"mode": spec["mode"],
                 "floor_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 "rss_before_spawn_kib": _proc_status_kib("VmRSS")}
    reset = _reset_peak_rss()
    durations: dict = {}
    result = api.spawn(conf, spec["instance"], spec["image_id"], vsphere=vsphere,
                       images=images, listeners=(timing_listener(durations),))
    out["spawn_peak_kib"] = _proc_status_kib("VmHWM") if reset else None
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["instance"] = result["instance_vm"]["name"]
    out["shadow"] = result["shadow_vm"]["name"]
    out["bytes_sent"] = result.get("bytes_sent")
    out["stream_s"] = durations.get("StreamDiskToLease")
    with contextlib.suppress(Exception):
        vsphere.close()
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)


def _child_snapshot(spec: dict, conf, vsphere, images, t0: float) -> None:
    """The export-memory measurement: floor after login, then the peak during api.snapshot."""
    from vsan_flows import api

    images.show(spec["target_image"])
    out: dict = {"mode": "snapshot",
                 "floor_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 "rss_before_spawn_kib": _proc_status_kib("VmRSS")}
    reset = _reset_peak_rss()
    durations: dict = {}
    result = api.snapshot(conf, spec["instance"], spec["target_image"], vsphere=vsphere,
                          images=images, listeners=(timing_listener(durations),))
    out["spawn_peak_kib"] = _proc_status_kib("VmHWM") if reset else None
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["bytes_sent"] = (result.get("image_upload") or {}).get("size")
    out["stream_s"] = durations.get("StreamDiskToImage")
    with contextlib.suppress(Exception):
        vsphere.close()
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------------- bench

class Bench(common.Harness):
    """The stream sections on the shared harness (one simulator, fixtures, leak check)."""

    SCRIPT = Path(__file__).resolve()

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        self.results = {"import": {}, "memory": {}, "export": {}, "export_memory": {},
                        "glance": {}, "nova": {}}

    def environment(self) -> dict:
        env = super().environment()
        with contextlib.suppress(Exception):
            from vsan_flows import conf as vconf

            env["persistence"] = vconf.persistence_url(self.conf).split(":", 1)[0]
        return env

    # ---------------------------------------------------------------- leases

    def new_import_lease(self, fx: dict, prefix: str) -> tuple[str, dict]:
        from vsan_flows.vsphere import imports

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        image = fx["image"]
        lease = imports.begin_import(self.vsphere, vm_name=name, datastore_name=DATASTORE,
                                     capacity_bytes=image["virtual_size"],
                                     adapter_type=image["adapter_type"],
                                     guest_id=image["os_type"])
        return name, lease

    def drop_import(self, name: str, lease: dict) -> None:
        from vsan_flows.vsphere import leases

        try:
            leases.abort(self.vsphere, lease["lease"])
        finally:
            self.destroy(name)

    # ---------------------------------------------------------------- import section

    def run_spawn(self, fx: dict, images=None) -> dict:
        from vsan_flows import api

        name = f"bench-{uuid.uuid4().hex[:8]}"
        durations: dict = {}
        result = None
        t0 = time.monotonic()
        try:
            result = api.spawn(self.conf, name, fx["image_id"], vsphere=self.vsphere,
                               images=images or self.images,
                               listeners=(timing_listener(durations),))
            total = time.monotonic() - t0
        finally:
            # Instance (a linked clone) first, then the shadow VM: the next run imports again.
            self.destroy(name, result and result["shadow_vm"]["name"])
        stream_s = durations.get("StreamDiskToLease")
        nbytes = fx["file_bytes"]
        if result.get("bytes_sent") != nbytes:
            raise RuntimeError(f"spawn sent {result.get('bytes_sent')} bytes, not the image's "
                               f"{nbytes}: the image cache was not cold")
        return {"seconds": total, "mbps": mbps(nbytes, total),
                "stream_seconds": stream_s,
                "stream_mbps": mbps(nbytes, stream_s) if stream_s else None,
                "bytes_sent": result.get("bytes_sent"),
                "tasks": {k: round(v, 4) for k, v in durations.items()}}

    def run_upload(self, fx: dict) -> dict:
        from vsan_flows.vsphere import imports

        name, lease = self.new_import_lease(fx, "bench-upload")
        try:
            t0 = time.monotonic()
            with self.images.open(fx["image_id"]) as f:
                sent = imports.upload(self.vsphere, lease["lease"], f, fx["file_bytes"])
            secs = time.monotonic() - t0
        finally:
            self.drop_import(name, lease)
        return {"seconds": secs, "mbps": mbps(sent, secs), "bytes": sent}

    def run_bare(self, fx: dict, chunk: int) -> dict:
        from vsan_flows.vsphere import transfer
        from vsan_flows.vsphere.session import ref

        name, lease = self.new_import_lease(fx, "bench-bare")
        try:
            t0 = time.monotonic()
            device = transfer.disk_device(self.vsphere.session,
                                          ref(lease["lease"], "HttpNfcLease"),
                                          self.vsphere.host, self.vsphere.port)
            sent, status = bare_put(device.url, cookie_header(self.vsphere),
                                    self.store_path(fx), chunk)
            secs = time.monotonic() - t0
        finally:
            self.drop_import(name, lease)
        if status != 200 or sent != fx["file_bytes"]:
            raise RuntimeError(f"bare PUT: HTTP {status}, {sent} of {fx['file_bytes']} bytes")
        return {"seconds": secs, "mbps": mbps(sent, secs), "bytes": sent}

    def section_import(self) -> None:
        sizes = self.args.sizes
        chunk = self.args.bare_chunk
        kinds: dict[str, Callable[[dict], dict]] = {
            "spawn": self.run_spawn,
            "upload": self.run_upload,
            "bare": lambda fx: self.run_bare(fx, chunk),
        }
        if chunk != 64 * 1024:
            kinds["bare64k"] = lambda fx: self.run_bare(fx, 64 * 1024)
        for size in sizes:
            fx = self.fixture(size)
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            order = list(kinds)
            for i in range(self.args.runs):
                # Rotate the order each run so no path always goes first (or last).
                for kind in order[i % len(order):] + order[: i % len(order)]:
                    r = kinds[kind](fx)
                    runs[kind].append(r)
                    extra = (f", stream {r['stream_mbps']:.1f} MB/s"
                             if r.get("stream_mbps") else "")
                    log(f"  import {fx['label']} run {i + 1} {kind:8s} {r['seconds']:6.2f}s "
                        f"{r['mbps']:7.1f} MB/s{extra}")
            self.results["import"][fx["label"]] = summarize_import(fx, runs, chunk)

    # ---------------------------------------------------------------- memory section

    def child(self, mode: str, fx: dict, **extra) -> dict:
        spec = self.spec(**{"mode": mode, "image_id": fx["image_id"],
                            "instance": f"bench-mem-{uuid.uuid4().hex[:8]}", **extra})
        rc, out, err = self.run_child(spec, timeout=900)
        if rc != 0 or not out:
            raise RuntimeError(f"memory child ({mode}, {fx['label']}) failed with "
                               f"{rc}: {err.strip()[-2000:]}")
        return out

    def section_memory(self) -> None:
        sizes = self.args.mem_sizes
        per_size = {}
        keys = ("floor", "warm", "spawn", "warm_in_spawn", "spawn_in_spawn")
        for size in sizes:
            fx = self.fixture(size)
            samples: dict[str, list[float]] = {k: [] for k in keys}
            for i in range(self.args.mem_runs):
                cold = self.child("spawn", fx)  # the image cache is empty: it streams
                warm: dict = {}
                try:
                    if self.args.warm:
                        warm = self.child("warm", fx)  # the same spawn, cache hit: no stream
                        self.destroy(warm.get("instance"))
                finally:
                    self.destroy(cold.get("instance"), cold.get("shadow"))
                if not cold.get("bytes_sent") or warm.get("bytes_sent"):
                    raise RuntimeError(f"memory children: the cold spawn sent "
                                       f"{cold.get('bytes_sent')} bytes, the warm one "
                                       f"{warm.get('bytes_sent')}; expected some and none")
                kib = {
                    "floor": min(r["floor_maxrss_kib"] for r in (cold, warm) if r),
                    "warm": warm.get("maxrss_kib"),
                    "spawn": cold["maxrss_kib"],
                }
                for name, r in (("warm", warm), ("spawn", cold)):
                    if r.get("spawn_peak_kib") is not None:
                        kib[f"{name}_in_spawn"] = r["spawn_peak_kib"] - r["rss_before_spawn_kib"]
                for k, v in kib.items():
                    if v is not None:
                        samples[k].append(v / 1024)
                mib = {k: (v / 1024 if v is not None else None) for k, v in kib.items()}
                log(f"  memory {fx['label']} run {i + 1}: ru_maxrss floor "
                    f"{mib['floor']:.1f} MiB, warm {fmt(mib['warm'])} MiB, spawn "
                    f"{mib['spawn']:.1f} MiB; peak above the pre-spawn RSS: warm "
                    f"{fmt(mib.get('warm_in_spawn'))} MiB, spawn "
                    f"{fmt(mib.get('spawn_in_spawn'))} MiB (streamed "
                    f"{cold['bytes_sent'] / MB:.0f} MB in {cold['stream_s'] or 0:.2f}s)")
            per_size[fx["label"]] = {
                "virtual_bytes": size, "file_bytes": fx["file_bytes"],
                **{f"{k}_mib": rounded(median(v)) for k, v in samples.items()},
                "runs": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            }
        labels = [size_label(s) for s in sizes]
        out: dict = {"sizes": per_size, "goal_flat_within_mib": RSS_FLAT_GOAL_MIB}
        if len(labels) >= 2:
            lo, hi = per_size[labels[0]], per_size[labels[-1]]
            out["growth_from"], out["growth_to"] = labels[0], labels[-1]
            out["spawn_growth_mib"] = rounded(hi["spawn_mib"] - lo["spawn_mib"])
            if hi["spawn_in_spawn_mib"] is not None and lo["spawn_in_spawn_mib"] is not None:
                out["spawn_in_spawn_growth_mib"] = rounded(hi["spawn_in_spawn_mib"]
                                                          - lo["spawn_in_spawn_mib"])
        self.results["memory"] = out

    # ---------------------------------------------------------------- export section

    def export_lease(self, vm_id: str):
        from vsan_flows.vsphere import transfer
        from vsan_flows.vsphere.session import ref

        session = self.vsphere.session
        lease = transfer.create_export_lease(session, ref(vm_id, "VirtualMachine"))
        try:
            transfer.wait_ready(session, lease)
        except Exception:
            transfer.abort(session, lease)
            raise
        return lease

    def run_export(self, vm_id: str, reader: Callable) -> dict:
        from vsan_flows.vsphere import transfer

        session = self.vsphere.session
        lease = self.export_lease(vm_id)
        ok = False
        try:
            t0 = time.monotonic()
            device = transfer.disk_device(session, lease, self.vsphere.host, self.vsphere.port)
            got = reader(lease, device)
            secs = time.monotonic() - t0
            ok = True
        finally:
            if ok:
                transfer.complete(session, lease)
            else:
                transfer.abort(session, lease)
        return {"seconds": secs, "mbps": mbps(got, secs), "bytes": got}

    @contextlib.contextmanager
    def snapshot_clone(self, instance: str):
        """What the snapshot flow exports: a linked clone at a VM snapshot of the instance.

        Made and removed with the same ``exports`` calls the flow's tasks use (untimed), so
        the lease readers below read the same kind of disk chain as ``api.snapshot``.
        """
        from vsan_flows.vsphere import exports, instances

        vm_id = instances.find(self.vsphere, instance)
        token = uuid.uuid4().hex[:8]
        snap_name, clone_name = f"bench-snap-{token}", f"bench-clone-{token}"
        snap = exports.create_snapshot(self.vsphere, vm_id, snap_name)
        try:
            clone = exports.clone_at_snapshot(self.vsphere, vm_id, snap, clone_name,
                                              "vsan_flows bench export clone")
            try:
                yield clone
            finally:
                instances.destroy_by_name(self.vsphere, clone_name)
        finally:
            exports.remove_snapshot(self.vsphere, vm_id, snap_name)

    def run_snapshot(self, instance: str, images=None) -> dict:
        """The whole ``api.snapshot`` into a fresh empty image; its StreamDiskToImage task timed
        by a listener. The image is deleted afterwards (it is as big as the export)."""
        from vsan_flows import api

        images = images or self.images
        image_id = self.new_image("bench-snapshot", images)
        durations: dict = {}
        try:
            t0 = time.monotonic()
            result = api.snapshot(self.conf, instance, image_id, vsphere=self.vsphere,
                                  images=images, listeners=(timing_listener(durations),))
            total = time.monotonic() - t0
            nbytes = images.show(image_id).size
        finally:
            self.drop_image(image_id, images)
        if result.get("image_upload", {}).get("size") != nbytes:
            raise RuntimeError(f"snapshot: flow says {result.get('image_upload')}, the image "
                               f"holds {nbytes} bytes")
        stream_s = durations.get("StreamDiskToImage")
        # The export itself, as nova's upload does it: lease, stream, release.
        export_s = sum(durations.get(k, 0.0) for k in EXPORT_STEPS)
        return {"seconds": total, "mbps": mbps(nbytes, total), "bytes": nbytes,
                "stream_seconds": stream_s, "export_seconds": export_s,
                "stream_mbps": mbps(nbytes, stream_s) if stream_s else None,
                "tasks": {k: round(v, 4) for k, v in durations.items()}}

    def read_bare(self, lease, device) -> int:
        got, status = bare_get(device.url, cookie_header(self.vsphere), self.args.bare_chunk)
        if status != 200:
            raise RuntimeError(f"bare GET answered HTTP {status}")
        return got

    @contextlib.contextmanager
    def lease_get(self, device):
        """A bare GET of the lease's disk: the response, its connection closed after."""
        conn, target = _https(device.url)
        try:
            conn.putrequest("GET", target, skip_accept_encoding=True)
            if cookie := cookie_header(self.vsphere):
                conn.putheader("Cookie", cookie)
            conn.endheaders()
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"bare GET answered HTTP {resp.status}")
            yield resp
        finally:
            conn.close()

    def read_bare_store(self, lease, device) -> int:
        """A bare GET whose body goes straight into ``images.upload`` of a new image: the
        same sink (file write, sha256, fsync) as the snapshot flow, without our handle/tap."""
        image_id = self.new_image("bench-bare-store")
        try:
            with self.lease_get(device) as resp:
                return self.images.upload(image_id, resp, {"disk_format": "vmdk"}).size
        finally:
            self.drop_image(image_id)

    def read_bare_to_file(self, device, path: Path) -> int:
        """A bare GET of the lease's disk into ``path`` (untimed set-up of store_write)."""
        with self.lease_get(device) as resp:
            got = 0
            with open(path, "wb") as f:
                while data := resp.read(self.args.bare_chunk):
                    f.write(data)
                    got += len(data)
            return got

    def run_store_write(self, path: Path) -> dict:
        """The image store alone: ``images.upload`` of the exported bytes from a local file
        (write, sha256, fsync), the sink end of an export without its network end."""
        image_id = self.new_image("bench-store-write")
        try:
            t0 = time.monotonic()
            with open(path, "rb") as f:
                got = self.images.upload(image_id, f, {"disk_format": "vmdk"}).size
            secs = time.monotonic() - t0
        finally:
            self.drop_image(image_id)
        return {"seconds": secs, "mbps": mbps(got, secs), "bytes": got}

    def section_export(self) -> None:
        """Per size: an instance is spawned (untimed); per run, rotating: ``api.snapshot`` of it
        (whole flow + its StreamDiskToImage step), and lease readers on an ExportVm lease of a
        snapshot clone of it (what the flow exports): bare GET, bare GET into the image store,
        and every EXPORT_PATHS reader."""
        from vsan_flows import api

        for size in self.args.sizes:
            fx = self.fixture(size)
            name = f"bench-exp-{uuid.uuid4().hex[:8]}"
            result = api.spawn(self.conf, name, fx["image_id"], vsphere=self.vsphere,
                               images=self.images)  # untimed: the instance to snapshot
            shadow = result["shadow_vm"]["name"]
            try:
                def lease_kind(reader: Callable, name: str = name) -> Callable[[], dict]:
                    def run() -> dict:
                        with self.snapshot_clone(name) as clone:
                            return self.run_export(clone, reader)
                    return run

                # The exported bytes in a (page-cached) file: what the image store alone
                # takes to store them, with nothing to wait for on the other end.
                exported = self.workdir / f"export-{fx['label']}.vmdk"
                with self.snapshot_clone(name) as clone:
                    self.run_export(clone, lambda lease, device, exported=exported:
                                    self.read_bare_to_file(device, exported))
                kinds: dict[str, Callable[[], dict]] = {
                    "snapshot": lambda name=name: self.run_snapshot(name),
                    "bare": lease_kind(self.read_bare),
                    "bare_store": lease_kind(self.read_bare_store),
                    "store_write": lambda exported=exported: self.run_store_write(exported),
                }
                kinds.update({k: lease_kind(make(self)) for k, make in EXPORT_PATHS.items()})
                runs: dict[str, list[dict]] = {k: [] for k in kinds}
                order = list(kinds)
                expected = None
                for i in range(self.args.runs):
                    for kind in order[i % len(order):] + order[: i % len(order)]:
                        r = kinds[kind]()
                        expected = expected if expected is not None else r["bytes"]
                        if r["bytes"] != expected:
                            raise RuntimeError(f"export {kind}: got {r['bytes']} bytes, an "
                                               f"earlier export of the same disk {expected}")
                        runs[kind].append(r)
                        extra = (f", stream {r['stream_mbps']:.1f} MB/s"
                                 if r.get("stream_mbps") else "")
                        log(f"  export {fx['label']} run {i + 1} {kind:10s} "
                            f"{r['seconds']:6.2f}s {r['mbps']:7.1f} MB/s{extra}")
            finally:
                self.destroy(name, shadow)
                exported.unlink(missing_ok=True)
            self.results["export"][fx["label"]] = summarize_export(fx, runs, expected)

    # ---------------------------------------------------------------- glance section

    def run_glance_bare_import(self, glance, fx: dict) -> dict:
        """A bare GET of the image from glance-api piped into a bare PUT to a lease, chunk by
        chunk (read one, send it), as a plain client would copy one to the other."""
        from vsan_flows.vsphere import transfer
        from vsan_flows.vsphere.session import ref

        name, lease = self.new_import_lease(fx, "bench-gbare")
        try:
            t0 = time.monotonic()
            device = transfer.disk_device(self.vsphere.session,
                                          ref(lease["lease"], "HttpNfcLease"),
                                          self.vsphere.host, self.vsphere.port)
            resp = peers.glance_get(glance.url, fx["image_id"])
            try:
                sent, status = bare_put_from(device.url, cookie_header(self.vsphere), resp,
                                             fx["file_bytes"], self.args.bare_chunk)
            finally:
                resp.close()
                resp._bench_conn.close()
            secs = time.monotonic() - t0
        finally:
            self.drop_import(name, lease)
        if status != 200 or sent != fx["file_bytes"]:
            raise RuntimeError(f"bare glance->PUT: HTTP {status}, {sent} of "
                               f"{fx['file_bytes']} bytes")
        return {"seconds": secs, "mbps": mbps(sent, secs), "bytes": sent}

    def glance_bare_export(self, glance, gimages) -> Callable:
        """A lease reader: a bare GET of the lease's disk piped into a bare chunked PUT of a
        new Glance image's data (the image is created before, and deleted after, the run)."""
        def reader(lease, device) -> int:
            image_id = self.new_image("bench-gbare-export", gimages)
            try:
                with self.lease_get(device) as resp:
                    got = [0]

                    def body():
                        while data := resp.read(self.args.bare_chunk):
                            got[0] += len(data)
                            yield data

                    status = peers.glance_put(glance.url, image_id, body())
                stored = gimages.show(image_id).size
                if status not in (200, 204) or stored != got[0]:
                    raise RuntimeError(f"bare lease->glance: HTTP {status}, stored {stored} "
                                       f"of {got[0]} bytes")
                return got[0]
            finally:
                self.drop_image(image_id, gimages)
        return reader

    def section_glance(self) -> None:
        """Glance as source and sink: per size, the image in a real glance-api (uploaded
        untimed); per run, rotating: api.spawn from Glance (its StreamDiskToLease timed), a
        bare GET from glance-api piped into a bare PUT, api.snapshot into Glance (its
        StreamDiskToImage timed), and a bare lease GET piped into a bare Glance upload."""
        from vsan_flows import api

        glance = peers.start_glance(self.workdir / "glance")
        try:
            gconf = make_conf(self.sim_info, self.wsdl_url, str(self.state_dir))
            gimages = peers.glance_service(gconf, glance)
            for size in self.args.sizes:
                fx = self.fixture(size)
                gid = gimages.add_file(fx["path"], name=f"bench-glance-{fx['label']}")
                gfx = {**fx, "image_id": gid}
                name = f"bench-gexp-{uuid.uuid4().hex[:8]}"
                result = api.spawn(self.conf, name, fx["image_id"], vsphere=self.vsphere,
                                   images=self.images)  # untimed: the instance to snapshot
                try:
                    def export_bare(name: str = name) -> dict:
                        with self.snapshot_clone(name) as clone:
                            return self.run_export(clone,
                                                   self.glance_bare_export(glance, gimages))

                    kinds: dict[str, Callable[[], dict]] = {
                        "import_spawn": lambda gfx=gfx: self.run_spawn(gfx, gimages),
                        "import_bare": lambda gfx=gfx: self.run_glance_bare_import(glance, gfx),
                        "export_snapshot": lambda name=name: self.run_snapshot(name, gimages),
                        "export_bare": export_bare,
                    }
                    runs = self.rotate(kinds, "glance", fx["label"])
                finally:
                    self.destroy(name, result["shadow_vm"]["name"])
                    self.drop_image(gid, gimages)
                self.results["glance"][fx["label"]] = summarize_glance(fx, runs)
        finally:
            glance.stop()

    def rotate(self, kinds: dict[str, Callable[[], dict]], what: str,
               label: str) -> dict[str, list[dict]]:
        """``--runs`` rounds of every kind, the order rotating each round; per-run log."""
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        order = list(kinds)
        for i in range(self.args.runs):
            for kind in order[i % len(order):] + order[: i % len(order)]:
                r = kinds[kind]()
                runs[kind].append(r)
                extra = (f", stream {r['stream_mbps']:.1f} MB/s"
                         if r.get("stream_mbps") else "")
                log(f"  {what} {label} run {i + 1} {kind:16s} {r['seconds']:6.2f}s"
                    + (f" {r['mbps']:7.1f} MB/s" if r.get("mbps") else "") + extra)
        return runs

    # ---------------------------------------------------------------- nova section

    def run_nova_import(self, nova, fx: dict) -> dict:
        """nova's fetch_image_stream_optimized, timed until the simulator stored the PUT (nova
        returns before that); the folder of the VM it unregistered is removed after."""
        from vsan_flows.vsphere import home

        pool, folder = home.pool_and_folder(self.vsphere)
        cut = 0
        while True:
            vm_name = f"OSTACK_IMG_bench-{uuid.uuid4().hex[:8]}"
            try:
                r = nova.fetch(fx["image_id"], vm_name, DATASTORE, folder, pool)
                stored, nbytes = peers.stored_at(self.sim, vm_name)
                break
            except peers.NovaImportCut as exc:
                # nova completed the lease before the host had its bytes (its close reads
                # no answer): nothing was stored, so this run has no time. Said, counted,
                # run again (at most twice more).
                cut += 1
                log(f"  nova import: {exc} ({cut} so far this run)")
                if cut >= 3:
                    raise
            finally:
                peers.delete_vm_folder(self.vsphere, nova.session, vm_name, DATASTORE)
        if nbytes != fx["file_bytes"]:
            raise RuntimeError(f"nova's import stored {nbytes} of {fx['file_bytes']} bytes")
        secs = max(r["returned"], stored) - r["start"]
        return {"seconds": secs, "mbps": mbps(nbytes, secs),
                "copy_seconds": max(r["copy_returned"], stored) - r["copy_start"],
                "returned_early": stored - r["returned"], "cut_before_stored": cut}

    def run_nova_upload(self, nova, instance: str, fx: dict) -> dict:
        """nova's upload_image_stream_optimized of a linked clone at a VM snapshot of the
        instance (what nova's snapshot uploads; made and removed untimed) into a new image."""
        from vsan_flows.vsphere.session import ref

        with self.snapshot_clone(instance) as clone:
            image_id = self.new_image("bench-nova-upload")
            try:
                secs = nova.upload(image_id, ref(clone, "VirtualMachine"), fx["size"])
                meta = self.images.show(image_id)
            finally:
                self.drop_image(image_id)
        if meta.status != "active":
            raise RuntimeError(f"nova's upload left the image {meta.status}")
        return {"seconds": secs, "mbps": mbps(meta.size, secs), "bytes": meta.size}

    def section_nova(self) -> None:
        """nova 34's image import and snapshot upload beside ours, on this simulator and image
        store: per size, per run, rotating: api.spawn, nova's import, api.snapshot, nova's
        upload (nova's session logs in once, untimed)."""
        from vsan_flows import api

        nova = peers.Nova(self.sim_info, self.images, poll_interval=0.05)
        try:
            for size in self.args.sizes:
                fx = self.fixture(size)
                name = f"bench-nova-{uuid.uuid4().hex[:8]}"
                # The instance to snapshot (untimed), from a second copy of the image: its
                # cache entry must not turn the timed spawns below into cache hits.
                other = self.images.add_file(fx["path"], name=f"bench-nova-{fx['label']}")
                result = api.spawn(self.conf, name, other, vsphere=self.vsphere,
                                   images=self.images)
                try:
                    kinds: dict[str, Callable[[], dict]] = {
                        "spawn": lambda fx=fx: self.run_spawn(fx),
                        "nova_import": lambda fx=fx: self.run_nova_import(nova, fx),
                        "snapshot": lambda name=name: self.run_snapshot(name),
                        "nova_upload": lambda name=name, fx=fx: self.run_nova_upload(nova, name,
                                                                                  fx),
                    }
                    runs = self.rotate(kinds, "nova", fx["label"])
                finally:
                    self.destroy(name, result["shadow_vm"]["name"])
                    self.drop_image(other)
                self.results["nova"][fx["label"]] = summarize_nova(fx, runs)
        finally:
            nova.close()

    # ---------------------------------------------------------------- export memory section

    def section_export_memory(self) -> None:
        """Peak RSS of ``api.snapshot`` in a fresh child per size (the memory section's method)."""
        from vsan_flows import api

        sizes = self.args.mem_sizes
        per_size = {}
        for size in sizes:
            fx = self.fixture(size)
            samples: dict[str, list[float]] = {"floor": [], "snapshot": [],
                                               "snapshot_in_snapshot": []}
            for i in range(self.args.mem_runs):
                name = f"bench-expmem-{uuid.uuid4().hex[:8]}"
                result = api.spawn(self.conf, name, fx["image_id"], vsphere=self.vsphere,
                                   images=self.images)
                image_id = self.new_image("bench-expmem")
                try:
                    r = self.child("snapshot", fx, instance=name, target_image=image_id)
                finally:
                    self.drop_image(image_id)
                    self.destroy(name, result["shadow_vm"]["name"])
                kib = {"floor": r["floor_maxrss_kib"], "snapshot": r["maxrss_kib"]}
                if r.get("spawn_peak_kib") is not None:
                    kib["snapshot_in_snapshot"] = r["spawn_peak_kib"] - r["rss_before_spawn_kib"]
                for k, v in kib.items():
                    samples[k].append(v / 1024)
                log(f"  export memory {fx['label']} run {i + 1}: ru_maxrss floor "
                    f"{kib['floor'] / 1024:.1f} MiB, snapshot {kib['snapshot'] / 1024:.1f} MiB; "
                    f"peak above the pre-snapshot RSS "
                    f"{fmt(kib.get('snapshot_in_snapshot', 0) / 1024)} MiB (exported "
                    f"{(r.get('bytes_sent') or 0) / MB:.0f} MB in {r['stream_s'] or 0:.2f}s)")
            per_size[fx["label"]] = {
                "virtual_bytes": size, "file_bytes": fx["file_bytes"],
                **{f"{k}_mib": rounded(median(v)) for k, v in samples.items()},
                "runs": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            }
        labels = [size_label(s) for s in sizes]
        out: dict = {"sizes": per_size, "goal_flat_within_mib": RSS_FLAT_GOAL_MIB}
        if len(labels) >= 2:
            lo, hi = per_size[labels[0]], per_size[labels[-1]]
            out["growth_from"], out["growth_to"] = labels[0], labels[-1]
            out["snapshot_growth_mib"] = rounded(hi["snapshot_mib"] - lo["snapshot_mib"])
            if hi["snapshot_in_snapshot_mib"] is not None and \
                    lo["snapshot_in_snapshot_mib"] is not None:
                out["snapshot_in_snapshot_growth_mib"] = rounded(
                    hi["snapshot_in_snapshot_mib"] - lo["snapshot_in_snapshot_mib"])
        self.results["export_memory"] = out


# Our lease-level export readers, name -> factory(bench) -> reader(lease, device) -> bytes
# read. Each reader gets a ready ExportVm lease of a snapshot clone of the instance (what the
# snapshot flow exports) and its disk device; the bench completes the lease afterwards. The
# flow itself (api.snapshot) is the "snapshot" kind in section_export.

def _export_via_handle(bench: Bench) -> Callable:
    from vsan_flows.vsphere import transfer

    class _Sink:
        """A write handle for transfer.copy that drops the bytes."""

        def __init__(self) -> None:
            self.bytes_written = 0

        def write(self, data: bytes) -> None:
            self.bytes_written += len(data)

        def close(self) -> None:
            pass

    def reader(lease, device) -> int:
        session = bench.vsphere.session
        handle = transfer.LeaseDownloadHandle(session, lease, device)
        sink = _Sink()
        transfer.copy(handle, sink, bench.vsphere.transfer_timeout, "The export")
        return sink.bytes_written

    return reader


EXPORT_PATHS: dict[str, Callable[[Bench], Callable]] = {
    "handle": _export_via_handle,
}


# --------------------------------------------------------------------------------- report

def _stats(runs: list[dict], key: str = "mbps") -> dict:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return {"median": round(median(vals), 2) if vals else None,
            "runs": [round(v, 2) for v in vals]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize_import(fx: dict, runs: dict[str, list[dict]], chunk: int) -> dict:
    out: dict = {"virtual_bytes": fx["size"], "file_bytes": fx["file_bytes"],
                 "data_mib": fx["data_mib"], "bare_chunk": chunk, "mbps": {}, "seconds": {}}
    for kind, rs in runs.items():
        out["mbps"][kind] = _stats(rs)
        out["seconds"][kind] = _stats(rs, "seconds")
    spawn = runs.get("spawn") or []
    out["mbps"]["stream"] = _stats(spawn, "stream_mbps")
    out["seconds"]["stream"] = _stats(spawn, "stream_seconds")
    tasks: dict[str, list[float]] = {}
    for r in spawn:
        for name, secs in r["tasks"].items():
            tasks.setdefault(name, []).append(secs)
    out["spawn_task_seconds_median"] = {k: round(median(v), 4) for k, v in tasks.items()}
    bare = out["mbps"]["bare"]["median"]
    out["ratio"] = {k: _ratio(out["mbps"][k]["median"], bare)
                    for k in ("stream", "upload", "spawn", "bare64k") if k in out["mbps"]}
    # Per-run ratios pair each run of ours with the bare run of the same round.
    out["ratio_runs"] = {
        k: [_ratio(a, b) for a, b in zip(out["mbps"][k]["runs"], out["mbps"]["bare"]["runs"],
                                         strict=False)]
        for k in ("stream", "upload")}
    out["ratio_goal"] = RATIO_GOAL
    return out


def summarize_export(fx: dict, runs: dict[str, list[dict]], export_bytes: int | None) -> dict:
    out: dict = {"file_bytes": fx["file_bytes"], "export_bytes": export_bytes,
                 "mbps": {}, "seconds": {}}
    for kind, rs in runs.items():
        out["mbps"][kind] = _stats(rs)
        out["seconds"][kind] = _stats(rs, "seconds")
    snap = runs.get("snapshot") or []
    out["mbps"]["stream"] = _stats(snap, "stream_mbps")
    out["seconds"]["stream"] = _stats(snap, "stream_seconds")
    tasks: dict[str, list[float]] = {}
    for r in snap:
        for name, secs in r["tasks"].items():
            tasks.setdefault(name, []).append(secs)
    out["snapshot_task_seconds_median"] = {k: round(median(v), 4) for k, v in tasks.items()}
    bare = out["mbps"]["bare"]["median"]
    out["ratio"] = {k: _ratio(out["mbps"][k]["median"], bare) for k in out["mbps"]
                    if k != "bare"}
    out["ratio"]["stream/bare_store"] = _ratio(out["mbps"]["stream"]["median"],
                                               out["mbps"].get("bare_store", {}).get("median"))
    # The goal: the stream runs at the pace of its slower end, the GET or the image store.
    slower = [out["mbps"][k]["median"] for k in ("bare", "store_write") if k in out["mbps"]]
    out["ratio"]["stream/slower_end"] = _ratio(out["mbps"]["stream"]["median"],
                                               min(slower) if slower else None)
    out["ratio_runs"] = {
        k: [_ratio(a, b) for a, b in zip(out["mbps"][k]["runs"], out["mbps"]["bare"]["runs"],
                                         strict=False)]
        for k in ("stream", "snapshot")}
    if "store_write" in out["mbps"]:
        out["ratio_runs"]["stream/slower_end"] = [
            _ratio(a, min(b, c)) for a, b, c in zip(
                out["mbps"]["stream"]["runs"], out["mbps"]["bare"]["runs"],
                out["mbps"]["store_write"]["runs"], strict=False)]
    out["ratio_goal"] = RATIO_GOAL
    return out


def summarize_glance(fx: dict, runs: dict[str, list[dict]]) -> dict:
    out: dict = {"file_bytes": fx["file_bytes"], "mbps": {}, "seconds": {}}
    for kind, rs in runs.items():
        out["mbps"][kind] = _stats(rs)
        out["seconds"][kind] = _stats(rs, "seconds")
    out["mbps"]["import_stream"] = _stats(runs["import_spawn"], "stream_mbps")
    out["mbps"]["export_stream"] = _stats(runs["export_snapshot"], "stream_mbps")
    m = out["mbps"]
    out["ratio"] = {
        "import_stream/bare": _ratio(m["import_stream"]["median"], m["import_bare"]["median"]),
        "export_stream/bare": _ratio(m["export_stream"]["median"], m["export_bare"]["median"]),
    }
    out["ratio_runs"] = {
        "import_stream/bare": [_ratio(a, b) for a, b in zip(
            m["import_stream"]["runs"], m["import_bare"]["runs"], strict=False)],
        "export_stream/bare": [_ratio(a, b) for a, b in zip(
            m["export_stream"]["runs"], m["export_bare"]["runs"], strict=False)],
    }
    out["ratio_goal"] = RATIO_GOAL
    return out


def summarize_nova(fx: dict, runs: dict[str, list[dict]]) -> dict:
    """Seconds (medians); each ratio is nova's time over ours: > 1 means ours is faster."""
    def med(kind: str, key: str = "seconds") -> float | None:
        return median(r.get(key) for r in runs[kind])

    sec = {
        "spawn": med("spawn"), "stream": med("spawn", "stream_seconds"),
        "nova_import": med("nova_import"), "nova_copy": med("nova_import", "copy_seconds"),
        "nova_returned_early": med("nova_import", "returned_early"),
        "snapshot": med("snapshot"), "export": med("snapshot", "export_seconds"),
        "snapshot_stream": med("snapshot", "stream_seconds"),
        "nova_upload": med("nova_upload"),
    }
    out: dict = {"file_bytes": fx["file_bytes"],
                 "seconds": {k: None if v is None else round(v, 3) for k, v in sec.items()},
                 "runs": {k: [round(r["seconds"], 3) for r in rs] for k, rs in runs.items()},
                 "nova_imports_cut": sum(r.get("cut_before_stored", 0)
                                         for r in runs["nova_import"])}
    out["ratio"] = {
        "spawn_vs_nova_import": _ratio(sec["nova_import"], sec["spawn"]),
        "stream_vs_nova_copy": _ratio(sec["nova_copy"], sec["stream"]),
        "export_vs_nova_upload": _ratio(sec["nova_upload"], sec["export"]),
        "snapshot_vs_nova_upload": _ratio(sec["nova_upload"], sec["snapshot"]),
    }
    out["ratio_goal"] = 1.0
    return out


def print_report(results: dict) -> None:
    imp = results.get("import") or {}
    if imp:
        print("\n== Import (spawn) direction: MB/s over the image file bytes, median of runs ==")
        cols = ["spawn", "stream", "upload", "bare", "bare64k"]
        print(f"{'size':>6} {'file MB':>8} " + " ".join(f"{c:>8}" for c in cols)
              + f" {'stream/bare':>11} {'upload/bare':>11} {'spawn/bare':>10}")
        for label, s in imp.items():
            m = s["mbps"]
            print(f"{label:>6} {s['file_bytes'] / MB:8.1f} "
                  + " ".join(f"{fmt(m.get(c, {}).get('median')):>8}" for c in cols)
                  + f" {fmt(s['ratio'].get('stream'), '.3f'):>11}"
                  f" {fmt(s['ratio'].get('upload'), '.3f'):>11}"
                  f" {fmt(s['ratio'].get('spawn'), '.3f'):>10}")
        print(f"  goal: stream/bare >= {RATIO_GOAL:.2f}.  spawn = whole api.spawn; stream = its "
              "StreamDiskToLease task; upload = imports.upload alone;")
        print(f"  bare = http.client PUT in {size_label(next(iter(imp.values()))['bare_chunk'])}"
              " chunks; bare64k = the same in 64 KiB chunks (oslo's copy-loop chunk).")
        for label, s in imp.items():
            print(f"  {label} per run MB/s: "
                  + "; ".join(f"{k} {', '.join(fmt(v) for v in s['mbps'][k]['runs'])}"
                              for k in cols if k in s["mbps"]))
            print(f"  {label} per run ratio: stream/bare "
                  f"{', '.join(fmt(v, '.3f') for v in s['ratio_runs']['stream'])}; upload/bare "
                  f"{', '.join(fmt(v, '.3f') for v in s['ratio_runs']['upload'])}")
            tasks = ", ".join(f"{k} {v:.3f}s" for k, v in s["spawn_task_seconds_median"].items())
            print(f"  {label} spawn task/flow seconds (median): {tasks}")
    mem = results.get("memory") or {}
    if mem:
        print("\n== Memory: peak RSS of a fresh child process per measurement, MiB ==")
        print(f"{'size':>6} {'file MB':>8} {'floor':>8} {'warm':>8} {'spawn':>8} "
              f"{'warm +peak':>11} {'spawn +peak':>11}")
        for label, s in mem["sizes"].items():
            print(f"{label:>6} {s['file_bytes'] / MB:8.1f} {fmt(s['floor_mib']):>8} "
                  f"{fmt(s['warm_mib']):>8} {fmt(s['spawn_mib']):>8} "
                  f"{fmt(s['warm_in_spawn_mib']):>11} {fmt(s['spawn_in_spawn_mib']):>11}")
        print("  floor/warm/spawn = ru_maxrss of the child: floor = after imports + login + "
              "image validation; warm = a whole spawn\n  on an image cache hit (everything but"
              " the stream); spawn = a cold spawn that streams the image. '+peak' = the\n  "
              "peak RSS during api.spawn above the RSS just before it (VmHWM reset first): the "
              "login (suds parsing\n  the WSDL) peaks higher than anything after it, so "
              "ru_maxrss alone hides what the spawn itself needs.")
        if "spawn_growth_mib" in mem:
            print(f"  {mem['growth_from']} -> {mem['growth_to']}: spawn ru_maxrss "
                  f"{mem['spawn_growth_mib']:+.1f} MiB, spawn +peak "
                  f"{fmt(mem.get('spawn_in_spawn_growth_mib'), '+.1f')} MiB (goal: flat "
                  f"within {RSS_FLAT_GOAL_MIB:.0f} MB)")
    exp = results.get("export") or {}
    if exp:
        print("\n== Export (snapshot) direction: MB/s over the exported bytes, median of runs ==")
        kinds = [k for k in next(iter(exp.values()))["mbps"]]
        ratios = [k for k in kinds if k != "bare"]
        print(f"{'size':>6} {'exp MB':>8} " + " ".join(f"{k:>10}" for k in kinds)
              + " " + " ".join(f"{k + '/bare':>15}" for k in ratios)
              + f" {'stream/bare_store':>17}")
        for label, s in exp.items():
            print(f"{label:>6} {(s['export_bytes'] or 0) / MB:8.1f} "
                  + " ".join(f"{fmt(s['mbps'][k]['median']):>10}" for k in kinds) + " "
                  + " ".join(f"{fmt(s['ratio'][k], '.3f'):>15}" for k in ratios)
                  + f" {fmt(s['ratio']['stream/bare_store'], '.3f'):>17}")
        print(f"  goal: stream/bare >= {RATIO_GOAL:.2f}.  snapshot = whole api.snapshot; stream ="
              " its StreamDiskToImage task (TaskFlow listener);\n  the others read an ExportVm "
              "lease of a snapshot clone of the same instance (what the flow exports; lease\n"
              "  creation untimed): bare = http.client GET into a reused buffer; bare_store = "
              "the same GET piped into\n  images.upload (the flow's sink: file write, sha256, "
              "fsync); handle = transfer.LeaseDownloadHandle in our\n  read-ahead copy loop "
              "into a sink that drops the bytes; store_write = the image store alone.")
        for label, s in exp.items():
            print(f"  {label} per run MB/s: "
                  + "; ".join(f"{k} {', '.join(fmt(v) for v in s['mbps'][k]['runs'])}"
                              for k in kinds))
            print(f"  {label} per run ratio: "
                  + "; ".join(f"{k}/bare {', '.join(fmt(v, '.3f') for v in vs)}"
                              for k, vs in s["ratio_runs"].items()))
            tasks = ", ".join(f"{k} {v:.3f}s"
                              for k, v in s["snapshot_task_seconds_median"].items())
            print(f"  {label} snapshot task/flow seconds (median): {tasks}")
    for label, s in exp.items():
        if s["ratio"].get("stream/slower_end") is not None:
            per_run = ", ".join(fmt(v, ".3f") for v in s["ratio_runs"]["stream/slower_end"])
            print(f"  {label} stream / min(bare GET, store_write) = "
                  f"{fmt(s['ratio']['stream/slower_end'], '.3f')} (goal >= {RATIO_GOAL:.2f}; "
                  f"per run {per_run}); store_write = images.upload of the exported bytes "
                  "from a local file")
    gl = results.get("glance") or {}
    if gl:
        print("\n== Glance as source and sink: MB/s over the image/export bytes, median of runs ==")
        kinds = ["import_stream", "import_bare", "import_spawn", "export_stream", "export_bare",
                 "export_snapshot"]
        print(f"{'size':>6} " + " ".join(f"{k:>15}" for k in kinds)
              + f" {'import s/bare':>13} {'export s/bare':>13}")
        for label, s in gl.items():
            print(f"{label:>6} " + " ".join(f"{fmt(s['mbps'][k]['median']):>15}" for k in kinds)
                  + f" {fmt(s['ratio']['import_stream/bare'], '.3f'):>13}"
                  f" {fmt(s['ratio']['export_stream/bare'], '.3f'):>13}")
        print(f"  goal: stream/bare >= {RATIO_GOAL:.2f}. import_stream = StreamDiskToLease of "
              "api.spawn from Glance; import_bare = http.client GET from\n  glance-api piped "
              "into a PUT to a lease, chunk by chunk; export_stream = StreamDiskToImage of "
              "api.snapshot into Glance;\n  export_bare = a lease GET piped into a chunked PUT "
              "of the image's data to glance-api.")
        for label, s in gl.items():
            print(f"  {label} per run ratio: " + "; ".join(
                f"{k} {', '.join(fmt(v, '.3f') for v in vs)}"
                for k, vs in s["ratio_runs"].items()))
    nv = results.get("nova") or {}
    if nv:
        print("\n== Ours beside nova 34 (same simulator, image and store): seconds, median ==")
        cols = ["spawn", "nova_import", "stream", "nova_copy", "export", "snapshot",
                "nova_upload"]
        print(f"{'size':>6} " + " ".join(f"{c:>11}" for c in cols))
        for label, s in nv.items():
            print(f"{label:>6} " + " ".join(f"{fmt(s['seconds'][c], '.3f'):>11}" for c in cols))
        print("  ratios (nova's time / ours; goal >= 1.0):")
        for label, s in nv.items():
            print(f"  {label}: " + ", ".join(f"{k} {fmt(v, '.3f')}"
                                            for k, v in s["ratio"].items())
                  + f"; nova returned {fmt(s['seconds']['nova_returned_early'], '.3f')} s "
                  "before the simulator had stored its import"
                  + (f"; {s['nova_imports_cut']} nova import(s) completed the lease before the "
                     "host had the bytes (nothing stored; run again)"
                     if s.get("nova_imports_cut") else ""))
        print("  nova_import = fetch_image_stream_optimized until the simulator logged the PUT "
              "stored; nova_copy = its copy loop (image_transfer)\n  until stored; export = our"
              " CreateExportLease + StreamDiskToImage + CompleteLease (what nova's upload does);"
              "\n  nova_upload = upload_image_stream_optimized of a linked clone at a VM snapshot"
              " (as nova's snapshot) into the same store.")
    emem = results.get("export_memory") or {}
    if emem:
        print("\n== Export memory: peak RSS of a fresh child running api.snapshot, MiB ==")
        print(f"{'size':>6} {'file MB':>8} {'floor':>8} {'snapshot':>9} {'snapshot +peak':>15}")
        for label, s in emem["sizes"].items():
            print(f"{label:>6} {s['file_bytes'] / MB:8.1f} {fmt(s['floor_mib']):>8} "
                  f"{fmt(s['snapshot_mib']):>9} {fmt(s['snapshot_in_snapshot_mib']):>15}")
        print("  floor = ru_maxrss after imports + login; snapshot = ru_maxrss after "
              "api.snapshot; '+peak' = peak RSS during\n  api.snapshot above the RSS just "
              "before it (VmHWM reset first), as in the memory section.")
        if "snapshot_growth_mib" in emem:
            print(f"  {emem['growth_from']} -> {emem['growth_to']}: snapshot ru_maxrss "
                  f"{emem['snapshot_growth_mib']:+.1f} MiB, snapshot +peak "
                  f"{fmt(emem.get('snapshot_in_snapshot_growth_mib'), '+.1f')} MiB (goal: flat "
                  f"within {RSS_FLAT_GOAL_MIB:.0f} MB)")


# --------------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help=f"image (virtual) sizes for import/export, default "
                   f"{DEFAULT_SIZES} ({QUICK_SIZES} with --quick, {SMOKE_SIZES} with --smoke)")
    p.add_argument("--mem-sizes", help=f"virtual sizes for the memory section, default "
                   f"{DEFAULT_MEM_SIZES} ({QUICK_MEM_SIZES} with --quick, {SMOKE_MEM_SIZES} "
                   "with --smoke)")
    p.add_argument("--runs", type=int, help=f"runs per figure (median), default 3 "
                   f"({QUICK_RUNS} with --quick, 1 with --smoke)")
    p.add_argument("--mem-runs", type=int, default=1, help="memory measurements per size")
    p.add_argument("--quick", action="store_true", help="small sizes: runs in under a minute")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--export", action="store_true",
                   help="only the export direction: --sections export,export-memory")
    p.add_argument("--bare-chunk", default="1M", help="chunk of the bare PUT/GET (default 1M)")
    common.add_harness_args(p)
    args = p.parse_args(argv)
    if args.smoke and args.quick:
        p.error("--smoke and --quick are two different sizes: choose one")

    def quick_or_smoke(default, quick, smoke):
        return smoke if args.smoke else quick if args.quick else default

    args.sizes = [parse_size(s) for s in (
        args.sizes or quick_or_smoke(DEFAULT_SIZES, QUICK_SIZES, SMOKE_SIZES)).split(",")]
    args.mem_sizes = [parse_size(s) for s in (args.mem_sizes or quick_or_smoke(
        DEFAULT_MEM_SIZES, QUICK_MEM_SIZES, SMOKE_MEM_SIZES)).split(",")]
    args.runs = args.runs or quick_or_smoke(3, QUICK_RUNS, 1)
    args.bare_chunk = parse_size(args.bare_chunk)
    args.warm = not args.quick  # --quick skips the cache-hit child to stay under a minute
    if args.export:
        args.sections = "export,export-memory"
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    for s in args.sizes + args.mem_sizes:
        if s < MiB or s % MiB:
            p.error(f"sizes must be whole MiB, got {s}")
    return args


def args_summary(args: argparse.Namespace) -> dict:
    return {"sizes": [size_label(s) for s in args.sizes],
            "mem_sizes": [size_label(s) for s in args.mem_sizes],
            "runs": args.runs, "mem_runs": args.mem_runs, "data_fraction": args.data_fraction,
            "bare_chunk": args.bare_chunk}


def main(argv: list[str] | None = None) -> int:
    return common.main(Bench, parse_args, child_main, print_report, args_summary,
                       prefix="vsan-flows-bench-", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
