"""The nova side of the driver, against the pinned nova: private seams, config, exceptions.

vsan_flows.nova overrides private methods of nova's VMwareVMOps; if a nova release renames or
re-signs one, spawn would silently take nova's own path (or break). These tests read the
installed nova and fail first.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest
from oslo_config import cfg


def test_installed_nova_is_a_supported_release():
    from vsan_flows.nova import SUPPORTED_NOVA

    assert version("nova") in SUPPORTED_NOVA


def _check_private_seams():
    from nova.virt.vmwareapi import vmops as nova_vmops

    from vsan_flows.nova import vmops

    for name, params in vmops.SEAMS.items():
        theirs = getattr(nova_vmops.VMwareVMOps, name)
        assert tuple(inspect.signature(theirs).parameters) == params, name
        ours = getattr(vmops.VsanVMOps, name)
        assert tuple(inspect.signature(ours).parameters) == params, name
    # and nova's spawn still calls them, in this order, after building the VM
    source = inspect.getsource(nova_vmops.VMwareVMOps.spawn)
    order = [source.index(s) for s in ("self.build_virtual_machine(",
                                       "self._fetch_image_if_missing(context, vi)",
                                       "self._use_disk_image_as_linked_clone(vm_ref, vi)",
                                       "vm_util.power_on_instance(")]
    assert order == sorted(order)


def _check_driver_class():
    from nova.virt.vmwareapi.driver import VMwareVCDriver

    from vsan_flows.nova.driver import VsanVCDriver

    assert issubclass(VsanVCDriver, VMwareVCDriver)


def _in_fresh_python(check: str) -> None:
    """Run ``check`` of this module in a new interpreter.

    nova's vmwareapi session module reads CONF when it is imported (as default arguments):
    imported here, before a functional test parses nova's CONF in the same process, it would
    keep unset values (host_ip None) for the rest of the run.
    """
    out = subprocess.run([sys.executable, "-c", f"import {__name__} as t; t.{check}()"],
                         capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_private_seams_exist_with_the_signatures_we_override():
    _in_fresh_python("_check_private_seams")


def test_the_driver_is_a_vmware_vc_driver():
    _in_fresh_python("_check_driver_class")


def test_nova_loads_it_by_dotted_path_through_the_alias():
    """nova 34 imports 'nova.virt.' + compute_driver; the .pth-installed alias answers."""
    code = ("from oslo_utils import importutils; "
            "c = importutils.import_class('nova.virt.vsan_flows.nova.driver.VsanVCDriver'); "
            "from vsan_flows.nova.driver import VsanVCDriver; print(c is VsanVCDriver)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_our_options_register_on_novas_config_without_duplicates():
    import nova.conf

    from vsan_flows import conf as vconf

    conf = cfg.ConfigOpts()
    for group, opts in nova.conf.vmware.list_opts().items():
        conf.register_opts(opts, group=group)
    conf([], project="nova", default_config_files=[])
    before = set(conf.vmware)
    vconf.register_nova_opts(conf)
    vconf.register_nova_opts(conf)  # twice: a restarted driver in one process
    assert set(conf.vmware) == before
    assert conf.vsan_flows.datastore_types == ["vsan"]
    assert conf.vsan_flows.nova_image_service == "glance"
    # what the full library registers would collide: [vmware] is nova's
    with pytest.raises(cfg.DuplicateOptError):
        vconf.register_opts(conf)


def test_the_sample_config_namespace_is_declared():
    names = {ep.name: ep.value for ep in entry_points(group="oslo.config.opts")}
    assert names.get("vsan_flows.nova") == "vsan_flows.conf:list_nova_opts"
    from vsan_flows import conf as vconf

    [(group, opts)] = vconf.list_nova_opts()
    assert group == "vsan_flows"
    assert {"datastore_types", "state_dir", "nova_image_service"} <= {o.name for o in opts}


@pytest.mark.parametrize(("ours", "theirs"), [
    ("InvalidImage", "ImageUnacceptable"),
    ("ImageNotFound", "ImageNotFound"),
    ("InstanceNotFound", "InstanceNotFound"),
    ("VSphereError", "InstanceDeployFailure"),
])
def test_spawn_errors_become_the_nova_class_that_decides_abort_or_reschedule(ours, theirs):
    from nova import exception as nova_exc

    from vsan_flows import exceptions
    from vsan_flows.nova import errors

    samples = {
        "InvalidImage": exceptions.InvalidImage("not streamOptimized", image_id="i", found="x"),
        "ImageNotFound": exceptions.ImageNotFound("i"),
        "InstanceNotFound": exceptions.InstanceNotFound("u"),
        "VSphereError": exceptions.VSphereError("vCenter said no"),
    }
    mapped = errors.for_spawn(samples[ours], instance_uuid="u", image_id="i")
    assert type(mapped) is getattr(nova_exc, theirs)
    if ours == "InvalidImage":
        assert "not streamOptimized" in str(mapped)


@pytest.mark.parametrize(("ours", "theirs"), [
    ("VCenterCertificateError", "InvalidConfiguration"),
    ("ConfigError", "InvalidConfiguration"),
    ("VCenterUnreachable", "HypervisorUnavailable"),
])
def test_start_errors_stop_nova_compute_with_our_one_line(ours, theirs):
    from nova import exception as nova_exc

    from vsan_flows import exceptions
    from vsan_flows.nova import errors

    samples = {
        "VCenterCertificateError": exceptions.VCenterCertificateError(
            "vc", 443, "self-signed certificate (100%)", None),
        "ConfigError": exceptions.ConfigError("[vmware] ca_file", "/x does not exist"),
        "VCenterUnreachable": exceptions.VCenterUnreachable("vc", 443, "refused (3 attempts)"),
    }
    mapped = errors.for_start(samples[ours])
    assert type(mapped) is getattr(nova_exc, theirs)
    assert str(mapped) == str(samples[ours])  # ours verbatim, not nova's generic text


def test_a_missing_ca_file_is_a_configuration_error_before_any_connection(tmp_path):
    from vsan_flows import exceptions
    from vsan_flows.vsphere import session

    missing = tmp_path / "nope.pem"
    with pytest.raises(exceptions.ConfigError) as err:
        # port 1 on a TEST-NET address: nothing is contacted before the file is looked at
        session.check_before_login("192.0.2.1", 1, ca_file=str(missing), insecure=False,
                                   retries=0)
    assert "[vmware] ca_file" in str(err.value) and str(missing) in str(err.value)
