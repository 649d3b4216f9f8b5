"""The operations of structure migrations: reshaping the JSON object of every memory.

A ``MEMORY_STRUCTURE`` migration declares a list of operations (the model is Cambria's lenses)::

    from brainmigrate import structure as s

    [
        s.rename("topic", "topics"),
        s.wrap("topics"),                           # "a" -> ["a"]
        s.move("sentiment", "analysis.sentiment"),  # nest (and the reverse: un-nest)
        s.add("schema_version", 2),                 # set where absent
        s.convert("kind", {"note": "semantic", "event": "episodic"}),
        s.remove("legacy_score", default=None),
        s.within("analysis", [s.rename("mood", "feeling")]),
    ]

**Paths.** ``"analysis.mood"`` is the key ``mood`` of the object at ``analysis``; pass a tuple of
keys, such as ``("a.b", "c")``, when a key contains a dot. A path runs through objects only: a
segment is always a key, never an array index. A memory whose column is SQL NULL or not a JSON
object is left as it is by every operation, and so is one where a parent on the path is absent or
not an object.

**The operations, and their inverses.**

- ``rename(path, to)``: the key takes the name ``to`` in the same parent (a dotted ``to`` is
  refused: use ``move``). Inverse: the rename back. Needs: no memory has the new key already.
- ``move(source, target)``: the value moves to ``target``, whose missing parent objects are created;
  parent objects of the source left empty are removed. Inverse: the move back. Needs: no memory
  has the target already, and where a memory has the source, the target's parents are absent or
  non-empty objects (a move into a non-object cannot be done).
- ``add(path, value)``: ``value`` is set where the key is absent, creating missing parents.
  Inverse: ``remove(path, default=value)``. Needs: no memory has the key already, and its parents
  are absent or non-empty objects.
- ``remove(path, default=None)``: the key is deleted, and parent objects left empty with it. Lossy:
  before-images are kept, so a rollback restores the memories exactly; its displayed inverse is
  ``add(path, default)``.
- ``wrap(path)``: a value ``v`` that is not an array becomes ``[v]``; arrays stay. Inverse:
  ``unwrap(path)``. Needs: no memory has an array of exactly one element there.
- ``unwrap(path)``: an array of exactly one element becomes that element; anything else stays.
  Inverse: ``wrap(path)``. Needs: every value there is an array of one element that is not an array.
- ``convert(path, table)``: a value equal (jsonb ``=``: 1 equals 1.0) to a key of ``table`` becomes
  its value. Inverse: the swapped table. Needs: no memory has a value the table maps to but not
  from. A table that maps two keys to one value, or to a list or an object, is irreversible:
  refused unless the migration keeps before-images.
- ``within(path, operations)``: the operations applied to the object at ``path``, with paths
  relative to it (it is never created nor removed by them). Inverse: ``within`` of the inverses.

**Invertibility.** Each operation says how far its inverse can be trusted: ``INVERTIBLE``,
``CONDITIONAL`` (its ``condition`` says what must hold on the data; each is checked on the value
the operation receives), ``LOSSY`` or ``IRREVERSIBLE``. When no memory breaks a condition,
applying the operations and then ``inverse_of`` them gives back every memory exactly.
"""

from __future__ import annotations

from ._model.structure import (
    Add,
    Convert,
    Invertibility,
    Move,
    Operation,
    Path,
    Remove,
    Rename,
    Unwrap,
    Within,
    Wrap,
    add,
    convert,
    inverse_of,
    move,
    parse_path,
    remove,
    rename,
    unwrap,
    within,
    wrap,
)

__all__ = [
    "Add",
    "Convert",
    "Invertibility",
    "Move",
    "Operation",
    "Path",
    "Remove",
    "Rename",
    "Unwrap",
    "Within",
    "Wrap",
    "add",
    "convert",
    "inverse_of",
    "move",
    "parse_path",
    "remove",
    "rename",
    "unwrap",
    "within",
    "wrap",
]
