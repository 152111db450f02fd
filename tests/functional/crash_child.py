"""A compute process that dies: runs one spawn or snapshot and SIGKILLs itself on cue.

Used by test_crash_resume.py as a real child process (``python -m
tests.functional.crash_child JSON``). The cue is an atom name and state ("before" = the atom
just started RUNNING, "after" = it finished), "transfer" = at the first progress report
of the import's or the export's stream task (bytes have moved, not all of them), or
"call:<Method>" = right after vCenter answered that SOAP call (its first time), before the
answer is handled: vCenter has acted, nothing of it is saved. With ``evict_after_lookup`` the
spawn's cache entry is evicted (as another host's image-cache pass would) right after its
lookup found it, before the cue.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import SimpleNamespace

from taskflow import states

from tests.functional.conftest import make_conf
from vsan_flows import api
from vsan_flows.images import LocalImageService


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


def _kill_mid_transfer(engine):
    """Die at the first progress report of a transfer task: bytes have moved, not all."""
    from taskflow import task as tf_task

    def on_progress(event_type, details):
        if 0.0 < float(details.get("progress") or 0.0) < 1.0:
            _die()

    class _Reg:
        def __enter__(self):
            for atom in engine.compilation.execution_graph.nodes:
                if atom.name.endswith(("StreamDiskToLease", "StreamDiskToImage")):
                    atom.notifier.register(tf_task.EVENT_UPDATE_PROGRESS, on_progress)

        def __exit__(self, *exc):
            return False

    return _Reg()


def _kill_after_call(method: str):
    """Die as soon as vCenter's answer to ``method`` is back in this process."""
    from oslo_vmware import api as vapi

    original = vapi.VMwareAPISession.invoke_api

    def invoke_api(self, module, called, *args, **kwargs):
        result = original(self, module, called, *args, **kwargs)
        if called == method:
            _die()
        return result

    vapi.VMwareAPISession.invoke_api = invoke_api
    return ()


def _evict_after_lookup(conf, state_dir: str):
    """Another host's image-cache pass, run the first time LookupImageCache has found the
    entry (so the spawn links to an entry that is gone): cache_aging with that host's own
    import locks, aging on, no minimum age."""
    from vsan_flows.imagelocks import ImageLocks
    from vsan_flows.nova import cache_aging
    from vsan_flows.vsphere.session import connect

    done: list[dict] = []

    def make(engine):
        def on_event(state, details):
            if details.get("task_name") == "LookupImageCache" and state == states.SUCCESS \
                    and not done:
                locks = ImageLocks(os.path.join(state_dir, "other-host-locks"))
                done.append(cache_aging.age(connect(conf), locks, [], enabled=True,
                                            min_age_s=0))
                assert done[0]["evicted"], done

        class _Reg:
            def __enter__(self):
                engine.atom_notifier.register("*", on_event)

            def __exit__(self, *exc):
                return False

        return _Reg()

    return make


def main() -> None:
    args = json.loads(sys.argv[1])
    sim = SimpleNamespace(**json.load(open(args["sim_state"])))
    conf = make_conf(sim, args["wsdl_url"], args["state_dir"],
                     vsan_flows__persistence_connection=args["db_url"],
                     vsan_flows__import_retries=2, **args.get("conf", {}))
    # Without an images_dir the configured service is used (Glance), as the caller's user.
    images = LocalImageService(args["images_dir"]) if args.get("images_dir") else None
    if args["cue"] == "none":  # a live owner: runs to the end (test_live_owner.py)
        listeners = ()
    elif args["cue"] == "transfer":
        listeners = (_kill_mid_transfer,)
    elif args["cue"].startswith("call:"):
        listeners = _kill_after_call(args["cue"].split(":", 1)[1])
    else:
        atom, when = args["cue"].split(":")
        listeners = (_kill_on_atom(atom, when),)
    if args.get("evict_after_lookup"):  # test_cache_eviction_race.py
        listeners = (_evict_after_lookup(conf, args["state_dir"]), *listeners)
    op = api.spawn if args["op"] == "spawn" else api.snapshot
    op(conf, args["instance"], args["image_id"], images=images, listeners=listeners,
       context=args.get("context"))
    print("FINISHED WITHOUT BEING KILLED")


if __name__ == "__main__":
    main()
