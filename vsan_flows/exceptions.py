"""One error hierarchy for vsan_flows.

Every error is raised to a person: an operator reading a nova fault, an admin looking at a flow
in REVERT_FAILURE. So each message says what was wrong and what to do about it, and each class
keeps the facts it was built from as attributes so code can react without parsing text.

Secrets stay out by construction: no constructor takes a password, cookie or lease ticket, so
none can end up in a message, a log line or a TaskFlow failure persisted to the database.

TaskFlow pickles and copies failures (retries, parallel engines, worker-based engines), and the
default ``Exception`` pickling calls ``cls(*args)`` which breaks for keyword-built errors; the
base class therefore pickles as (class, message, attributes) instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vsan_flows.redaction import redact

STREAM_OPTIMIZED_FIX = (
    "Convert the disk with `qemu-img convert -O vmdk -o subformat=streamOptimized <source> "
    "<name>.vmdk`, upload it with disk_format=vmdk and set the image property "
    "vmware_disktype=streamOptimized."
)


def _restore(cls: type[VsanFlowsError], message: str, state: dict[str, Any]) -> VsanFlowsError:
    """Rebuild an error without calling its constructor (see the module docstring)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


def format_bytes(num_bytes: int | None) -> str:
    """Bytes as the exact count plus a human-readable MiB/GiB figure."""
    if num_bytes is None:
        return "unknown"
    if abs(num_bytes) >= 1 << 30:
        return f"{num_bytes} bytes ({num_bytes / (1 << 30):.2f} GiB)"
    if abs(num_bytes) >= 1 << 20:
        return f"{num_bytes} bytes ({num_bytes / (1 << 20):.1f} MiB)"
    return f"{num_bytes} bytes"


class VsanFlowsError(Exception):
    """Base of every error this library raises on purpose.

    Its text is scrubbed of secret-shaped parts (lease URLs carry a transfer ticket; URLs may
    carry a password) when it is made: an error's text is stored with the failed atom, handed
    to nova, written to jobboard records and logs, and no later filter sees all of those.
    """

    def __init__(self, message: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "message"}
        state["message"] = self.message
        return (_restore, (type(self), self.message, state))


class ConfigError(VsanFlowsError):
    """A configuration value cannot work; names the option so it can be fixed."""

    def __init__(self, option: str, problem: str, fix: str | None = None) -> None:
        self.option = option
        self.problem = problem
        msg = f"Invalid configuration {option}: {problem}."
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


# --------------------------------------------------------------------------- images


class ImageError(VsanFlowsError):
    """Something about an image (its bytes or its record) stops the operation."""


class InvalidImage(ImageError):
    """The image's bytes or metadata are not a deployable streamOptimized VMDK.

    Raised before any vCenter object exists, so a bad image costs nothing to clean up.
    """

    def __init__(
        self,
        reason: str,
        *,
        image_id: str | None = None,
        found: str | None = None,
        required: str = "a streamOptimized VMDK (disk_format=vmdk, "
        "vmware_disktype=streamOptimized)",
        fix: str = STREAM_OPTIMIZED_FIX,
    ) -> None:
        self.image_id = image_id
        self.reason = reason
        self.found = found
        self.required = required
        subject = f"Image {image_id}" if image_id else "The image data"
        msg = f"{subject} cannot be deployed: {reason}."
        if found:
            msg += f" Found: {found}."
        msg += f" Required: {required}. {fix}"
        super().__init__(msg)


class ImageNotFound(ImageError):
    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        super().__init__(
            f"Image {image_id} does not exist in the image service. Check the image id "
            "(it may have been deleted) and retry with an existing image."
        )


class ImageAlreadyHasData(ImageError):
    """Uploading would overwrite an image that already went active; images are immutable."""

    def __init__(self, image_id: str, status: str = "active") -> None:
        self.image_id = image_id
        self.status = status
        super().__init__(
            f"Image {image_id} already has data (status {status}); image data is immutable. "
            "Create a new image record and upload to that one."
        )


