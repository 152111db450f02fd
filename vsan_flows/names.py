"""Every name a stored flow depends on, written once.

A persisted flow is matched back to the code that resumes it by names only: atom names (TaskFlow
keys each atom's state and result by them), store keys (the facts a flow starts with) and the
names of the transient live handles (injected on every host, never stored). A name that changes
silently turns a resumable flow into one that starts over, so they live here, spelled out, and
not derived from where a class happens to sit (TaskFlow's default atom name is the dotted class
path, which a refactoring moves).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- live handles
# Injected as TaskFlow transient values (memory only), rebuilt on every host.
VSPHERE = "vsphere"
IMAGES = "images"
POLICY = "policy"
IMAGE_LOCKS = "image_locks"      # one import per image per datastore (imagelocks)
FENCE = "fence"                  # may this engine still act for its flow (runtime.fencing)
TRANSIENTS = (VSPHERE, IMAGES, POLICY, IMAGE_LOCKS, FENCE)

# --------------------------------------------------------------------------- store keys
# The facts every flow starts with (JSON, persisted).
INSTANCE_NAME = "instance_name"
IMAGE_ID = "image_id"
FLOW_TOKEN = "flow_token"
IMPORT_VM_NAME = "import_vm_name"          # spawn
SNAPSHOT_NAME = "snapshot_name"            # snapshot
CLONE_VM_NAME = "clone_vm_name"            # snapshot

# --------------------------------------------------------------------------- flows
SPAWN_FLOW = "spawn"
SNAPSHOT_FLOW = "snapshot"
IMPORT_SUBFLOW = "import-image"
EXPORT_SUBFLOW = "export-disk"
CACHE_AND_LINK_SUBFLOW = "cache-and-link"   # lookup .. link, under CACHE_ENTRY_RETRY

# --------------------------------------------------------------------------- atoms
VALIDATE_IMAGE = "ValidateStreamOptimizedImage"
PICK_DATASTORE = "PickVsanDatastore"
LOOKUP_IMAGE_CACHE = "LookupImageCache"
IMPORT_RETRY = "import-retry"
CACHE_ENTRY_RETRY = "cache-entry-retry"
CREATE_IMPORT_LEASE = "CreateImportLease"
STREAM_DISK_TO_LEASE = "StreamDiskToLease"
COMPLETE_IMPORT_LEASE = "CompleteLease"
REGISTER_SHADOW_VM = "RegisterShadowVM"
CLONE_LINKED_DISK = "CloneLinkedDisk"
POWER_ON_INSTANCE = "PowerOnInstance"

RESERVE_IMAGE = "ReserveImage"
READ_INSTANCE = "ReadInstance"
CREATE_VM_SNAPSHOT = "CreateVmSnapshot"
CLONE_FROM_SNAPSHOT = "CloneFromSnapshot"
EXPORT_RETRY = "export-retry"
CREATE_EXPORT_LEASE = "CreateExportLease"
STREAM_DISK_TO_IMAGE = "StreamDiskToImage"
COMPLETE_EXPORT_LEASE = "CompleteLease"
CLEANUP = "Cleanup"

# Atom names that flows persisted before names were explicit (TaskFlow's default: the dotted
# class path at the time). Flows stored with them are renamed on load, so they still resume.
LEGACY_ATOM_NAMES = {
    f"vsan_flows.tasks.{module}.{cls}": cls
    for module, classes in {
        "image": ("ValidateStreamOptimizedImage",),
        "datastore": ("PickVsanDatastore",),
        "shadow_vm": ("LookupImageCache", "RegisterShadowVM"),
        "lease": ("CreateImportLease", "CreateExportLease", "CompleteLease"),
        "stream": ("StreamDiskToLease", "StreamDiskToImage"),
        "disk": ("CloneLinkedDisk", "PowerOnInstance"),
        "snapshot": ("ReserveImage", "ReadInstance", "CreateVmSnapshot", "CloneFromSnapshot"),
        "cleanup": ("Cleanup",),
    }.items()
    for cls in classes
}

# --------------------------------------------------------------------------- nova's spawn
# nova builds the VM; this flow caches the image and gives the VM its root disk.
NOVA_ROOT_DISK_FLOW = "nova-root-disk"
LOCATE_INSTANCE_VM = "LocateInstanceVM"
ATTACH_LINKED_ROOT_DISK = "AttachLinkedRootDisk"
