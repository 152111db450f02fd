"""A nova-compute process that dies between the two steps of an image-cache eviction.

``python nova_cache_child.py SETUP_JSON``: our driver loaded as nova loads it, then nova's
image-cache pass with a zero minimum age; the moment the pass is about to destroy an entry it
has renamed out of the cache, the process SIGKILLs itself (a crash at the worst moment, not an
exception: nothing after it runs).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.functional import nova_scenario  # noqa: E402


def main(setup_file: str) -> None:
    setup = json.loads(Path(setup_file).read_text())
    conf = nova_scenario.init_nova(setup["conf_file"])
    driver = nova_scenario.load_driver(conf)
    driver.init_host(conf.host)
    conf.set_override("remove_unused_original_minimum_age_seconds", 0, "image_cache")


    from vsan_flows.nova import cache_aging

    def crash(*args, **kwargs):
        print("KILLED-MID-EVICTION", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    cache_aging.instances.destroy = crash
    driver.age_vsan_image_cache([])
    print("PASS-ENDED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
