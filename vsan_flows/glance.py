"""Glance as the image service: python-glanceclient on a keystoneauth1 session.

Everything the flows rely on from :class:`vsan_flows.images.ImageService` holds here too, with
Glance's own rules where they differ from the local store:

- **Credentials.** A caller that has a user's request (nova) passes its context or token and
  the calls go out as that user; a flow resumed after a restart has no request, so the service
  user from ``[glance]`` (keystoneauth's auth options) is used. The token is a transient, like
  every live handle: it is never persisted, logged or put in an error.
- **Reads never hold Glance open.** A header peek is a ranged GET (``Range: bytes=0-N``) and
  every response is closed by whoever opened it, read to the end or not: one glance-api worker
  held by a forgotten download stalls every later request until the worker timeout.
- **No settable killed state.** Glance moves an image to ``killed`` only itself; an image a
  failed snapshot reserved is therefore deleted (and the deletion logged with the reason).
- **Nothing half-written goes active.** Glance commits an upload only at the end of the body;
  a source that fails makes us abort the request, and Glance puts the image back to
  ``queued``. After a commit, Glance's size and hash are compared with what we sent.
- **Refusals are ours.** 401/403/404/409/413/415 become errors naming the image and the fix;
  connection failures and 5xx become a retryable :class:`ImageServiceUnavailable`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import glanceclient
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import plugin as ksa_plugin
from keystoneauth1 import session as ksa_session
from keystoneauth1 import token_endpoint
from keystoneauth1.adapter import Adapter
from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows.exceptions import (
    ConfigError,
    ImageAlreadyHasData,
    ImageError,
    ImageNotFound,
    ImageServiceRefused,
    ImageServiceUnavailable,
    IncompleteTransfer,
)
from vsan_flows.images import STATUS_ACTIVE, STATUS_QUEUED, ImageMeta
from vsan_flows.streamcheck import BackgroundHash as _BackgroundHash

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20
# Fields of a Glance v2 image record; every other key is a custom property.
_CORE = frozenset((
    "id", "name", "status", "visibility", "protected", "checksum", "owner", "size",
    "virtual_size", "container_format", "disk_format", "created_at", "updated_at", "tags",
    "direct_url", "min_ram", "min_disk", "self", "file", "schema", "locations", "os_hidden",
    "os_hash_algo", "os_hash_value", "stores",
))
# Fields a caller may set on create/upload (the rest of _CORE is Glance's to set).
_SETTABLE = ("name", "disk_format", "container_format", "min_disk", "min_ram", "visibility",
             "protected", "tags", "id")
_VERSIONED = re.compile(r"/v2(\.\d+)?/?$")

_FIX_AUTH = ("Check the [glance] service credentials (auth_type, username, password, "
             "project) or that the caller's token is valid and may use this image.")
_FIX_BY_STATUS = {
    401: _FIX_AUTH,
    403: _FIX_AUTH,
    409: "The image is not in a state that allows this (another upload, or it already has "
         "data); snapshot into a new, empty image.",
    413: "The data is larger than Glance accepts (its image_size_cap, or the owner's storage "
         "quota); free quota or raise the limit, then retry.",
    415: "Glance's format inspector says the data does not match the image's disk_format; "
         "the image must carry a streamOptimized VMDK with disk_format=vmdk.",
}


def _status_of(err: Exception) -> int | None:
    code = getattr(err, "http_status", None) or getattr(err, "code", None)
    if isinstance(code, int):
        return code
    # glanceclient keeps no code for statuses it has no class for (415 among them): its
    # generic HTTPException only carries details that start with the status line.
    m = re.match(r"\s*(\d{3})\b", str(getattr(err, "details", "") or ""))
    return int(m.group(1)) if m else None


def _detail(err: Exception) -> str:
    """Glance's explanation, without the HTML wrapping or anything that looks like a token."""
    text = getattr(err, "details", None) or str(err)
    text = re.sub(r"<[^>]+>", " ", str(text))
    return re.sub(r"\s+", " ", text).strip()[:300]


