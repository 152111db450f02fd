"""What defines one flow run, as facts: the runtime runs plans, the API makes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vsan_flows import names


@dataclass(frozen=True)
class Plan:
    """Everything persisted about a flow before it runs; all JSON-able, no live objects.

    ``factory`` is the importable name of a function that builds the flow from
    ``factory_kwargs`` (TaskFlow saves both in the flow detail, so any host can rebuild it);
    ``store`` holds the facts the flow starts with; ``book_meta`` what the logbook records
    (operation, instance, image, what a restart should do).
    """

    operation: str
    factory: str
    factory_kwargs: Mapping[str, Any]
    store: Mapping[str, Any]
    book_meta: Mapping[str, Any]

    @property
    def book_name(self) -> str:
        return f"{self.operation} {self.store[names.INSTANCE_NAME]}"
