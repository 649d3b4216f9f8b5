"""The table surgery of a rewrite: the shadow table created beside the original, its indexes built
once it is filled (``shadow``), the swap that puts it in the original's place, the swap back and
the drops that end it (``swap``, with what the table in place takes over in ``takeover``).

Every index, constraint and identity sequence the shadow or the old table holds while it does not
carry the original's name is named ``names.index(position(original name), side)`` (``naming``):
the same on any connection, and reversible without remembering anything but the names of the
table in place. Definitions come from :mod:`..definition`, read with an empty search path, so
every name in them is schema-qualified.
"""

from .naming import position
from .shadow import build_indexes, create_shadow, drop_shadow, index_build_progress
from .swap import drop_old, swap, swap_back, validate_foreign_keys

__all__ = [
    "build_indexes",
    "create_shadow",
    "drop_old",
    "drop_shadow",
    "index_build_progress",
    "position",
    "swap",
    "swap_back",
    "validate_foreign_keys",
]
