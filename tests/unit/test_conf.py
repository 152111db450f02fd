"""Options: defaults and bounds operators rely on, validation at startup, the generated sample."""

import io
import pickle

import pytest
from oslo_config import cfg, generator

from vsan_flows import conf
from vsan_flows.exceptions import ConfigError


@pytest.fixture
def c():
    cf = cfg.ConfigOpts()
    conf.register_opts(cf)
    cf([], project="vsan-flows-test", default_config_files=[])
    return cf


def test_defaults(c):
    assert c.vmware.host_port == 443
    assert c.vmware.insecure is False
    assert c.vmware.datastore_types == ["vsan"]
    assert c.vmware.image_transfer_timeout_secs == 7200
    assert c.vmware.api_retry_count == 10
    assert c.vmware.datastore_regex is None
    assert c.vsan_flows.engine == "serial"
    assert c.vsan_flows.import_retries == 3


def test_importing_registers_nothing_globally():
    """In a fresh interpreter: in this one, nova (imported by the nova driver tests) owns
    cfg.CONF's [vmware], and the nova driver registers [vsan_flows] on it, on purpose."""
    import subprocess
    import sys

    code = ("import vsan_flows.api, vsan_flows.conf, vsan_flows.driver, vsan_flows.cmd.cli; "
            "from oslo_config import cfg; "
            "print('vmware' in cfg.CONF, 'vsan_flows' in cfg.CONF)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_registering_twice_is_harmless(c):
    conf.register_opts(c)
    assert c.vmware.host_port == 443


def test_password_and_db_url_are_secret():
    opts = {o.name: o for _, group in conf.list_opts() for o in group}
    assert opts["host_password"].secret
    assert opts["persistence_connection"].secret


def test_every_option_explains_itself():
    for group, opts in conf.list_opts():
        if group == conf.GLANCE_GROUP:
            continue  # keystoneauth's own options, with keystoneauth's own help
        for opt in opts:
            assert opt.help and len(opt.help) > 20, opt.name


@pytest.mark.parametrize(
    "group, name, bad",
    [
        ("vmware", "image_transfer_timeout_secs", 0),
        ("vmware", "api_retry_count", -1),
        ("vmware", "task_poll_interval", -0.5),
        ("vsan_flows", "max_workers", 0),
        ("vsan_flows", "import_retries", -1),
        ("vsan_flows", "engine", "turbo"),
    ],
)
def test_bounds_are_enforced(c, group, name, bad):
    with pytest.raises(ValueError):
        c.set_override(name, bad, group=group)


def test_persistence_url_defaults_to_sqlite_in_state_dir(c, tmp_path):
    assert conf.persistence_url(c) == "sqlite:////var/lib/vsan-flows/flows.sqlite"
    c.set_override("state_dir", str(tmp_path), group="vsan_flows")
    assert conf.persistence_url(c) == f"sqlite:///{tmp_path}/flows.sqlite"
    assert conf.image_store_dir(c) == f"{tmp_path}/images"
    c.set_override("persistence_connection", "postgresql://u:p@h/db", group="vsan_flows")
    assert conf.persistence_url(c) == "postgresql://u:p@h/db"


def test_bad_regex_names_the_option_and_the_regex_error(c):
    c.set_override("datastore_regex", "vsan(", group="vmware")
    with pytest.raises(ConfigError) as info:
        conf.validate(c)
    msg = str(info.value)
    assert "[vmware] datastore_regex" in msg
    assert "'vsan('" in msg
    assert "missing )" in msg
    assert pickle.loads(pickle.dumps(info.value)).option == "[vmware] datastore_regex"


def test_good_regex_compiles(c):
    c.set_override("datastore_regex", "^vsan.*$", group="vmware")
    assert conf.datastore_pattern(c).match("vsanDatastore")


def test_empty_type_list_is_refused(c):
    c.set_override("datastore_types", [], group="vmware")
    with pytest.raises(ConfigError, match="datastore_types"):
        conf.validate(c)


def test_config_generator_renders_both_groups(monkeypatch):
    monkeypatch.setattr(
        generator, "_get_raw_opts_loaders", lambda ns: [("vsan_flows", conf.list_opts)]
    )
    monkeypatch.setattr(generator, "_get_opt_default_updaters", lambda ns: [])
    gc = cfg.ConfigOpts()
    generator.register_cli_opts(gc)
    gc(["--namespace", "vsan_flows"])
    out = io.StringIO()
    generator.generate(gc, out)
    text = out.getvalue()
    assert "[vmware]" in text and "[vsan_flows]" in text
    assert "#image_transfer_timeout_secs = 7200" in text
    assert "#datastore_types = vsan" in text
