"""What every benchmark here shares: a simulator harness and the small helpers around it.

A benchmark script subclasses :class:`Harness` with its ``section_*`` methods and hands it to
:func:`run`, which starts a fresh simulator in a temporary directory, runs the chosen sections
(a failed one is reported, cleaned up after, and the next one still runs), destroys every VM
that was not there at the start, stops the simulator, prints the report, the leak check and
one JSON line with every figure, and returns the exit status (non-zero only when the benchmark
itself could not run: never because of a speed figure).

The scripts import this module by name (``import common``): Python puts a script's directory
first on ``sys.path``, so it works from any working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
MB = 1e6
ROOT = Path(__file__).resolve().parents[1]
DATASTORE = "vsanDatastore"


# --------------------------------------------------------------------------------- helpers

def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(n: int) -> str:
    if n % GiB == 0:
        return f"{n // GiB}G"
    if n % MiB == 0:
        return f"{n // MiB}M"
    return str(n)


def log(msg: str) -> None:
    """Progress goes to stderr; stdout holds only the report and its JSON line."""
    print(msg, file=sys.stderr, flush=True)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else float("nan")


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rounded(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def quiet() -> None:
    # The lease URLs are fetched without TLS verification on purpose (a simulator).
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    warnings.filterwarnings("ignore", message=r"\s*eventlet is deprecated")
    warnings.filterwarnings("ignore", message=r"HTTPSConnection\.set_cert\(\) is deprecated")


def make_conf(sim: dict, wsdl_url: str, state_dir: str):
    """A ConfigOpts for the simulator, as tests/functional/conftest.py's make_conf builds it."""
    from oslo_config import cfg

    from vsan_flows import conf as vconf

    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows", default_config_files=[])
    values = {
        ("vmware", "host_ip"): sim["host"],
        ("vmware", "host_port"): sim["port"],
        ("vmware", "host_username"): sim["username"],
        ("vmware", "host_password"): sim["password"],
        ("vmware", "insecure"): True,
        ("vmware", "wsdl_location"): wsdl_url,
        ("vmware", "task_poll_interval"): 0.05,
        ("vmware", "api_retry_count"): 2,
        ("vsan_flows", "state_dir"): state_dir,
        ("vsan_flows", "import_retries"): 0,
    }
    for (group, name), value in values.items():
        c.set_override(name, value, group)
    return c


def timing_listener(sink: dict) -> Callable:
    """A listener factory for api.spawn/snapshot(listeners=...): task/flow name -> seconds."""
    from taskflow.listeners import timing

    class _Durations(timing.DurationListener):
        def _record_ending(self, timer, item_type, item_name, state):
            sink[item_name.rsplit(".", 1)[-1]] = timer.elapsed()

    return _Durations


def environment(workdir: Path) -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["df", "--output=fstype", str(workdir)], capture_output=True,
                        text=True).stdout.split()[-1:]
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "commit": commit or None,
            "workdir_fs": fs[0] if fs else None}


