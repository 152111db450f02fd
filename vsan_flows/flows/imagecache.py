"""The part spawn and nova's root-disk flow share: put the image into the cache if it is not.

Import under a Retry (a fresh lease for what a new lease can fix), then register the import as
the cache entry. The lookup before it decides whether the import tasks do anything. The
step that links a disk to the entry joins them under a second Retry (:func:`cached_and_linked`):
an entry evicted between lookup and link sends the flow back to the lookup.
"""

from __future__ import annotations

from taskflow import task
from taskflow.patterns import linear_flow

from vsan_flows import names
from vsan_flows.flows.retry import CACHE_ENTRY_RETRIES, CacheEntryRetry, TransferRetry
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


def cached_and_linked(retries: int, link: task.Task) -> linear_flow.Flow:
    """:func:`ensure_cached` then ``link`` (the step that links a disk to the cache entry),
    under a CacheEntryRetry: an entry evicted between the lookup and the link is looked up
    (and imported) again instead of failing the spawn."""
    flow = linear_flow.Flow(names.CACHE_AND_LINK_SUBFLOW,
                            retry=CacheEntryRetry(attempts=CACHE_ENTRY_RETRIES + 1,
                                                  name=names.CACHE_ENTRY_RETRY))
    flow.add(*ensure_cached(retries), link)
    return flow
