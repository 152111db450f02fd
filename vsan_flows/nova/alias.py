"""Make ``compute_driver = vsan_flows.nova.driver.VsanVCDriver`` loadable by nova 34.

nova 34's ``load_compute_driver`` imports ``'nova.virt.' + compute_driver`` and nothing else
(older releases also tried the bare name, which is how out-of-tree drivers such as
compute-hyperv's were loaded). This finder answers for ``nova.virt.vsan_flows.*`` with thin
modules that re-export ``vsan_flows.*``, so the class nova gets is our class itself.

It is installed at interpreter start by ``vsan_flows_nova.pth`` (tools/test-setup.sh and the
deployment docs put that one-line file into site-packages) and imports nothing heavy: it is
read by every Python process of that environment.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PREFIX = "nova.virt.vsan_flows"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == PREFIX or fullname.startswith(PREFIX + "."):
            real = "vsan_flows" + fullname[len(PREFIX):]
            found = importlib.util.find_spec(real)
            if found is None:
                return None
            return importlib.util.spec_from_loader(
                fullname, self, is_package=found.submodule_search_locations is not None)
        return None

    def create_module(self, spec):
        return None  # the default: a fresh module object

    def exec_module(self, module) -> None:
        real = importlib.import_module("vsan_flows" + module.__name__[len(PREFIX):])
        module.__dict__.update({k: v for k, v in vars(real).items()
                                if not k.startswith("__")})
        module.__doc__ = real.__doc__


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())


install()
