"""The notes our VMs carry so a re-run or a revert knows whose they are.

vCenter names are not ownership: a person (or another flow) may create a VM with the same
name. Each VM a flow creates carries the flow's token in its annotation; a re-run after a crash
adopts a VM only when the note says this flow made it, and a revert destroys only such VMs.
(Image cache entries have richer rules of their own: :mod:`vsan_flows.imagecache`.)
"""

from __future__ import annotations


def instance_note(flow_token: str) -> str:
    return f"vsan_flows instance: flow={flow_token}"


def clone_note(flow_token: str) -> str:
    return f"vsan_flows snapshot clone: flow={flow_token}"
