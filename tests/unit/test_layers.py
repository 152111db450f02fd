"""Who may import whom (docs/architecture.md), checked on the source's own import statements.

Every import counts, also the lazy ones inside functions: a layer rule broken at call time is
still broken.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "vsan_flows"

# (rule, modules it applies to (prefix match on dotted names), forbidden import prefixes,
#  modules exempt from it)
RULES = [
    ("only vsphere/ speaks SOAP", ("vsan_flows",), ("oslo_vmware", "suds"),
     ("vsan_flows.vsphere",)),
    ("the runtime runs plans, it never makes them", ("vsan_flows.runtime",),
     ("vsan_flows.api", "vsan_flows.cmd", "vsan_flows.driver", "vsan_flows.nova"), ()),
    ("tasks are calls plus the shape of a result", ("vsan_flows.tasks",),
     ("vsan_flows.flows", "vsan_flows.runtime", "vsan_flows.cmd", "vsan_flows.api",
      "vsan_flows.driver", "vsan_flows.nova"), ()),
    ("flows only compose tasks", ("vsan_flows.flows",),
     ("vsan_flows.vsphere", "vsan_flows.runtime", "vsan_flows.cmd", "vsan_flows.api",
      "vsan_flows.driver", "vsan_flows.nova", "oslo_vmware"), ()),
    ("vsphere/ knows nothing above it", ("vsan_flows.vsphere",),
     ("vsan_flows.tasks", "vsan_flows.flows", "vsan_flows.runtime", "vsan_flows.cmd",
      "vsan_flows.api", "vsan_flows.driver", "vsan_flows.nova"), ()),
    ("the simulator is a test peer: only the demo uses it", ("vsan_flows",),
     ("vsan_flows.simulator",), ("vsan_flows.simulator", "vsan_flows.cmd.demo")),
    ("the base modules import no layer above them",
     ("vsan_flows.names", "vsan_flows.exceptions", "vsan_flows.redaction", "vsan_flows.vmdk",
      "vsan_flows.images", "vsan_flows.streamcheck", "vsan_flows.conf", "vsan_flows.policy",
      "vsan_flows.imagecache", "vsan_flows.ownership"),
     ("vsan_flows.vsphere", "vsan_flows.tasks", "vsan_flows.flows", "vsan_flows.runtime",
      "vsan_flows.cmd", "vsan_flows.api", "vsan_flows.driver", "vsan_flows.nova"), ()),
    ("only the nova driver imports nova (the library runs without it)", ("vsan_flows",),
     ("nova",), ("vsan_flows.nova",)),
]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``, relative ones resolved."""
    module = _module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` may import a module: count pkg.mod as well as pkg.
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    """One line per import statement that breaks a rule."""
    found: dict[tuple[str, int, str], str] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = _module_name(root, path)
        for rule, applies_to, forbidden, exempt in RULES:
            if not _under(module, applies_to) or _under(module, exempt):
                continue
            for line, name in _imports(root, path):
                where = str(path.relative_to(root))
                if _under(name, forbidden) and (where, line, rule) not in found:
                    found[where, line, rule] = f"{where}:{line}: imports {name} ({rule})"
    return sorted(found.values())


def test_the_layers_hold():
    assert violations(ROOT) == []


@pytest.mark.parametrize(("module", "line", "rule"), [
    ("runtime/runner.py", "from oslo_vmware import exceptions as vexc", "speaks SOAP"),
    ("runtime/runner.py", "from vsan_flows import api", "never makes them"),
    ("tasks/disk.py", "from ..runtime import runner", "calls plus the shape"),
    ("flows/spawn.py", "from vsan_flows.vsphere import instances", "only compose"),
    ("driver.py", "import suds.client", "speaks SOAP"),
    ("api.py", "from vsan_flows.simulator import launcher", "test peer"),
    ("vsphere/vm.py", "from vsan_flows.tasks import disk", "nothing above it"),
    ("imagecache.py", "from vsan_flows.vsphere import instances", "no layer above"),
    ("api.py", "from nova import exception", "only the nova driver imports nova"),
    ("nova/runs.py", "from oslo_vmware import vim_util", "speaks SOAP"),
    ("tasks/root_disk.py", "from vsan_flows.nova import errors", "calls plus the shape"),
])
def test_a_planted_violation_is_caught(tmp_path, module, line, rule):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / PACKAGE, copy / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / PACKAGE / module
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    found = violations(copy)
    assert len(found) == 1 and rule in found[0] and module in found[0], found