def add_harness_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: where it works, and the smoke mode."""
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one run, every section: proves the benchmark still runs "
                   "(seconds, not minutes; the figures mean nothing). The test suite runs it.")
    p.add_argument("--watchdog", type=float, metavar="SECONDS",
                   help="if still running after SECONDS, print every thread's stack to stderr, "
                   "stop the simulator and exit 3 (a hang fails with where it hung)")
    p.add_argument("--data-fraction", type=float, default=0.25,
                   help="share of the virtual size that holds (incompressible) data; the "
                   "streamOptimized file is about this big (default 0.25)")
    p.add_argument("--workdir", help="parent of the temporary work directory (simulator "
                   "datastores, image store); default: the system temp dir")
    p.add_argument("--fixture-dir", help="keep and reuse the generated VMDKs here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------- harness

class Harness:
    """One simulator, a logged-in session, an image store, fixtures, cleanup and a leak check.

    Subclasses set ``SCRIPT`` (re-run as ``SCRIPT --child SPEC`` for measurements that need a
    fresh interpreter), ``results`` (section -> figures) and one ``section_<name>()`` method per
    section (dashes in a section's name become underscores).
    """

    SCRIPT: Path

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sim = None
        self.vsphere = None
        self.images = None
        self.conf = None
        self.fixtures: dict[int, dict] = {}
        self.results: dict = {}
        self.errors: list[str] = []

    # ---------------------------------------------------------------- setup / teardown

    def start(self) -> None:
        from vsan_flows.images import LocalImageService
        from vsan_flows.simulator import launcher, wsdl
        from vsan_flows.simulator.leaks import LeakChecker
        from vsan_flows.vsphere.session import connect

        t0 = time.monotonic()
        self.sim = launcher.start(self.workdir / "vcsim", timeout=90)
        out = Path(os.environ.get("VSAN_FLOWS_BUILD_DIR") or ROOT / ".build") / "wsdl"
        self.wsdl_url = "file://" + str(wsdl.generate(out))
        self.sim_info = {"host": self.sim.host, "port": self.sim.port,
                         "username": self.sim.username, "password": self.sim.password}
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(exist_ok=True)
        self.conf = make_conf(self.sim_info, self.wsdl_url, str(self.state_dir))
        self.vsphere = connect(self.conf)
        self.images = LocalImageService(self.workdir / "images")
        self.checker = LeakChecker(self.sim.control)
        self.before = self.checker.snapshot()
        log(f"simulator pid {self.sim.process.pid} at {self.sim.host}:{self.sim.port} ready "
            f"in {time.monotonic() - t0:.1f}s; work dir {self.workdir}")

    def stop(self) -> list[str]:
        leaks: list[str] = []
        if self.sim is None:
            return leaks
        try:
            if self.vsphere is not None:
                self.cleanup_all()
                leaks = self.checker.leaks(self.before)
                with contextlib.suppress(Exception):
                    self.vsphere.close()
        finally:
            self.sim.stop()
        return leaks

    def cleanup_all(self) -> None:
        """Abort every open lease and destroy every VM that was not there at the start."""
        from vsan_flows.vsphere import instances, leases

        status = self.sim.control.status()
        for lease in status.get("leases") or []:
            if lease.get("state") not in ("done",):
                with contextlib.suppress(Exception):
                    leases.abort(self.vsphere, lease["moref"])
        names = [vm["name"] for vm in status.get("vms") or []
                 if vm["name"] not in self.before.vms]
        # Linked clones (instances) before the shadow VMs they hang from.
        names.sort(key=lambda n: n.startswith("vsanflows-image-"))
        for name in names:
            try:
                instances.destroy_by_name(self.vsphere, name)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                self.errors.append(f"cleanup of VM {name}: {exc}")

    def destroy(self, *names: str | None) -> None:
        """Destroy these VMs now; a failure is the benchmark's failure."""
        from vsan_flows.vsphere import instances

        for name in names:
            if name:
                instances.destroy_by_name(self.vsphere, name)

    def destroy_quiet(self, names) -> None:
        """Destroy these VMs, recording (not raising) what fails, and keep going."""
        from vsan_flows.vsphere import instances

        for name in names:
            try:
                instances.destroy_by_name(self.vsphere, name)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                self.errors.append(f"destroy {name}: {exc}")

    def environment(self) -> dict:
        return environment(Path(self.args.workdir or tempfile.gettempdir()))

    # ---------------------------------------------------------------- fixtures

    def fixture(self, size: int) -> dict:
        """A streamOptimized image of virtual size ``size`` registered in the image store."""
        if size in self.fixtures:
            return self.fixtures[size]
        from vsan_flows.simulator import disks
        from vsan_flows.tasks.image import ValidateStreamOptimizedImage

        data_mib = max(3, int(size / MiB * self.args.data_fraction))
        fdir = Path(self.args.fixture_dir) if self.args.fixture_dir else self.workdir / "disks"
        fdir.mkdir(parents=True, exist_ok=True)
        path = fdir / f"bench-{size_label(size)}-d{data_mib}.vmdk"
        t0 = time.monotonic()
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            disks.make_stream_optimized(tmp, size, data_mib=data_mib)
            tmp.rename(path)
        made = time.monotonic() - t0
        image_id = self.images.add_file(path, name=path.name)
        image = ValidateStreamOptimizedImage().execute(self.images, image_id)
        fx = {"size": size, "label": size_label(size), "path": path, "image_id": image_id,
              "file_bytes": image["size"], "image": image, "data_mib": data_mib}
        # The file every path reads: warm the page cache once so no path pays a cold read.
        with self.images.open(image_id) as f:
            while f.read(8 * MiB):
                pass
        log(f"fixture {fx['label']}: {fx['file_bytes'] / MB:.0f} MB file "
            f"({data_mib} MiB of data), ready in {time.monotonic() - t0:.1f}s "
            f"(made in {made:.1f}s)")
        self.fixtures[size] = fx
        return fx

    def store_path(self, fx: dict) -> Path:
        """The image store's copy of the fixture (what spawn reads)."""
        with self.images.open(fx["image_id"]) as f:
            return Path(f.name)

    def new_image(self, prefix: str, images=None) -> str:
        """An empty image in the store, or in ``images`` (a snapshot's target)."""
        return (images or self.images).create({"name": f"{prefix}-{uuid.uuid4().hex[:8]}",
                                               "disk_format": "vmdk",
                                               "container_format": "bare"})

    def drop_image(self, image_id: str, images=None) -> None:
        from vsan_flows import exceptions

        with contextlib.suppress(exceptions.ImageNotFound):
            (images or self.images).delete(image_id)

    # ---------------------------------------------------------------- children

    def spec(self, **extra) -> dict:
        """What a child process needs to reach this simulator and image store."""
        return {"sim": self.sim_info, "wsdl": self.wsdl_url, "state_dir": str(self.state_dir),
                "images_dir": str(self.images.directory), **extra}

    def run_child(self, spec: dict, timeout: float = 1800) -> tuple[int, dict, str]:
        """``SCRIPT --child SPEC`` in a fresh interpreter: (exit status, its last JSON line,
        its stderr)."""
        proc = subprocess.run([sys.executable, str(self.SCRIPT), "--child", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
        return proc.returncode, (json.loads(lines[-1]) if lines else {}), proc.stderr

    # ---------------------------------------------------------------- sections

    def run_section(self, name: str) -> None:
        getattr(self, "section_" + name.replace("-", "_"))()


def run(bench: Harness, print_report: Callable[[dict], None], args_summary: dict) -> int:
    """Start, run ``bench.args.sections`` in order, clean up, report; the exit status.

    A section that fails is recorded in ``errors`` (with its traceback), its leftovers are
    cleaned up and the next section still runs, so one run shows every broken section.
    """
    t0 = time.monotonic()
    leaks: list[str] = []
    try:
        bench.start()
        for section in bench.args.sections:
            log(f"{section} section")
            t = time.monotonic()
            try:
                bench.run_section(section)
            except Exception:  # noqa: BLE001 - report, go on with the next section
                bench.errors.append(f"{section}: {traceback.format_exc()}")
                log(f"{section} section failed after {time.monotonic() - t:.1f}s")
                bench.cleanup_all()
            else:
                log(f"{section} section done in {time.monotonic() - t:.1f}s")
    except Exception:  # noqa: BLE001 - report what we have, then clean up
        bench.errors.append(traceback.format_exc())
    finally:
        try:
            leaks = bench.stop()
        except Exception:  # noqa: BLE001
            bench.errors.append(traceback.format_exc())
        if not bench.args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    results = {**bench.results, "leaks": leaks, "errors": bench.errors,
               "elapsed_seconds": round(time.monotonic() - t0, 1),
               "args": {**args_summary, "smoke": bench.args.smoke,
                        "sections": bench.args.sections},
               "env": bench.environment()}
    print_report(results)
    print(f"\nleak check: {'; '.join(leaks) if leaks else 'nothing left behind'}; "
          f"{results['elapsed_seconds']:.0f}s in all")
    for err in bench.errors:
        print(f"ERROR: {err}", file=sys.stderr)
    print(json.dumps(results, sort_keys=True, default=str))
    return 1 if bench.errors else 0


def main(harness: type[Harness], parse_args: Callable[[list[str]], argparse.Namespace],
         child_main: Callable[[dict], None], print_report: Callable[[dict], None],
         args_summary: Callable[[argparse.Namespace], dict], prefix: str,
         argv: list[str] | None = None) -> int:
    """A benchmark script's entry point: a child measurement, or a whole run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    quiet()
    if args.child:
        child_main(json.loads(args.child))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    bench = harness(args, workdir)
    if args.watchdog:
        watchdog(bench, args.watchdog)
    return run(bench, print_report, args_summary(args))


def watchdog(bench: Harness, seconds: float) -> threading.Timer:
    """After ``seconds``: every thread's stack to stderr, the simulator stopped, exit 3.

    A thread rather than faulthandler's own timer, so that the simulator (a process group of
    its own, which outlives us) is stopped and the work directory removed on the way out.
    """
    def fire() -> None:
        log(f"watchdog: still running after {seconds:.0f}s; every thread's stack follows")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        with contextlib.suppress(Exception):
            if bench.sim is not None:
                bench.sim.stop()
        if not bench.args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
