"""The Retry around import/export subflows: retry what a new lease can fix, nothing else."""

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
