"""``stream.py`` with every hash check switched off: what verification costs on this machine.

Not a way to run the library: it patches, in this process only, the two places that hash the
bytes of an import (the image's recorded hash in ``StreamTap``, Glance's in its download) and
then runs ``stream.py`` with the arguments given, e.g.::

    .venv/bin/python benchmarks/verification_off.py --fixture-dir DIR --sections import,glance

Compare its ratios with a normal ``stream.py`` run made just before or after on the same
machine: the difference is the verification's share (benchmarks/README.md, "Where the goals
stand").
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _switch_hashes_off() -> None:
    from vsan_flows import glance, streamcheck

    tap_init = streamcheck.StreamTap.__init__

    def no_expected_hash(self, *args, expected_hash=None, **kwargs):
        tap_init(self, *args, expected_hash=None, **kwargs)

    download_init = glance._Download.__init__

    def no_download_hash(self, *args, **kwargs):
        kwargs["hash_algo"] = None
        download_init(self, *args, **kwargs)

    streamcheck.StreamTap.__init__ = no_expected_hash
    glance._Download.__init__ = no_download_hash


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    _switch_hashes_off()
    sys.argv = [str(HERE / "stream.py"), *sys.argv[1:]]
    runpy.run_path(str(HERE / "stream.py"), run_name="__main__")
