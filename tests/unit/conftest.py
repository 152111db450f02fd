"""Unit-test fixtures shared by several modules."""

from __future__ import annotations

import pytest
from oslo_config import cfg

from vsan_flows import conf as vconf


@pytest.fixture(scope="module")
def conf() -> cfg.ConfigOpts:
    """A configuration with every option at its default (no config file is read)."""
    c = cfg.ConfigOpts()
    vconf.register_opts(c)
    c([], project="vsan-flows", default_config_files=[])
    return c
