"""Find what a piece of work left behind in the simulator: VMs, datastore files, open leases.

"A leaked VM, disk file or lease is a bug". The functional suite takes a snapshot
before every test and compares after it; anything new that the test did not declare as meant
to stay is a leak and fails the test.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from vsan_flows.simulator.control import SimulatorControl


@dataclass(frozen=True)
class InventorySnapshot:
    vms: frozenset[str]
    files: frozenset[str]
    leases: frozenset[str]


@dataclass
class LeakChecker:
    """Compares the simulator's inventory against a baseline.

    ``allow_vm`` / ``allow_files`` take fnmatch patterns for things a test creates on purpose
    (an instance VM it spawned, the image cache) so they are not counted as leaks.
    """

    control: SimulatorControl
    allowed_vms: list[str] = field(default_factory=list)
    allowed_files: list[str] = field(default_factory=list)

    def snapshot(self) -> InventorySnapshot:
        status = self.control.status()
        return InventorySnapshot(
            vms=frozenset(vm["name"] for vm in status.get("vms") or []),
            files=frozenset(f"[{f['datastore']}] {f['path']}" for f in self.control.files()),
            # Open = still holding its VM; one that failed or expired is over.
            leases=frozenset(
                lease["moref"] for lease in status.get("leases") or []
                if lease.get("state") in ("initializing", "ready")
            ),
        )

    def allow_vm(self, pattern: str) -> None:
        self.allowed_vms.append(pattern)

    def allow_files(self, pattern: str) -> None:
        self.allowed_files.append(pattern)

    def leaks(self, before: InventorySnapshot) -> list[str]:
        """Human-readable lines, one per leaked object; empty when nothing leaked."""
        after = self.snapshot()
        found = []
        for vm in sorted(after.vms - before.vms):
            if not any(fnmatch.fnmatchcase(vm, p) for p in self.allowed_vms):
                found.append(f"VM {vm!r} left registered")
        for path in sorted(after.files - before.files):
            if not any(fnmatch.fnmatchcase(path, p) for p in self.allowed_files):
                found.append(f"file {path} left on the datastore")
        for lease in sorted(after.leases - before.leases):
            found.append(f"lease {lease} left open")
        return found
