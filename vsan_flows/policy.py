"""Run-time settings tasks read, built from config on every host (transient, never persisted).

Config can differ between the host that started a flow and the one that resumes it; the
resuming host's config wins, as it would for any other restarted service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from oslo_config import cfg

from vsan_flows import conf as vconf


@dataclass(frozen=True)
class Policy:
    datastore_types: list[str] = field(default_factory=lambda: ["vsan"])
    datastore_regex: re.Pattern[str] | None = None
    verify_stored_size: bool = True

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> Policy:
        return cls(datastore_types=vconf.allowed_datastore_types(conf),
                   datastore_regex=vconf.datastore_pattern(conf),
                   verify_stored_size=conf.vsan_flows.verify_stored_size)
