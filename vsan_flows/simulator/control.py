"""Client for the simulator's loopback control API: inventory views and fault knobs.

Tests use the knobs to make vCenter misbehave on purpose (faults, dead leases, cut transfers,
expired sessions) and the views to prove that a flow left nothing behind.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# The control server is on loopback; an HTTP(S)_PROXY in the environment must not capture it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ControlError(RuntimeError):
    """The control API refused a request; the message is the simulator's own reason."""


class SimulatorControl:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None, *,
              raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                payload = resp.read()
                return payload if raw else json.loads(payload or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            try:
                text = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ControlError(f"{method} {path.split('?')[0]}: HTTP {exc.code}: {text}") from None

    # Views -----------------------------------------------------------------------------
    def status(self) -> dict:
        return self._call("GET", "/status")

    def files(self) -> list[dict]:
        return self._call("GET", "/files")

    def calls(self, method: str) -> int:
        return int(self.status().get("calls", {}).get(method, 0))

    # Knobs -----------------------------------------------------------------------------
    def fail_method(self, method: str, fault: str, *, count: int = 1, message: str = "",
                    in_task: bool = False) -> None:
        self._call("POST", "/fault/method", {"method": method, "fault": fault, "count": count,
                                             "message": message, "in_task": in_task})

    def lease_fault(self, mode: str, scope: str = "next") -> None:
        self._call("POST", "/fault/lease", {"mode": mode, "scope": scope})

    def cut_nfc(self, after_bytes: int, *, count: int = 1, direction: str = "any") -> None:
        self._call("POST", "/fault/nfc", {"count": count, "cut_after_bytes": after_bytes,
                                          "direction": direction})

    def throttle_nfc(self, bytes_per_second: int, *, count: int = 1,
                     direction: str = "any") -> None:
        self._call("POST", "/fault/nfc", {"count": count, "bytes_per_second": bytes_per_second,
                                          "direction": direction})

    def terminate_sessions(self) -> None:
        self._call("POST", "/sessions/terminate", {})

    def set_datastore(self, name: str, **fields: Any) -> None:
        self._call("POST", "/datastore", {"name": name, **fields})

    def lease_timeout(self, seconds: int) -> None:
        """info.leaseTimeout of leases created from now on (vCenter: 300; /reset restores)."""
        self._call("POST", "/lease/timeout", {"seconds": seconds})

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def latency(self) -> dict:
        """The latency profile in force (name, per-method delays, lease init, NFC bandwidth)."""
        return self._call("GET", "/latency")

    def set_latency(self, profile: str | None = None, *, scale: float | None = None,
                    methods_ms: dict[str, int] | None = None, lease_init_ms: int | None = None,
                    nfc_bytes_per_second: int | None = None,
                    nfc_shared_bytes_per_second: int | None = None) -> dict:
        """Apply a named profile (``none``, ``vcenter``) and/or override its figures.

        ``scale`` multiplies every delay (not the bandwidths); a profile stays in force until
        changed: ``reset()`` leaves it alone. Returns the profile now in force."""
        body: dict[str, Any] = {}
        for key, value in (("profile", profile), ("scale", scale), ("methods_ms", methods_ms),
                           ("lease_init_ms", lease_init_ms),
                           ("nfc_bytes_per_second", nfc_bytes_per_second),
                           ("nfc_shared_bytes_per_second", nfc_shared_bytes_per_second)):
            if value is not None:
                body[key] = value
        return self._call("POST", "/latency", body)

    def announce_export_length(self, on: bool) -> None:
        """Export leases give fileSize and downloads Content-Length (vCenter does not)."""
        self._call("POST", "/export", {"announce_length": on})

    # The guest --------------------------------------------------------------------------
    def guest_write(self, vm: str, offset: int, data: bytes, *, disk: int = 0) -> None:
        """Write ``data`` at ``offset`` of the VM's current disk (the top of its chain), as
        its guest would. ``vm`` is a name or moref; ``disk`` a device key (0: the first)."""
        self._call("POST", "/vm/write", {"vm": vm, "disk": disk, "offset": offset,
                                         "data": base64.b64encode(data).decode()})

    def guest_read(self, vm: str, offset: int = 0, length: int | None = None, *,
                   disk: int = 0) -> bytes:
        """The VM disk's content (its whole chain flattened), or ``length`` bytes of it."""
        query = {"vm": vm, "disk": disk, "offset": offset}
        if length is not None:
            query["length"] = length
        return self._call("GET", "/vm/read?" + urllib.parse.urlencode(query), raw=True)