class ImageServiceRefused(ImageError):
    """The image service answered with a refusal that retrying cannot change (4xx).

    ``status`` is the HTTP status Glance gave, ``detail`` its own words; the message adds
    what the operator can do, which differs per status.
    """

    def __init__(self, image_id: str | None, operation: str, status: int, detail: str,
                 fix: str) -> None:
        self.image_id = image_id
        self.operation = operation
        self.status = status
        self.detail = detail
        subject = f"image {image_id}" if image_id else "an image"
        super().__init__(
            f"Glance refused to {operation} {subject} (HTTP {status}: {detail}). {fix}")


class ImageServiceUnavailable(ImageError):
    """The image service could not be reached or failed (5xx, connection lost): retryable."""

    def __init__(self, image_id: str | None, operation: str, reason: str) -> None:
        self.image_id = image_id
        self.operation = operation
        self.reason = reason
        subject = f"image {image_id}" if image_id else "an image"
        super().__init__(
            f"Glance failed to {operation} {subject}: {reason}. Transfers are retried with "
            "[vsan_flows] import_retries; if it persists, check that glance-api is running and "
            "reachable at the [glance] endpoint (endpoint_override or the service catalog).")


# --------------------------------------------------------------------------- placement


class NoSuitableDatastore(VsanFlowsError):
    """No candidate datastore passed the policy; every candidate and its reason is listed.

    One line per datastore because the operator's next step depends on which rule bit
    (wrong type vs. full vs. regex typo), and naming only the first would hide the rest.
    """

    def __init__(
        self, rejected: Iterable[tuple[str, str]], required_bytes: int | None = None
    ) -> None:
        self.rejected = [(str(name), str(reason)) for name, reason in rejected]
        self.required_bytes = required_bytes
        need = f" for a disk of {format_bytes(required_bytes)}" if required_bytes else ""
        if not self.rejected:
            msg = (
                f"No datastore available{need}: the cluster reports no datastores. Check "
                "[vmware] cluster_name and that datastores are mounted on the cluster's hosts."
            )
        else:
            lines = "; ".join(f"'{name}': {reason}" for name, reason in self.rejected)
            msg = (
                f"No suitable datastore{need} among {len(self.rejected)} candidate(s): {lines}. "
                "Fix the datastores or adjust [vmware] datastore_types / datastore_regex."
            )
        super().__init__(msg)


# --------------------------------------------------------------------------- vSphere


class VSphereError(VsanFlowsError):
    """vCenter refused or failed an operation."""


class VCenterUnreachable(VSphereError):
    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(
            f"Cannot reach vCenter at {host}:{port}: {reason}. Check [vmware] host_ip/host_port, "
            "the network path and TLS settings (ca_file / insecure)."
        )


class VCenterCertificateError(VSphereError):
    """vCenter's TLS certificate failed verification: final, never retried."""

    def __init__(self, host: str, port: int, reason: str, ca_file: str | None) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        trusted = f"the CA bundle {ca_file}" if ca_file else "the system's trusted CAs"
        super().__init__(
            f"vCenter at {host}:{port} presented a TLS certificate that {trusted} do not "
            f"vouch for ({reason}). Set [vmware] ca_file to the CA bundle that signed it "
            "(or, on a test rig only, [vmware] insecure = true)."
        )


class VCenterAuthError(VSphereError):
    def __init__(self, host: str, username: str | None) -> None:
        self.host = host
        self.username = username
        super().__init__(
            f"vCenter at {host} rejected the login for user {username!r}. Check [vmware] "
            "host_username and host_password, and that the account is not locked."
        )


class CacheEntryGone(VSphereError):
    """The image cache entry a spawn was linking to went away under it.

    Another host's cache aging evicted it (renamed it ``vsanflows-evicting-...``, then destroyed
    it), or a person deleted the shadow VM, between the spawn's lookup and its link. The spawn
    undoes its link and looks the cache up again (importing the image anew if needed), a
    bounded number of times (flows/retry.CacheEntryRetry); this error reaches the user only
    when the entry kept vanishing that often.
    """

    def __init__(self, entry: str, image_id: str, what: str) -> None:
        self.entry = entry
        self.image_id = image_id
        self.what = what
        super().__init__(
            f"the image cache entry {entry} of image {image_id} {what} while this spawn linked "
            "to it (evicted by image-cache aging, or deleted). The spawn looks the cache up "
            "again and links anew (importing the image if needed) a few times before it gives "
            "up with this error; if it does, retry the spawn, and check what removes image "
            "cache VMs (the [image_cache] settings of the compute hosts sharing this vCenter).")