def translate(err: Exception, image_id: str | None, operation: str) -> ImageError:
    """One Glance/keystoneauth error as ours: what failed, on which image, what to do."""
    status = _status_of(err)
    if status == 404:
        return ImageNotFound(str(image_id))
    if status is not None and status in _FIX_BY_STATUS:
        return ImageServiceRefused(image_id, operation, status, _detail(err),
                                   _FIX_BY_STATUS[status])
    if status is not None and 400 <= status < 500:
        return ImageServiceRefused(image_id, operation, status, _detail(err),
                                   "Check the request against Glance's API and its logs.")
    what = f"HTTP {status}" if status else type(err).__name__
    return ImageServiceUnavailable(image_id, operation, f"{what}: {_detail(err)}")


_CLIENT_ERRORS = (glance_exc.BaseException, glance_exc.HTTPException, ksa_exc.ClientException,
                  OSError)


def _meta(record: Mapping[str, Any]) -> ImageMeta:
    props = {k: v for k, v in record.items() if k not in _CORE}
    return ImageMeta(
        id=record["id"], name=record.get("name"), disk_format=record.get("disk_format"),
        container_format=record.get("container_format"), size=record.get("size"),
        status=record.get("status") or STATUS_QUEUED, properties=props,
        os_hash_algo=record.get("os_hash_algo"), os_hash_value=record.get("os_hash_value"),
        min_disk=record.get("min_disk") or 0, min_ram=record.get("min_ram") or 0,
        created_at=record.get("created_at"), updated_at=record.get("updated_at"))


