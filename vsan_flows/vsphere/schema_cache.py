"""Let suds find a schema type's child by name without walking all its children every time.

suds looks up the schema of every XML element it marshals or unmarshals with
``SchemaObject.get_child(name)``, which walks the type's whole content (through a recursive
``Iter`` that flattens sequences, choices and base-type extensions) until the name matches:
for the large vim25 types (HostSystem ``summary``, a VM's devices) that walk is most of the
CPU of a reply, under the GIL that concurrent flows share (48 ms of CPU for a host summary).

The answer depends only on the type's content (``rawchildren``), which suds builds and
completes while it loads the WSDL (``Schema.dereference`` merges extensions and references
into it) and never changes afterwards: nothing in suds assigns or extends ``rawchildren``
outside loading. So a vim client's schema objects, once the client is built, are *frozen*
here: each gets a dict of ``get_child`` answers, filled as names are asked. Objects that are
not frozen (any other client's schema, anything built later) take suds' own path, unchanged.

What is cached and why it is safe:
- only answers whose child carries the asked name (a type with an ``xsd:any`` matches every
  name; those answers are recomputed, so a reply cannot grow a cache with names of its own
  and the cache is bounded by the schema itself);
- the ancestry (the list of containers suds walked through, used by the marshaller only to
  ask whether one of them is optional) is kept as a tuple: callers only iterate it (suds'
  resolver and ``mx.literal``), and a tuple makes sure no caller can change it for the next;
- concurrent flows: two threads missing the same name compute the same answer and
  the dict's ``setdefault`` keeps one; reading and writing a dict is atomic under the GIL.

Memory: a dict per schema object with content (about 16,800 for vim25, 2 MB) and the answers.

The parsed WSDL is shared between the clients of the process (``wsdlcache``), so freezing one
client's schema speeds up every client built from the same cached definitions, nova's
included: they are the same, complete objects.
"""

from __future__ import annotations

import threading

from suds.xsd.sxbase import SchemaObject

# Name of the per-object cache attribute; its presence is what "frozen" means.
_CACHE = "_vsan_flows_child_cache"

_original_get_child = SchemaObject.get_child
_install_lock = threading.Lock()


def _get_child(self, name):
    """``SchemaObject.get_child``, answered from the object's cache when it is frozen."""
    cache = self.__dict__.get(_CACHE)
    if cache is None:
        return _original_get_child(self, name)
    found = cache.get(name)
    if found is not None:
        return found
    child, ancestry = _original_get_child(self, name)
    if child is None or child.name != name:
        return child, ancestry  # not found, or an xsd:any standing in: not cached
    return cache.setdefault(name, (child, tuple(ancestry)))


def _install() -> None:
    """Route ``SchemaObject.get_child`` through :func:`_get_child` (once per process).

    Subclasses that answer on their own (``Any`` synthesises a child, built-in types have
    none) override ``get_child`` and are not affected.
    """
    with _install_lock:
        if SchemaObject.get_child is not _get_child:
            SchemaObject.get_child = _get_child


def _schema_objects(client):
    """Every schema object reachable from the client's (merged) schema, each once."""
    schema = client.wsdl.schema
    todo = []
    for table in (schema.types, schema.elements, schema.attributes, schema.groups,
                  schema.agrps):
        todo.extend(table.values())
    seen: set[int] = set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not isinstance(obj, SchemaObject):
            continue
        seen.add(id(obj))
        yield obj
        todo.extend(obj.rawchildren)


def freeze(client) -> int:
    """Cache ``get_child`` answers on the schema objects of a fully built suds ``client``.

    Call only with a client whose constructor returned (its WSDL loaded and dereferenced).
    Returns how many schema objects are frozen (already frozen ones count too).
    """
    _install()
    count = 0
    for obj in _schema_objects(client):
        # A leaf (no content: most elements, whose type is looked up instead) answers at
        # once; a cache there would only cost memory.
        if obj.rawchildren:
            if _CACHE not in obj.__dict__:
                setattr(obj, _CACHE, {})
            count += 1
    return count


def thaw(client) -> None:
    """Drop the caches of ``client``'s schema objects (suds' own walk again); for tests."""
    for obj in _schema_objects(client):
        obj.__dict__.pop(_CACHE, None)


def cached_answers(client) -> int:
    """How many ``get_child`` answers the schema of ``client`` holds (for tests)."""
    return sum(len(obj.__dict__.get(_CACHE) or ()) for obj in _schema_objects(client))
