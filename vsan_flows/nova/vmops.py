"""Where nova's spawn hands the image and root-disk steps to our flow: the private seams.

nova 34's ``VMwareVMOps.spawn`` builds the VM (flavor, NICs, identity, folder), then calls
``_fetch_image_if_missing(context, vi)`` and ``_use_disk_image_as_linked_clone(vm_ref, vi)``
(or ``..._as_full_clone``), then ephemeral/swap disks, config drive, rename and power-on.
For a streamOptimized VMDK on a datastore our flows serve, the first runs our root-disk flow
(image cache + linked root disk of the flavor's size) and the others do nothing; everything
else is nova's own code. These are private methods: their names and signatures are pinned to
the nova releases in ``vsan_flows.nova.SUPPORTED_NOVA`` (tests/unit/test_nova_seams.py).
"""

from __future__ import annotations

from nova.virt.vmwareapi import constants, vmops

from vsan_flows import exceptions
from vsan_flows.nova import errors

#: The private VMwareVMOps methods overridden here, with the parameters nova calls them with.
SEAMS = {
    "_fetch_image_if_missing": ("self", "context", "vi"),
    "_use_disk_image_as_linked_clone": ("self", "vm_ref", "vi"),
    "_use_disk_image_as_full_clone": ("self", "vm_ref", "vi"),
}


class VsanVMOps(vmops.VMwareVMOps):
    """nova's VMOps, with the image-cache and root-disk steps as our flow where it applies."""

    #: set by :func:`adopt`
    runs = None

    def _ours(self, vi) -> bool:
        return (vi.ii.file_type == constants.DISK_FORMAT_VMDK
                and vi.ii.disk_type == constants.DISK_TYPE_STREAM_OPTIMIZED
                and not vi.ii.is_iso
                and self.runs.runs_on(vi.datastore.ref))

    def _fetch_image_if_missing(self, context, vi):
        if not self._ours(vi):
            return super()._fetch_image_if_missing(context, vi)
        try:
            self.runs.root_disk(context, vi.instance.uuid, vi.ii.image_id, vi.root_gb)
        except exceptions.VsanFlowsError as exc:
            raise errors.for_spawn(exc, instance_uuid=vi.instance.uuid,
                                   image_id=vi.ii.image_id) from exc
        return None

    def _use_disk_image_as_linked_clone(self, vm_ref, vi):
        if not self._ours(vi):
            return super()._use_disk_image_as_linked_clone(vm_ref, vi)
        return None  # the root-disk flow attached it

    def _use_disk_image_as_full_clone(self, vm_ref, vi):
        # On vSAN the instance always links to the cache entry: that is the point of the cache.
        if not self._ours(vi):
            return super()._use_disk_image_as_full_clone(vm_ref, vi)
        return None


def adopt(ops: vmops.VMwareVMOps, runs) -> VsanVMOps:
    """Turn nova's VMOps object into ours in place.

    Building a second VMOps would repeat nova's constructor (compute API, image cache, its
    own locks) and leave the driver's other parts pointing at the first; changing the class of
    the one nova built keeps every reference nova holds valid.
    """
    ops.__class__ = VsanVMOps
    ops.runs = runs
    return ops