class LeaseError(VSphereError):
    """An HttpNfcLease (import or export) failed or is in an unusable state."""

    def __init__(self, message: str, *, lease: str | None = None) -> None:
        self.lease = lease
        super().__init__(message)


class TransferError(VSphereError):
    """Moving disk bytes between the image service and a lease failed."""


class TransferTimeout(TransferError):
    def __init__(
        self,
        what: str,
        timeout_secs: float,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        self.what = what
        self.timeout_secs = timeout_secs
        self.bytes_done = bytes_done
        self.bytes_total = bytes_total
        progress = ""
        if bytes_done is not None:
            progress = f" after {format_bytes(bytes_done)}"
            if bytes_total:
                progress += f" of {format_bytes(bytes_total)}"
        super().__init__(
            f"{what} did not finish within {timeout_secs:g} s{progress} and was aborted. Raise "
            "[vmware] image_transfer_timeout_secs for large images or slow links."
        )


class IncompleteTransfer(TransferError):
    """Fewer (or more) bytes arrived than the source promised: the result must not be used."""

    def __init__(
        self,
        what: str,
        *,
        bytes_sent: int,
        bytes_expected: int | None,
        bytes_stored: int | None = None,
    ) -> None:
        self.what = what
        self.bytes_sent = bytes_sent
        self.bytes_expected = bytes_expected
        self.bytes_stored = bytes_stored
        stored = f", {format_bytes(bytes_stored)} stored" if bytes_stored is not None else ""
        super().__init__(
            f"{what} is incomplete: {format_bytes(bytes_sent)} sent, "
            f"{format_bytes(bytes_expected)} expected{stored}. The partial result was "
            "discarded; retry the operation, and if the source is shorter than its recorded "
            "size, re-upload the image."
        )


# --------------------------------------------------------------------------- other


class InstanceNotFound(VsanFlowsError):
    def __init__(self, instance: str) -> None:
        self.instance = instance
        super().__init__(
            f"Instance {instance} has no VM in vCenter. It may have been deleted or never "
            "created; check the instance in nova and vCenter's inventory."
        )


class ImageLockTimeout(VsanFlowsError):
    """Another spawn kept importing this image longer than we may wait."""

    def __init__(self, image_id: str, timeout_secs: float, where: str = "on this host") -> None:
        self.image_id = image_id
        self.timeout_secs = timeout_secs
        super().__init__(
            f"Waited {timeout_secs:g} s for another spawn's import of image {image_id} {where} "
            "to finish; nothing was created. Retry the spawn, or raise [vsan_flows] "
            "image_lock_timeout if imports of this image take longer."
        )


class ImageLockUnavailable(VsanFlowsError):
    """The cross-host import lock could not be taken: ZooKeeper did not answer."""

    def __init__(self, image_id: str, hosts: str, cause: BaseException) -> None:
        self.image_id = image_id
        super().__init__(
            f"could not take the import lock of image {image_id} in ZooKeeper at {hosts} "
            f"({type(cause).__name__}: {cause or 'no answer'}); nothing was created. Check "
            "that ZooKeeper runs there, or correct [vsan_flows] jobboard_hosts."
        )


class InvalidInput(VsanFlowsError):
    """A caller's argument cannot be used (refused at the edge, before anything is stored)."""

    def __init__(self, what: str, value: object, rule: str) -> None:
        self.what = what
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        super().__init__(f"Invalid {what} {shown}: {rule}.")


class FlowError(VsanFlowsError):
    """A flow could not be built, loaded, resumed or reverted."""

    def __init__(self, flow: str, problem: str, fix: str | None = None) -> None:
        self.flow = flow
        self.problem = problem
        msg = f"Flow {flow}: {problem}."
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


class FlowBusy(FlowError):
    """A live process of this host runs the flow: acting on it too would run it twice."""

    def __init__(self, flow: str, holder: str) -> None:
        self.holder = holder
        super().__init__(flow, f"is being run right now by {holder}",
                         "Leave it to that process; act on it once that process has ended or "
                         "been stopped (its lock goes with it).")
