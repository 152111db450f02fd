"""The pipelined transfer in a process of its own, optionally eventlet-monkey-patched.

Used by test_pipelined_transfer.py as ``python -m tests.functional.pipelined_child JSON`` so
that the eventlet case can patch before anything is imported (as nova-compute does). It
spawns an instance (import: image store -> lease PUT through ``transfer.copy``), snapshots it
(export: lease GET -> image store through ``ReadAhead``), then does both again with the
lease cut mid-way by the simulator's knob, and prints one JSON line: what each step gave and
which read-ahead threads were still alive after it.
"""

from __future__ import annotations

import json
import sys

ARGS = json.loads(sys.argv[1]) if __name__ == "__main__" else {}
if ARGS.get("eventlet"):
    import eventlet

    eventlet.monkey_patch()

import threading  # noqa: E402 - after monkey-patching, on purpose
import uuid  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from tests.functional import watchdog  # noqa: E402
from tests.functional.conftest import make_conf  # noqa: E402
from vsan_flows import api, exceptions  # noqa: E402
from vsan_flows.images import LocalImageService  # noqa: E402
from vsan_flows.simulator.control import SimulatorControl  # noqa: E402
from vsan_flows.vsphere import instances, loops  # noqa: E402
from vsan_flows.vsphere.session import connect  # noqa: E402

MiB = 1 << 20


def _read_ahead_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "vsan-flows-read-ahead"]


def _outcome(fn) -> dict:
    try:
        fn()
    except exceptions.VsanFlowsError as exc:
        return {"error": type(exc).__name__, "message": str(exc),
                "threads": _read_ahead_threads()}
    return {"error": None, "threads": _read_ahead_threads()}


def main() -> None:
    args = ARGS
    watchdog.backstop(args["timeout"])
    state = json.load(open(args["sim_state"]))
    sim = SimpleNamespace(**state)
    control = SimulatorControl(state["control_url"])
    conf = make_conf(sim, args["wsdl_url"], args["state_dir"])
    vsphere = connect(conf)
    images = LocalImageService(args["images_dir"])
    out: dict = {"backend": loops.active_backend(), "eventlet": bool(args.get("eventlet"))}
    made: list[str] = []
    try:
        name = f"pipe-{uuid.uuid4().hex[:8]}"
        made.append(name)
        result = {}

        def spawn() -> None:
            result.update(api.spawn(conf, name, args["image_id"], vsphere=vsphere,
                                    images=images))
            made.append(result["shadow_vm"]["name"])

        out["spawn"] = _outcome(spawn)
        out["bytes_sent"] = result.get("bytes_sent")
        snap = images.create({"name": "pipelined-snapshot"})
        out["snapshot"] = _outcome(
            lambda: api.snapshot(conf, name, snap, vsphere=vsphere, images=images))
        out["snapshot_image"] = {"id": snap, "status": images.show(snap).status,
                                 "size": images.show(snap).size}

        control.cut_nfc(2 * MiB, direction="download")
        cut_snap = images.create({"name": "pipelined-cut-snapshot"})
        out["cut_snapshot"] = _outcome(
            lambda: api.snapshot(conf, name, cut_snap, vsphere=vsphere, images=images))
        out["cut_snapshot_status"] = images.show(cut_snap).status

        # A second image, so the cut spawn imports (the first one is cached now).
        second = images.add_file(args["image_path"], name="second")
        control.cut_nfc(2 * MiB, direction="upload")
        cut_name = f"pipe-cut-{uuid.uuid4().hex[:8]}"
        out["cut_spawn"] = _outcome(
            lambda: api.spawn(conf, cut_name, second, vsphere=vsphere, images=images))
    finally:
        control.reset()
        for vm in made:
            instances.destroy_by_name(vsphere, vm)
        vsphere.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
