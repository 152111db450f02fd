"""Build, start and stop the patched vCenter simulator (tools/vcsim).

The Go launcher writes a JSON state file once its SOAP and control servers listen; we wait for
that file rather than polling ports, so "ready" means what the launcher says it means. A
simulator that does not come up in time is killed and its log tail becomes the error, never a
hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vsan_flows.simulator.control import SimulatorControl


class SimulatorError(RuntimeError):
    """The simulator could not be built, started or stopped; the message says why."""


def repo_root() -> Path:
    """The checkout that holds tools/vcsim (the package is installed in develop mode)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tools" / "vcsim" / "build.sh").is_file():
        raise SimulatorError(
            f"tools/vcsim/build.sh not found under {root}: the simulator runs from a source "
            "checkout; install vsan_flows with 'pip install -e .' from the repository"
        )
    return root


def build_dir() -> Path:
    return Path(os.environ.get("VSAN_FLOWS_BUILD_DIR") or repo_root() / ".build")


def build(out_dir: Path | None = None) -> Path:
    """Build (or reuse) the vsan-vcsim binary and return its path."""
    out = Path(out_dir or build_dir() / "vcsim")
    proc = subprocess.run(
        ["bash", str(repo_root() / "tools" / "vcsim" / "build.sh"), str(out)],
        capture_output=True,
        text=True,
    )
    binary = out / "vsan-vcsim"
    if proc.returncode != 0 or not binary.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit {proc.returncode}"
        raise SimulatorError(f"building the simulator failed: {reason}")
    return binary


@dataclass
class Simulator:
    """A running simulator process and what its state file says about it."""

    process: subprocess.Popen
    state_file: Path
    log_file: Path
    state: dict = field(repr=False)

    @property
    def host(self) -> str:
        return self.state["host"]

    @property
    def port(self) -> int:
        return int(self.state["port"])

    @property
    def username(self) -> str:
        return self.state["username"]

    @property
    def password(self) -> str:
        return self.state["password"]

    @property
    def thumbprint(self) -> str:
        return self.state["thumbprint"]

    @property
    def datastores(self) -> list[dict]:
        return list(self.state["datastores"])

    @property
    def control(self) -> SimulatorControl:
        return SimulatorControl(self.state["control_url"])

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_file, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait: the launcher removes its datastore directories on the way out."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise SimulatorError(
                    f"simulator pid {self.process.pid} ignored SIGTERM for {timeout:.0f}s and "
                    f"was killed; its log: {self.log_file}"
                ) from None


def _served_wsdl_dir(out: Path) -> Path:
    from vsan_flows.simulator import wsdl

    return Path(wsdl.generate(out)).parent


def start(workdir: Path, *, timeout: float = 60.0, binary: Path | None = None,
          trace: bool = False, latency: str | None = None,
          latency_scale: float | None = None, tls_cert: Path | None = None,
          tls_key: Path | None = None) -> Simulator:
    """Start a simulator whose state, log and datastores live under workdir.

    ``latency`` names a latency profile (``none``, the default, or ``vcenter``: a vCenter's
    task times, lease initialisation and NFC bandwidth; docs/simulator-latency.md), applied
    before this returns; ``latency_scale`` multiplies its delays. ``tls_cert``/``tls_key``
    (PEM) replace its built-in self-signed certificate, for tests of certificate verification.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    binary = Path(binary) if binary else build()
    state_file = workdir / "state.json"
    log_file = workdir / "vcsim.log"
    _clear_stale_state(state_file)
    cmd = [str(binary), "-state", str(state_file), "-tmpdir", str(workdir / "datastores"),
           # Served at /sdk/vimService.wsdl, as vCenter does: clients without a WSDL
           # option (nova's session) fetch it from there.
           "-wsdl", str(_served_wsdl_dir(workdir / "wsdl"))]
    if trace:
        cmd.append("-trace")
    if tls_cert or tls_key:
        cmd += ["-cert", str(tls_cert), "-key", str(tls_key)]
    (workdir / "datastores").mkdir(exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulatorError(
                f"simulator exited with status {proc.returncode} before it was ready; "
                f"its log ({log_file}):\n{_tail(log_file, 30)}"
            )
        state = _read_state(state_file)
        if state and state.get("pid") == proc.pid:
            sim = Simulator(proc, state_file, log_file, state)
            if latency is not None or latency_scale is not None:
                _apply_latency(sim, latency, latency_scale)
            return sim
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise SimulatorError(
        f"simulator was not ready within {timeout:.0f}s; its log ({log_file}):\n"
        f"{_tail(log_file, 30)}"
    )


def _apply_latency(sim: Simulator, profile: str | None, scale: float | None) -> None:
    """Apply the profile; a refusal (unknown name, bad scale) stops the simulator."""
    from vsan_flows.simulator.control import ControlError

    try:
        sim.control.set_latency(profile, scale=scale)
    except ControlError as exc:
        sim.stop()
        raise SimulatorError(f"latency profile refused: {exc}") from None


def _clear_stale_state(state_file: Path) -> None:
    """A state file left by a killed simulator of ours is removed; a live one is an error."""
    state = _read_state(state_file)
    if state is None:
        return
    pid = int(state.get("pid", 0))
    if pid and _pid_alive(pid):
        raise SimulatorError(
            f"a simulator is already running as pid {pid} (state file {state_file}); "
            f"stop it first (kill -TERM {pid})"
        )
    state_file.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(state_file: Path) -> dict | None:
    try:
        return json.loads(state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _tail(path: Path, lines: int) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
