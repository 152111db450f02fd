"""The part spawn and nova's root-disk flow share: put the image into the cache if it is not.

Import under a Retry (a fresh lease for what a new lease can fix), then register the import as
the cache entry. The lookup before it decides whether the import tasks do anything.
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.retry import TransferRetry
from vsan_flows.tasks.lease import CompleteLease, CreateImportLease
from vsan_flows.tasks.shadow_vm import LookupImageCache, RegisterShadowVM
from vsan_flows.tasks.stream import StreamDiskToLease


def ensure_cached(retries: int) -> list:
    """LookupImageCache, the import subflow under its Retry, RegisterShadowVM: in order."""
    importing = linear_flow.Flow(names.IMPORT_SUBFLOW,
                                 retry=TransferRetry(attempts=retries + 1,
                                                     name=names.IMPORT_RETRY,
                                                     revert_all=True))
    importing.add(CreateImportLease(name=names.CREATE_IMPORT_LEASE),
                  StreamDiskToLease(name=names.STREAM_DISK_TO_LEASE),
                  CompleteLease(name=names.COMPLETE_IMPORT_LEASE,
                                rebind={"lease": "import_lease"}))
    return [LookupImageCache(name=names.LOOKUP_IMAGE_CACHE), importing,
            RegisterShadowVM(name=names.REGISTER_SHADOW_VM)]
