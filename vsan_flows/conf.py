"""Configuration options for vsan_flows.

Options are registered by :func:`register_opts` on a ConfigOpts the caller owns, never at import
time on the global CONF: nova already registers a ``[vmware]`` group with many of the same names,
and a library that registered behind the host's back would fail with DuplicateOptError or, worse,
silently shadow the host's help and defaults. :func:`list_opts` feeds oslo-config-generator
(entry point ``oslo.config.opts: vsan_flows = vsan_flows.conf:list_opts``).

The ``[vmware]`` names match nova's where the meaning is the same, so an operator can copy values
from nova.conf.
"""

from __future__ import annotations

import os
import re

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from vsan_flows.exceptions import ConfigError

VMWARE_GROUP = "vmware"
FLOWS_GROUP = "vsan_flows"
GLANCE_GROUP = "glance"
GLANCE_SERVICE_TYPE = "image"

DEFAULT_STATE_DIR = "/var/lib/vsan-flows"
#: How many flows one process runs at once unless configured ([vsan_flows] max_concurrent_flows).
#: At least what nova itself runs at once on a host (max_concurrent_builds 10 plus
#: max_concurrent_snapshots 5: a lower bound here would throttle nova's own concurrency), and
#: what VMware Horizon allows by default per vCenter (20 concurrent provisioning operations).
DEFAULT_MAX_CONCURRENT_FLOWS = 20

vmware_opts = [
    cfg.HostAddressOpt("host_ip", help="Hostname or IP address of the vCenter server."),
    cfg.PortOpt("host_port", default=443, help="HTTPS port of the vCenter server."),
    cfg.StrOpt("host_username", help="User name for the vCenter login."),
    cfg.StrOpt(
        "host_password",
        secret=True,
        help="Password for the vCenter login. Never logged or persisted in flow state.",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="Skip verification of vCenter's TLS certificate. Only for test rigs: it allows a "
        "man in the middle to read the credentials. Ignored when ca_file is set.",
    ),
    cfg.StrOpt(
        "ca_file",
        help="CA bundle used to verify vCenter's certificate; when unset the system trust "
        "store is used (unless insecure is true).",
    ),
    cfg.StrOpt(
        "cluster_name",
        help="Name of the vCenter cluster whose datastores, resource pool and hosts are used.",
    ),
    cfg.StrOpt(
        "datastore_regex",
        help="Python regular expression selecting datastores by name. Like nova, it is applied "
        "with re.match: anchored at the start of the name only, so 'vsan' also selects "
        "'vsanDatastore2'; end it with '$' to match whole names. Unset means every datastore "
        "of an allowed type.",
    ),
    cfg.IntOpt(
        "api_retry_count",
        default=10,
        min=0,
        help="How many times a vSphere API call is retried after a transient fault "
        "(connection drop, session expiry) before the operation fails.",
    ),
    cfg.IntOpt(
        "connection_timeout",
        default=300,
        min=1,
        help="Seconds a vCenter SOAP call may wait for the next bytes of vCenter's answer "
        "before the connection counts as failed (and the call is retried api_retry_count "
        "times). Without it a call sent into a silent network partition waits for ever; "
        "vCenter answers calls in seconds, the long work runs in tasks that are polled.",
    ),
    cfg.FloatOpt(
        "task_poll_interval",
        default=0.5,
        min=0,
        help="Seconds between polls of a running vCenter task.",
    ),
    cfg.StrOpt(
        "wsdl_location",
        help="URL of the vSphere service WSDL (e.g. file:///path/vimService.wsdl). Needed when "
        "the server does not serve one (the simulator) or to avoid fetching it on every start.",
    ),
    cfg.IntOpt(
        "image_transfer_timeout_secs",
        default=7200,
        min=1,
        help="Seconds one image transfer (import into or export from vCenter) may run before it "
        "is aborted and its lease released. Size it for the largest image over the slowest link.",
    ),
    cfg.ListOpt(
        "datastore_types",
        default=["vsan"],
        help="Datastore summary.type values spawn may place disks on (compared "
        "case-insensitively). nova allows VMFS, NFS, NFS41 and vsan for streamOptimized images; "
        "this library is for vSAN, so only vsan is allowed unless configured.",
    ),
]