def _fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Glance's flat create/update keywords: core fields as given, properties as strings
    (its schema types every custom property as a string)."""
    out: dict[str, Any] = {}
    props = dict(meta.get("properties") or {})
    for key, value in meta.items():
        if key == "properties":
            continue
        if key in _SETTABLE:
            out[key] = value
        elif key not in _CORE:
            props[key] = value
    for key, value in props.items():
        if value is not None:
            out[key] = str(value)
    return out


class _Download:
    """A file-like over one GET's body that owns the response and closes it.

    A full read checks at EOF what Glance promised: the byte count and the image's own hash,
    so a body cut by a restart or a wrong store cannot pass as the image.
    """

    def __init__(self, response, image_id: str, *, limit: int | None,
                 expect_size: int | None, hash_algo: str | None, hash_value: str | None) -> None:
        self._resp = response
        self._raw = response.raw
        self.image_id = image_id
        self._left = limit
        self._expect = expect_size
        self._want_hash = hash_value
        self._hash = _BackgroundHash(hash_algo) if hash_algo and hash_value and limit is None \
            else None
        #: (algorithm, digest) this download checks at its end, so a reader need not hash the
        #: same bytes a second time (sha512 costs as much CPU as the rest of an import).
        self.verifies_hash = (hash_algo, hash_value) if self._hash is not None else None
        self.bytes_read = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if n is None or n < 0:
            n = CHUNK
        if self._left is not None:
            n = min(n, self._left)
            if n == 0:
                self._done = True
                return b""
        try:
            data = self._raw.read(n, decode_content=False)
        except Exception as err:  # urllib3's ProtocolError/ReadTimeoutError, OSError
            self.close()
            # Glance announces the recorded size (Content-Length), so a body cut short - a
            # glance-api restart, or a store that lost the image's tail - ends here, not at
            # our own size check: say how far it got of what Glance recorded.
            of = f" of {self._expect}" if self._expect is not None else ""
            raise ImageServiceUnavailable(self.image_id, "download",
                                          f"the connection broke after {self.bytes_read}"
                                          f"{of} bytes ({type(err).__name__})") from None
        if not data:
            self._done = True
            self._check_end()
            return b""
        self.bytes_read += len(data)
        if self._left is not None:
            self._left -= len(data)
        if self._hash is not None:
            self._hash.update(data)
        return data

    def _check_end(self) -> None:
        if self._left is not None:
            return  # a ranged read ends where it ends
        if self._expect is not None and self.bytes_read != self._expect:
            raise IncompleteTransfer(f"The download of image {self.image_id} from Glance",
                                     bytes_sent=self.bytes_read, bytes_expected=self._expect)
        if self._hash is not None and self._hash.hexdigest() != self._want_hash:
            raise ImageError(
                f"Image {self.image_id} downloaded from Glance does not match its recorded "
                f"{self._hash.name} hash: the stored data is damaged. Delete the image and "
                "upload it again.")

    def close(self) -> None:
        self._done = True
        if self._hash is not None:
            self._hash.stop()
        self._resp.close()

    def readable(self) -> bool:
        return True

    def __enter__(self) -> _Download:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _UploadSource:
    """What glanceclient reads the upload body from: counts, hashes, and keeps the source's
    own error, because glanceclient reports any failure of the body as a connection error."""

    def __init__(self, data: Iterable[bytes] | BinaryIO, hash_algo: str) -> None:
        self._read = getattr(data, "read", None)
        self._iter: Iterator[bytes] | None = None if self._read else iter(data)  # type: ignore
        self.hash = _BackgroundHash(hash_algo)
        self.sent = 0
        self.error: BaseException | None = None

    def read(self, n: int = CHUNK) -> bytes:
        try:
            if self._read is not None:
                chunk = self._read(max(n, CHUNK))
            else:
                chunk = next(self._iter, b"")  # type: ignore[arg-type]
        except BaseException as err:
            self.error = err
            raise
        if chunk:
            self.sent += len(chunk)
            self.hash.update(chunk)
        return chunk


def _token_of(context: Any) -> str | None:
    if isinstance(context, str):
        return context
    return getattr(context, "auth_token", None)


class GlanceImageService:
    """The :class:`~vsan_flows.images.ImageService` protocol on a real Glance (API v2)."""

    def __init__(self, session: ksa_session.Session, *, auth: ksa_plugin.BaseAuthPlugin | None,
                 adapter_kwargs: Mapping[str, Any], hash_algorithm: str = "sha512") -> None:
        self._session = session
        self._auth = auth
        self._adapter_kwargs = dict(adapter_kwargs)
        self.hash_algorithm = hash_algorithm
        # The record API through glanceclient; data reads through the same session directly,
        # because glanceclient %-quotes header values ("bytes%3D0-99") so Glance rejects any
        # Range it sends (416), and its data() gives no handle to close a half-read body.
        self._client = glanceclient.Client("2", session=session, auth=auth,
                                           **self._adapter_kwargs)
        self._http = Adapter(session, auth=auth, **self._adapter_kwargs)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, context: Any = None) -> GlanceImageService:
        """The service user from ``[glance]``, or the caller's ``context`` when given.

        ``context`` may be a token string, anything with ``auth_token`` (oslo.context,
        nova's RequestContext) or a keystoneauth auth plugin (nova's
        ``context.get_auth_plugin()``, which also carries the user's service catalog).
        """
        group = vconf.GLANCE_GROUP
        service_auth = ks_loading.load_auth_from_conf_options(conf, group)
        session = ks_loading.load_session_from_conf_options(conf, group, auth=service_auth)
        g = conf[group]
        endpoint = g.endpoint_override
        if endpoint:
            endpoint = _VERSIONED.sub("", endpoint.rstrip("/")) or endpoint
        elif service_auth is None:
            raise ConfigError(
                "[glance] endpoint_override",
                "it is unset and no [glance] auth_type is configured to find Glance in the "
                "service catalog",
                "Set endpoint_override to glance-api's URL (e.g. http://glance:9292), or "
                "configure the service user (auth_type = password, auth_url, username, ...).")
        kwargs: dict[str, Any] = {
            "service_type": g.service_type or vconf.GLANCE_SERVICE_TYPE,
            "service_name": g.service_name,
            "interface": list(g.valid_interfaces or ["internal", "public"]),
            "region_name": g.region_name,
            "endpoint_override": endpoint,
            "connect_retries": g.connect_retries,
            "status_code_retries": g.status_code_retries,
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        auth = service_auth
        if context is not None:
            if isinstance(context, ksa_plugin.BaseAuthPlugin):
                auth = context
            elif hasattr(context, "get_auth_plugin"):
                auth = context.get_auth_plugin()
            else:
                token = _token_of(context)
                if not token:
                    raise ConfigError("the request context", "it carries no auth token",
                                      "Pass the user's context (with auth_token) or none to "
                                      "use the [glance] service user.")
                if endpoint is None:  # the user's calls go where the catalog says Glance is
                    try:
                        endpoint = session.get_endpoint(auth=service_auth, **{
                            k: v for k, v in kwargs.items()
                            if k in ("service_type", "service_name", "interface",
                                     "region_name")})
                    except ksa_exc.ClientException as err:
                        raise translate(err, None, "find the image endpoint for") from None
                    kwargs["endpoint_override"] = endpoint
                auth = token_endpoint.Token(endpoint, token)
        return cls(session, auth=auth, adapter_kwargs=kwargs,
                   hash_algorithm=conf.vsan_flows.glance_hash_algorithm)

    # ------------------------------------------------------------------ records

    def show(self, image_id: str) -> ImageMeta:
        try:
            return _meta(self._client.images.get(image_id))
        except _CLIENT_ERRORS as err:
            raise translate(err, image_id, "show") from None

    def list(self) -> list[ImageMeta]:
        try:
            images = [_meta(r) for r in self._client.images.list()]
        except _CLIENT_ERRORS as err:
            raise translate(err, None, "list") from None
        return sorted(images, key=lambda m: (m.name or "", m.id))

    def create(self, meta: Mapping[str, Any]) -> str:
        try:
            return self._client.images.create(**_fields(meta))["id"]
        except _CLIENT_ERRORS as err:
            raise translate(err, meta.get("id"), "create") from None

    def delete(self, image_id: str) -> None:
        """Remove the image; ``ImageNotFound`` if it is already gone (reverts may ignore that)."""
        try:
            self._client.images.delete(image_id)
        except _CLIENT_ERRORS as err:
            raise translate(err, image_id, "delete") from None

    def mark_killed(self, image_id: str, reason: str) -> None:
        """Glance has no settable killed status: an image that must never be used is deleted."""
        current = self.show(image_id)
        if current.status == STATUS_ACTIVE:
            raise ImageAlreadyHasData(image_id, current.status)
        self.delete(image_id)
        LOG.warning("Deleted Glance image %s (status %s): %s. Glance cannot mark an image "
                    "killed, so the image record is gone.", image_id, current.status, reason)

    # ------------------------------------------------------------------ data

    def open(self, image_id: str, length: int | None = None) -> BinaryIO:
        """The image's data (or its first ``length`` bytes, fetched as a ranged GET).

        The caller closes it; closing before the end aborts the download on the wire.
        """
        meta = self.show(image_id)
        if meta.status != STATUS_ACTIVE:
            raise ImageError(
                f"Image {image_id} has no data to read (status {meta.status}); only active "
                "images can be deployed. Wait for its upload to finish or upload it again.")
        headers = {"Accept": "application/octet-stream"}
        if length is not None:
            if length <= 0:
                raise ValueError("length must be positive")
            headers["Range"] = f"bytes=0-{length - 1}"
        try:
            resp = self._http.get(f"/v2/images/{image_id}/file", headers=headers,
                                  stream=True, raise_exc=False)
        except _CLIENT_ERRORS as err:
            raise translate(err, image_id, "download") from None
        if resp.status_code not in (200, 206):
            try:
                if resp.status_code == 204:
                    raise ImageError(f"Image {image_id} is active but Glance has no data for "
                                     "it; delete the image and upload it again.")
                raise translate(ksa_exc.from_response(resp, "GET", resp.url), image_id,
                                "download")
            finally:
                resp.close()
        partial = resp.status_code == 206
        return _Download(  # type: ignore[return-value]
            resp, image_id, limit=length,
            expect_size=None if partial or length is not None else meta.size,
            hash_algo=meta.os_hash_algo, hash_value=meta.os_hash_value)

    def upload(self, image_id: str, data: Iterable[bytes] | BinaryIO,
               meta: Mapping[str, Any] | None = None) -> ImageMeta:
        """Set the record's formats and properties, then stream the data; Glance turns the
        image active only when the whole body arrived, and we check what it stored."""
        meta = dict(meta or {})
        expected = meta.pop("size", None)
        current = self.show(image_id)
        if current.status == STATUS_ACTIVE or current.size:
            raise ImageAlreadyHasData(image_id, current.status)  # refused untouched
        if current.status != STATUS_QUEUED:
            # What Glance itself would answer (409); said before sending a byte, and final:
            # an image left "saving" by a glance-api that died mid-upload stays so for good.
            raise ImageServiceRefused(
                image_id, "upload data to", 409, f"the image is {current.status}, not queued",
                "Only a new, empty image takes data; one stuck in saving lost its upload to a "
                "glance-api restart and never will. A failed snapshot deletes its image: "
                "snapshot again into a new image.")
        fields = _fields(meta)
        fields.pop("id", None)
        if fields:
            try:
                self._client.images.update(image_id, **fields)
            except _CLIENT_ERRORS as err:
                raise translate(err, image_id, "update the properties of") from None
        source = _UploadSource(data, self.hash_algorithm)
        try:
            self._client.images.upload(image_id, source,
                                       image_size=int(expected) if expected else None)
        except _CLIENT_ERRORS as err:
            if source.error is not None:  # our source failed; Glance aborted the upload
                raise source.error from None
            raise translate(err, image_id, "upload data to") from None
        finally:
            source.hash.stop()
        return self._check_stored(image_id, source, expected)

    def _check_stored(self, image_id: str, source: _UploadSource,
                      expected: int | None) -> ImageMeta:
        done = self.show(image_id)
        problem = None
        if expected is not None and source.sent != int(expected):
            problem = f"{source.sent} bytes were sent, {expected} expected"
        elif done.status != STATUS_ACTIVE:
            problem = f"Glance left it {done.status} after the upload"
        elif done.size != source.sent:
            problem = f"Glance stored {done.size} bytes, {source.sent} were sent"
        elif done.os_hash_algo != self.hash_algorithm:
            problem = (f"Glance hashed it with {done.os_hash_algo}, not "
                       f"{self.hash_algorithm}; set [vsan_flows] glance_hash_algorithm = "
                       f"{done.os_hash_algo}")
        elif done.os_hash_value != source.hash.hexdigest():
            problem = f"Glance's {done.os_hash_algo} differs from the data sent"
        if problem is None:
            return done
        try:
            self.delete(image_id)
        except ImageError as err:
            LOG.error("Could not delete image %s after a failed upload check: %s",
                      image_id, err)
        raise IncompleteTransfer(
            f"The upload of image {image_id} to Glance ({problem}; the image was deleted)",
            bytes_sent=source.sent, bytes_expected=int(expected) if expected else source.sent,
            bytes_stored=done.size)

    # ------------------------------------------------------------------ helpers

    def add_file(self, path, name: str, disk_format: str = "vmdk",
                 vmware_disktype: str | None = "streamOptimized", *,
                 container_format: str = "bare", vmware_adaptertype: str | None = "lsiLogic",
                 vmware_ostype: str | None = "otherGuest", vmware_image_version: int | None = 1,
                 properties: Mapping[str, Any] | None = None,
                 image_id: str | None = None) -> str:
        """Upload a local disk file as a new active image (tests, demo); returns the id."""
        props = {k: v for k, v in (("vmware_disktype", vmware_disktype),
                                   ("vmware_adaptertype", vmware_adaptertype),
                                   ("vmware_ostype", vmware_ostype),
                                   ("vmware_image_version", vmware_image_version))
                 if v is not None}
        props.update(properties or {})
        record: dict[str, Any] = {"name": name, "disk_format": disk_format,
                                  "container_format": container_format, "properties": props}
        if image_id:
            record["id"] = image_id
        new_id = self.create(record)
        try:
            with open(path, "rb") as f:
                self.upload(new_id, f)
        except BaseException:
            try:
                self.delete(new_id)
            except ImageError:
                pass
            raise
        return new_id
