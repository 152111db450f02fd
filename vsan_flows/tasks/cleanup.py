"""What is temporary goes once the image is safe: the export clone and the VM snapshot."""

from __future__ import annotations

from taskflow import task

from vsan_flows.vsphere import exports, instances


class Cleanup(task.Task):
    """Destroy the temporary clone, then remove the snapshot (the clone's disk hangs off it).

    Both steps look things up by name and skip what is already gone, so a re-run after a
    crash finishes the job.
    """

    def execute(self, vsphere, instance: dict, clone_vm_name: str, snapshot_name: str) -> None:
        instances.destroy_by_name(vsphere, clone_vm_name)
        exports.remove_snapshot(vsphere, instance["vm"], snapshot_name)
