"""A compute process under load: rounds of concurrent spawns + snapshots in threads.

Used by test_stress.py as a real child process (``python -m tests.functional.stress_child
JSON``) so that a hang, even one that holds the GIL, ends in a report instead of a stuck CI
job, and so that the eventlet variant can monkey-patch before anything is imported.

Every thread of a round spawns an instance from one of the (already cached) images, then
snapshots it into a new image; all share one vSphere session and one persistence backend,
as threads of nova-compute do. Prints one JSON line per round, then a summary line.
"""

from __future__ import annotations

import json
import sys

ARGS = json.loads(sys.argv[1]) if __name__ == "__main__" else {}
if ARGS.get("eventlet"):
    import eventlet

    eventlet.monkey_patch()

import os  # noqa: E402 - after monkey-patching, on purpose
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from tests.functional import watchdog  # noqa: E402
from tests.functional.conftest import make_conf  # noqa: E402
from vsan_flows import api  # noqa: E402
from vsan_flows.images import LocalImageService  # noqa: E402
from vsan_flows.runtime import persistence  # noqa: E402
from vsan_flows.vsphere import instances, loops  # noqa: E402
from vsan_flows.vsphere.session import connect  # noqa: E402


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class _Flows:
    """What one worker thread does: spawn, then snapshot what it spawned."""

    def __init__(self, conf, vsphere, images, backend, start, errors) -> None:
        self.conf, self.vsphere, self.images, self.backend = conf, vsphere, images, backend
        self.start, self.errors = start, errors

    def spawn_then_snapshot(self, name: str, image_id: str) -> None:
        self.start.wait()
        handles = {"vsphere": self.vsphere, "images": self.images, "backend": self.backend}
        try:
            api.spawn(self.conf, name, image_id, **handles)
            snap = self.images.create({"name": f"snap-of-{name}"})
            api.snapshot(self.conf, name, snap, **handles)
            status = self.images.show(snap).status
            if status != "active":
                self.errors.append(f"{name}: snapshot image is {status}")
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")


def main() -> None:
    args = ARGS
    rounds, threads, per_round = args["rounds"], args["threads"], args["round_timeout"]
    watchdog.backstop(args["setup_timeout"] + rounds * per_round)
    sim = SimpleNamespace(**json.load(open(args["sim_state"])))
    conf = make_conf(sim, args["wsdl_url"], args["state_dir"],
                     vsan_flows__persistence_connection=args["db_url"])
    images = LocalImageService(args["images_dir"])
    vsphere = connect(conf)
    backend = persistence.open_backend(conf)
    image_ids = args["image_ids"]
    _emit(backend=loops.active_backend(), eventlet=loops.eventlet_patched())
    fds_after_first = None
    try:
        for r in range(rounds):
            tok = uuid.uuid4().hex[:6]
            names = [f"stress-{tok}-{i:02d}" for i in range(threads)]
            errors: list[str] = []
            start = threading.Barrier(threads)
            flows = _Flows(conf, vsphere, images, backend, start, errors)
            workers = [threading.Thread(target=flows.spawn_then_snapshot,
                                        args=(n, image_ids[i % len(image_ids)]),
                                        name=f"spawn+snapshot-{n}", daemon=True)
                       for i, n in enumerate(names)]
            t0 = time.monotonic()
            for w in workers:
                w.start()
            try:
                watchdog.join_all(workers, per_round, f"round {r + 1} of {rounds}")
            except watchdog.Hang as hang:
                _emit(round=r + 1, hang=str(hang))
                sys.stdout.flush()
                os._exit(3)
            seconds = time.monotonic() - t0
            for name in names:
                instances.destroy_by_name(vsphere, name)
            if r == 0:
                fds_after_first = _fds()
            _emit(round=r + 1, seconds=round(seconds, 2), errors=errors, fds=_fds())
    finally:
        vsphere.session.logout()
    _emit(done=True, fds_after_first=fds_after_first, fds_end=_fds())


if __name__ == "__main__":
    main()
