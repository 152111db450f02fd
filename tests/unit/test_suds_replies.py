"""suds parses replies through one MultiRef per binding; threads must not get each other's body.

A thread switch inside ``MultiRef.process`` is simulated deterministically: while the first
reply is being processed, a second reply is processed on the same (shared) instance.
"""

from __future__ import annotations

import suds.metrics  # noqa: F401  (suds.sax.parser uses it without importing it)
from suds.bindings.multiref import MultiRef
from suds.sax.parser import Parser

from vsan_flows.vsphere.suds_replies import PerReplyMultiRef


def _body(tag: str):
    xml = f"<Body><{tag}><returnval>x</returnval></{tag}></Body>"
    return Parser().parse(string=xml.encode()).root()


def _interleaved(shared, monkeypatch) -> list[str]:
    """Process reply A on ``shared``; another thread processes reply B half-way through."""
    original = MultiRef.update
    switched = []

    def update(self, node):
        if not switched:
            switched.append(True)
            shared.process(_body("FindChildResponse"))  # the other thread's reply
        return original(self, node)

    monkeypatch.setattr(MultiRef, "update", update)
    mine = shared.process(_body("RetrievePropertiesExResponse"))
    return [c.name for c in mine.children]


def test_shared_multiref_hands_a_reply_the_other_threads_body(monkeypatch):
    # The failure suds has on its own (why suds_replies exists): A ends up with B's body.
    assert _interleaved(MultiRef(), monkeypatch) == ["FindChildResponse"]


def test_per_reply_multiref_keeps_each_reply_its_own_body(monkeypatch):
    assert _interleaved(PerReplyMultiRef(), monkeypatch) == ["RetrievePropertiesExResponse"]
