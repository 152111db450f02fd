"""Another compute process on the same host: logs in, says ``ready``, spawns on ``go``.

Used by test_image_lock.py (``python -m tests.functional.spawn_child JSON``): the processes
share the parent's state_dir, so they share its persistence file and its image import locks.
Prints one JSON line: the spawn's shadow VM, or the error.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from tests.functional.conftest import make_conf
from vsan_flows import api
from vsan_flows.images import LocalImageService
from vsan_flows.vsphere.session import connect


def main() -> None:
    args = json.loads(sys.argv[1])
    sim = SimpleNamespace(**json.load(open(args["sim_state"])))
    conf = make_conf(sim, args["wsdl_url"], args["state_dir"], **args.get("conf", {}))
    images = LocalImageService(args["images_dir"])
    vsphere = connect(conf)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    try:
        result = api.spawn(conf, args["instance"], args["image_id"], vsphere=vsphere,
                           images=images)
        print(json.dumps({"shadow": result["shadow_vm"]["name"]}), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        vsphere.close()


if __name__ == "__main__":
    main()
