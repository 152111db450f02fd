"""Where our VMs live: the cluster's resource pool and its datacenter's VM folder.

Looked up once per session (they do not change while the process lives) and shared by imports,
instances and exports, which all create or find VMs there.
"""

from __future__ import annotations

from vsan_flows.vsphere import inventory
from vsan_flows.vsphere.session import VSphere


def pool_and_folder(ctx: VSphere):
    if "placement" not in ctx.cache:
        cluster = inventory.cluster_by_name(ctx.session, ctx.cluster_name)
        ctx.cache["placement"] = (inventory.resource_pool(ctx.session, cluster),
                                  inventory.vm_folder(ctx.session, cluster))
    return ctx.cache["placement"]
