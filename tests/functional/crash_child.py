"""A compute process that dies: runs one spawn or snapshot and SIGKILLs itself on cue.

Used by test_crash_resume.py as a real child process (``python -m
tests.functional.crash_child JSON``). The cue is an atom name and state ("before" = the atom
just started RUNNING, "after" = it finished), or "transfer" = once the simulator shows bytes
arriving for the import or leaving for the export.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace

from taskflow import states

from tests.functional.conftest import make_conf
from vsan_flows import api
from vsan_flows.images import LocalImageService
from vsan_flows.simulator.control import SimulatorControl


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_atom(atom: str, when: str):
    wanted = states.RUNNING if when == "before" else states.SUCCESS

    def make(engine):
        def on_event(state, details):
            if details.get("task_name", "").endswith(atom) and state == wanted:
                _die()

        class _Reg:
            def __enter__(self):
                engine.atom_notifier.register("*", on_event)

            def __exit__(self, *exc):
                return False

        return _Reg()

    return make


def _kill_mid_transfer(control: SimulatorControl) -> None:
    def watch():
        while True:
            for lease in control.status().get("leases") or []:
                moved = sum((lease.get("transferred") or {}).values())
                if moved > 0:
                    _die()
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    args = json.loads(sys.argv[1])
    sim = SimpleNamespace(**json.load(open(args["sim_state"])))
    conf = make_conf(sim, args["wsdl_url"], args["state_dir"],
                     vsan_flows__persistence_connection=args["db_url"],
                     vsan_flows__import_retries=2)
    images = LocalImageService(args["images_dir"])
    listeners = ()
    if args["cue"] == "transfer":
        _kill_mid_transfer(SimulatorControl(sim.control_url))
    else:
        atom, when = args["cue"].split(":")
        listeners = (_kill_on_atom(atom, when),)
    op = api.spawn if args["op"] == "spawn" else api.snapshot
    op(conf, args["instance"], args["image_id"], images=images, listeners=listeners)
    print("FINISHED WITHOUT BEING KILLED")


if __name__ == "__main__":
    main()
