"""`vsan-flows demo`: spawn and snapshot against the local simulator, with timings.

The demo runs the real library end to end — the same flows, persistence and vSphere calls a
compute node uses — against our patched vCenter simulator on loopback, and leaves its flows
in the configured store (sqlite under [vsan_flows] state_dir by default) for `vsan-flows
flows list/show/graph` to inspect afterwards.
"""

from __future__ import annotations

import argparse
import configparser
import os
import time
from pathlib import Path

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows import redaction

MiB = 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="spawn + snapshot against the local vCenter simulator")
    p.add_argument("--size-mib", type=int, default=256,
                   help="virtual size of the demo image (default 256)")
    p.add_argument("--data-mib", type=int, default=32,
                   help="MiB of non-zero data in the image (default 32)")
    p.set_defaults(handler=run)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _timed(label: str, fn, *args, **kwargs):
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    _say(f"  {label}: {time.monotonic() - t0:.2f}s")
    return result


def _point_at(conf: cfg.ConfigOpts, sim, wsdl_url: str) -> None:
    for name, value in (("host_ip", sim.host), ("host_port", sim.port),
                        ("host_username", sim.username), ("host_password", sim.password),
                        ("insecure", True), ("wsdl_location", wsdl_url)):
        conf.set_override(name, value, "vmware")


def _write_inspect_conf(conf: cfg.ConfigOpts, path: Path) -> None:
    """A config the CLI can read the demo's flows with (no vCenter secrets in it)."""
    cp = configparser.ConfigParser()
    cp["vsan_flows"] = {"state_dir": vconf.state_dir(conf)}
    if conf.vsan_flows.persistence_connection:
        cp["vsan_flows"]["persistence_connection"] = conf.vsan_flows.persistence_connection
    with open(path, "w") as f:
        cp.write(f)
    os.chmod(path, 0o600)


def run(conf: cfg.ConfigOpts, args: argparse.Namespace) -> int:
    # Imported here: they pull in oslo.vmware and eventlet, which every other vsan-flows
    # command (flows list, ...) would otherwise pay for on each call.
    from vsan_flows import api
    from vsan_flows.cmd.progress import terminal_progress
    from vsan_flows.runtime import persistence
    from vsan_flows.simulator import disks, launcher, wsdl

    state = Path(vconf.state_dir(conf))
    work = state / "demo"
    work.mkdir(parents=True, exist_ok=True)
    build = Path(os.environ.get("VSAN_FLOWS_BUILD_DIR") or launcher.build_dir())

    _say("vsan-flows demo: spawn and snapshot on vSAN against the local vCenter simulator")
    t_all = time.monotonic()
    sim = _timed("simulator up", launcher.start, work / "vcsim")
    try:
        wsdl_url = "file://" + str(_timed("WSDL ready", wsdl.generate, build / "wsdl"))
        _point_at(conf, sim, wsdl_url)
        _say(f"  vCenter (simulated) at {sim.host}:{sim.port}; datastores: " +
             ", ".join(f"{d['name']} ({d['type']})" for d in sim.datastores))
        backend = persistence.open_backend(conf)
        _say(f"  flow store: {redaction.mask_url(vconf.persistence_url(conf))}")
        live = _timed("vCenter login", api.open_handles, conf)
        images = live.images

        src = work / "demo-image.vmdk"
        _timed(f"made a {args.size_mib} MiB streamOptimized image", disks.make_stream_optimized,
               src, args.size_mib * MiB, data_mib=min(args.data_mib, args.size_mib))
        image_id = images.add_file(src, name="demo-image")
        _say(f"  image {image_id}: {src.stat().st_size / MiB:.1f} MiB file")

        handles = {"handles": live, "backend": backend, "listeners": (terminal_progress,)}
        suffix = time.strftime("%H%M%S")
        first, second, third = (f"demo-{n}-{suffix}" for n in ("a", "b", "from-snap"))

        _say(f"spawn {first} (imports the image into the vSAN image cache)")
        r1 = _timed("spawn", api.spawn, conf, first, image_id, **handles)
        _say(f"  -> {r1['instance_vm']['name']} on {r1['datastore']['name']} "
             f"({r1['datastore']['type']}); disk {r1['instance_vm']['disk']} -> parent "
             f"{r1['instance_vm']['parent']}")
        _say(f"spawn {second} (same image: reuses the cache, imports nothing)")
        r2 = _timed("spawn", api.spawn, conf, second, image_id, **handles)
        _say(f"  -> linked to {r2['shadow_vm']['name']}; bytes sent: {r2['bytes_sent']}")

        snap_id = images.create({"name": f"snapshot-of-{first}"})
        _say(f"snapshot {first} -> image {snap_id}")
        _timed("snapshot", api.snapshot, conf, first, snap_id, **handles)
        meta = images.show(snap_id)
        _say(f"  -> {meta.status}, {meta.size / MiB:.1f} MiB, disk_format={meta.disk_format}, "
             f"vmware_disktype={meta.properties.get('vmware_disktype')}")
        _say(f"spawn {third} from the snapshot")
        r3 = _timed("spawn", api.spawn, conf, third, snap_id, **handles)
        _say(f"  -> {r3['instance_vm']['name']} linked to {r3['shadow_vm']['name']}")
        live.close()
    finally:
        sim.stop()
    inspect_conf = work / "inspect.conf"
    _write_inspect_conf(conf, inspect_conf)
    _say(f"done in {time.monotonic() - t_all:.1f}s. The flows stay in the store:")
    _inspect(backend, inspect_conf, work, snap_id)
    return 0


def _inspect(backend, inspect_conf: Path, work: Path, snap_image: str) -> None:
    """What an admin would do next, done once here: list the flows, draw the snapshot's."""
    from vsan_flows.cmd import cli
    from vsan_flows.runtime import inspect

    base = ["--config-file", str(inspect_conf), "flows"]
    _say(f"$ vsan-flows {' '.join(base)} list")
    cli.main([*base, "list"])
    snap = [f for f in inspect.list_flows(backend, operation="snapshot")
            if f.get("image") == snap_image]
    if snap:
        picture = work / "snapshot-flow.png"
        _say(f"$ vsan-flows {' '.join(base)} graph {snap[0]['id']} --output {picture}")
        cli.main([*base, "graph", snap[0]["id"], "--output", str(picture)])
        _say(f"  (and `flows show {snap[0]['id']}` for every step, its result and any failure)")