flows_opts = [
    cfg.StrOpt(
        "state_dir",
        default=DEFAULT_STATE_DIR,
        help="Directory for local state: the default sqlite flow database and the local image "
        "store. Must survive restarts, or interrupted flows cannot be resumed.",
    ),
    cfg.StrOpt(
        "persistence_connection",
        secret=True,
        help="SQLAlchemy URL of the TaskFlow persistence backend where flow state is kept so "
        "flows can resume after a crash. Unset means sqlite:///<state_dir>/flows.sqlite. "
        "Marked secret because database URLs usually carry a password.",
    ),
    cfg.StrOpt(
        "sqlite_synchronous",
        default="normal",
        choices=[
            ("normal", "a recorded flow step survives the process dying (SIGKILL, a compute "
             "service crash or restart); the last steps may be lost if the machine loses "
             "power or the kernel crashes. No fsync per step."),
            ("full", "a recorded flow step also survives power loss and kernel crashes: one "
             "fsync per step (about 35 per spawn)"),
        ],
        help="Durability of the default sqlite flow database (write-ahead log). Ignored for "
        "PostgreSQL and MySQL/MariaDB, whose own settings apply.",
    ),
    cfg.StrOpt(
        "engine",
        default="serial",
        choices=[
            ("serial", "run tasks one at a time in the calling thread"),
            ("parallel", "run independent tasks concurrently in a thread pool"),
        ],
        help="TaskFlow engine type used to run flows.",
    ),
    cfg.IntOpt(
        "max_workers",
        min=1,
        help="Worker threads for the parallel engine. Unset lets TaskFlow choose.",
    ),
    cfg.IntOpt(
        "max_concurrent_flows",
        default=DEFAULT_MAX_CONCURRENT_FLOWS,
        min=1,
        help="Flows this process runs at once (spawns and snapshots through one driver, and "
        "the flows a restart resumes); more wait for a running one to end. Each flow mostly "
        "waits on vCenter, so this, not the CPU count, sets how many vCenter operations "
        "overlap. The default covers nova's own max_concurrent_builds (10) plus "
        "max_concurrent_snapshots (5) and matches VMware Horizon's default of 20 "
        "concurrent provisioning operations per vCenter.",
    ),
    cfg.IntOpt(
        "import_retries",
        default=3,
        min=0,
        help="How many times the import (spawn) or export (snapshot) subflow is reverted and "
        "retried with a fresh lease after a transfer failure. 0 means fail on the first error.",
    ),
    cfg.FloatOpt(
        "image_lock_timeout",
        default=7200.0,
        min=0.0,
        help="Seconds a spawn waits for another spawn that is importing the same image (one "
        "import per image per datastore; the others link to it). Locks live under "
        "<state_dir>/locks and, when jobboard_hosts is set, also in that ZooKeeper (under "
        "jobboard_path), so hosts sharing it import an image once. After that the spawn fails, "
        "having created nothing.",
    ),
    cfg.BoolOpt(
        "verify_stored_size",
        default=True,
        help="After an import, check what vSAN offers as proof the disk landed, and fail "
        "(rolling back) when it disagrees: the import lease is still ready (the host fails it "
        "when writing the disk fails) and the VM's disk sits on the chosen datastore with the "
        "image's capacity. vSAN has no data file whose byte count could be read; the host's "
        "answer to the upload is always checked.",
    ),
    cfg.StrOpt(
        "image_service",
        default="local",
        choices=[
            ("local", "a directory of images (image_store_dir): the demo and offline setups"),
            ("glance", "Glance, reached with the [glance] options (endpoint, service user, CA)"),
        ],
        help="Where spawn reads images and snapshots are stored.",
    ),
    cfg.StrOpt(
        "glance_hash_algorithm",
        default="sha512",
        help="hashlib algorithm computed over every snapshot uploaded to Glance and compared "
        "with the os_hash_value Glance reports. Must equal glance-api's [DEFAULT] "
        "hashing_algorithm (sha512 unless changed there); a mismatch fails the upload with "
        "an error naming both.",
    ),
    cfg.StrOpt(
        "image_store_dir",
        help="Directory of the local image service (images as <id>.data + <id>.json). Unset "
        "means <state_dir>/images.",
    ),
    cfg.ListOpt(
        "jobboard_hosts",
        help="ZooKeeper servers (host:port, comma-separated) of the jobboard on which flows are "
        "posted as jobs and run by `vsan-flows conductor` processes on any host. Unset means no "
        "jobboard: flows run in the calling process.",
    ),
    cfg.StrOpt(
        "jobboard_path",
        default="/vsan-flows/jobs",
        help="ZooKeeper path of the jobboard; every poster and conductor of one deployment "
        "must use the same path (and the same persistence_connection).",
    ),
    cfg.StrOpt(
        "conductor_name",
        help="Name this host's conductor claims jobs under (shown as the owner in `vsan-flows "
        "jobs list`). Unset means the host name.",
    ),
    cfg.FloatOpt(
        "conductor_wait_timeout",
        default=1.0,
        min=0.05,
        help="Seconds an idle conductor waits before looking at the jobboard again; also the "
        "longest a free job (new, or released by a dead conductor) waits to be claimed.",
    ),
    cfg.FloatOpt(
        "jobboard_session_timeout",
        default=10.0,
        min=1.0,
        help="ZooKeeper session timeout in seconds. A conductor that dies (kill -9, power loss, "
        "partition) keeps its claim this long before another conductor can take the job over. "
        "The server bounds it to 2-20 times its tickTime.",
    ),
]


