"""The Retries: around import/export subflows (retry what a new lease can fix, nothing else),
and around cache-lookup-to-link (look again when the cache entry vanished under the link)."""

from __future__ import annotations

from taskflow import retry

from vsan_flows import exceptions

# Failures a fresh lease cannot fix: retrying would only repeat them (and their cost).
NOT_RETRYABLE = (
    exceptions.InvalidImage,
    exceptions.ImageNotFound,
    exceptions.ImageAlreadyHasData,
    exceptions.ImageServiceRefused,  # Glance's 4xx: quota, format inspector, auth
    exceptions.NoSuitableDatastore,
    exceptions.ConfigError,
    exceptions.VCenterAuthError,
    exceptions.InstanceNotFound,
    # A transfer that ran out of image_transfer_timeout_secs would only run out again: with
    # the defaults, retrying would keep nova waiting 4 x 2 hours before it hears anything.
    exceptions.TransferTimeout,
)


class TransferRetry(retry.Times):
    """Revert the subflow (abort the lease, destroy the half-import) and try again.

    A failure restored from the database after a restart may carry no exception object, only
    type names; ``Failure.check`` works on those names, and an unknown failure counts as
    retryable, because the revert looks at vCenter and cleans whatever is really there.
    """

    def on_failure(self, history, *args, **kwargs):
        if len(history) and any(history.caused_by(cls, index=-1) for cls in NOT_RETRYABLE):
            return retry.REVERT_ALL
        return super().on_failure(history, *args, **kwargs)


#: How many more times a spawn looks the cache up and links again after its cache entry
#: vanished under it. An entry evicted under one spawn twice in a row means something keeps
#: removing entries in use; the spawn then fails with CacheEntryGone instead of importing on.
CACHE_ENTRY_RETRIES = 2


class CacheEntryRetry(retry.Times):
    """Around LookupImageCache .. the link step: retry only when the entry vanished.

    A link step raises CacheEntryGone when the cache entry it links to was evicted (or
    deleted) after LookupImageCache found it. Reverting the subflow removes what the attempt
    made (the instance VM or root disk, a cache entry it created, a half-import and its lease)
    and releases the image lock; the lookup then runs again and finds a newer entry or imports
    the image anew. Every other failure (no space, a bad spec, an import that failed for good)
    reverts the whole flow at once, as before: looking the cache up again cannot fix it.
    Decided by type name, so a failure restored from the database decides the same.
    """

    def on_failure(self, history, *args, **kwargs):
        if len(history) and history.caused_by(exceptions.CacheEntryGone, index=-1) and \
                super().on_failure(history, *args, **kwargs) == retry.RETRY:
            return retry.RETRY
        return retry.REVERT_ALL  # the whole spawn, as a failure outside any Retry would
