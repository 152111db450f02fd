"""The image cache's naming and ownership rules: one shadow VM per image per datastore.

These rules are what makes resume and revert safe without any state beyond names, so they are
written once, here, and read by the tasks that look up, create, adopt and remove entries:

* An entry is named after the image and the datastore (:func:`vm_name`): two spawns of one
  image on one datastore look for the same VM.
* An entry carries a note (:func:`note`) naming the image and the flow that created it. Only
  a VM with our note for this image counts as an entry (a half-import never gets it), and only
  the flow whose token is in the note may remove it again (:func:`made_by`).
"""

from __future__ import annotations

NOTE_PREFIX = "vsan_flows image cache"


def vm_name(image_id: str, datastore_moref: str) -> str:
    return f"vsanflows-image-{image_id}-{datastore_moref}"


def name_prefix(image_id: str) -> str:
    """What every entry of ``image_id`` starts with, whatever its datastore."""
    return vm_name(image_id, "")


def note(image: dict, flow_token: str) -> str:
    return f"{NOTE_PREFIX}: image={image['id']} size={image['size']} flow={flow_token}"


def is_entry_for(vm_note: str, image_id: str) -> bool:
    return vm_note.startswith(NOTE_PREFIX) and f"image={image_id} " in vm_note


def made_by(vm_note: str, flow_token: str) -> bool:
    return f"flow={flow_token}" in vm_note