# Under nova (vsan_flows.nova), nova owns [vmware] and its values are the source of truth; the
# few settings nova has no equivalent for live in our own group instead.
nova_opts = [
    cfg.ListOpt(
        "datastore_types",
        default=["vsan"],
        help="Datastore summary.type values on which nova's streamOptimized spawns and their "
        "snapshots run through vsan_flows' flows (compared case-insensitively); every other "
        "datastore keeps nova's own path.",
    ),
    cfg.IntOpt(
        "image_transfer_timeout_secs",
        default=7200,
        min=1,
        help="Seconds one image transfer (import into or export from vCenter) may run before "
        "it is aborted and its lease released.",
    ),
    cfg.StrOpt(
        "nova_image_service",
        default="glance",
        choices=[
            ("glance", "nova's image API (Glance) with the request's credentials"),
            ("local", "the local image store under image_store_dir (test rigs)"),
        ],
        help="Where the flows read images and write snapshots when running inside nova.",
    ),
]


def register_nova_opts(conf: cfg.ConfigOpts) -> None:
    """Register our options on nova's ConfigOpts: [vsan_flows] only, never [vmware].

    Registering twice is harmless (oslo.config ignores an identical option), so the driver can
    call this on every start.
    """
    conf.register_opts(flows_opts, group=FLOWS_GROUP)
    conf.register_opts(nova_opts, group=FLOWS_GROUP)


def list_nova_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """oslo-config-generator namespace ``vsan_flows.nova``: what nova.conf gains."""
    return [(FLOWS_GROUP, [*flows_opts, *nova_opts])]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register our groups on a ConfigOpts the caller owns (see the module docstring)."""
    conf.register_opts(vmware_opts, group=VMWARE_GROUP)
    conf.register_opts(flows_opts, group=FLOWS_GROUP)
    register_glance_opts(conf)


def register_glance_opts(conf: cfg.ConfigOpts) -> None:
    """``[glance]`` as nova and cinder have it: keystoneauth's own session, auth and adapter
    options (endpoint_override or catalog lookup, service user, cafile), nothing of ours, so
    the same section works in nova.conf and registering it on nova's CONF is harmless."""
    ks_loading.register_session_conf_options(conf, GLANCE_GROUP)
    ks_loading.register_auth_conf_options(conf, GLANCE_GROUP)
    ks_loading.register_adapter_conf_options(conf, GLANCE_GROUP)
    conf.set_default("service_type", GLANCE_SERVICE_TYPE, group=GLANCE_GROUP)


def _glance_list_opts() -> list[cfg.Opt]:
    opts = (ks_loading.get_session_conf_options() + ks_loading.get_auth_common_conf_options()
            + ks_loading.get_auth_plugin_conf_options("password")
            + ks_loading.get_adapter_conf_options(include_deprecated=False))
    seen: dict[str, cfg.Opt] = {}
    for opt in opts:
        seen.setdefault(opt.dest, opt)
    for opt in seen.values():
        if opt.dest == "service_type":
            opt.default = GLANCE_SERVICE_TYPE
    return sorted(seen.values(), key=lambda o: o.dest)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for oslo-config-generator; copies so the generator cannot mutate ours."""
    return [(VMWARE_GROUP, list(vmware_opts)), (FLOWS_GROUP, list(flows_opts)),
            (GLANCE_GROUP, _glance_list_opts())]


def datastore_pattern(conf: cfg.ConfigOpts) -> re.Pattern[str] | None:
    """Compile ``[vmware] datastore_regex`` so a typo fails at start, not at first spawn."""
    regex = conf.vmware.datastore_regex
    if regex is None or regex == "":
        return None
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ConfigError(
            "[vmware] datastore_regex",
            f"{regex!r} is not a valid regular expression ({exc})",
            "Fix the expression (Python re syntax) or unset it to allow every datastore name.",
        ) from exc


def allowed_datastore_types(conf: cfg.ConfigOpts) -> list[str]:
    """The configured datastore types, stripped; an empty list would make spawn impossible."""
    types = [t.strip() for t in conf.vmware.datastore_types or [] if t.strip()]
    if not types:
        raise ConfigError(
            "[vmware] datastore_types",
            "the list is empty, so no datastore could ever be chosen",
            "Set it to vsan (the default) or a list such as vsan,VMFS.",
        )
    return types


def state_dir(conf: cfg.ConfigOpts) -> str:
    return os.path.abspath(conf.vsan_flows.state_dir)


def persistence_url(conf: cfg.ConfigOpts) -> str:
    """The persistence backend URL, defaulting to a sqlite file under state_dir.

    An absolute state_dir gives the four-slash form sqlite:////var/lib/..., which SQLAlchemy
    reads as an absolute path.
    """
    url = conf.vsan_flows.persistence_connection
    if url:
        return url
    return "sqlite:///" + os.path.join(state_dir(conf), "flows.sqlite")


def image_store_dir(conf: cfg.ConfigOpts) -> str:
    return os.path.abspath(
        conf.vsan_flows.image_store_dir or os.path.join(state_dir(conf), "images")
    )


def validate(conf: cfg.ConfigOpts) -> None:
    """Check values that oslo.config's type bounds cannot, so errors surface at startup."""
    datastore_pattern(conf)
    allowed_datastore_types(conf)
