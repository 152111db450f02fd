"""Flows stored by earlier releases, brought up to today's names before they are loaded.

Atom names were TaskFlow's default (the dotted class path) until they became explicit
(:mod:`vsan_flows.names`). TaskFlow matches stored atom details to the rebuilt flow by name
only: an old detail whose name no atom has any more is ignored, and its atom runs again from
scratch, as if it had never run. Renaming the stored details keeps their states and results.
"""

from __future__ import annotations

import contextlib
import logging

from taskflow.persistence import models

from vsan_flows import names
from vsan_flows.runtime import persistence

LOG = logging.getLogger(__name__)


def upgraded(backend, flow_detail: models.FlowDetail) -> models.FlowDetail:
    """``flow_detail`` with today's atom names: renamed in the store and read back.

    A flow stored with today's names is returned as it is (nothing written).
    """
    renames = {ad.name: names.LEGACY_ATOM_NAMES[ad.name] for ad in flow_detail
               if ad.name in names.LEGACY_ATOM_NAMES}
    if not renames:
        return flow_detail
    persistence.rename_atoms(backend, flow_detail.uuid, renames)
    LOG.info("flow %s was stored with old atom names; renamed %d atom(s) so it resumes where "
             "it stopped", flow_detail.uuid, len(renames))
    with contextlib.closing(backend.get_connection()) as conn:
        return conn.get_flow_details(flow_detail.uuid, lazy=False)
