"""The names of what a rewrite creates, derived from its migration and table: unique to them, each
at most 63 bytes, so that any process resuming the rewrite finds the same objects."""

from __future__ import annotations

import attrs

from .._engine.sql import derived_name
from .._model.sqltext import quote_ident


@attrs.frozen
class RewriteNames:
    """Where a rewrite of ``schema.table`` by ``migration_id`` keeps its objects.

    The shadow and the old table sit in the table's schema (they take its place in turn); the
    change logs and the capture functions sit in brainmigrate's history schema.
    """

    migration_id: str
    schema: str  # the table's schema
    table: str
    history_schema: str

    @property
    def _source(self) -> str:
        # Not the schema: a statement built before any connection (a backfill's) names the
        # shadow through the search path, as the table itself.
        return f"{self.migration_id}\0{self.table}"

    # -- in the table's schema --------------------------------------------------------------------

    @property
    def shadow(self) -> str:
        """The transformed copy while it is built; after the swap, the table's own name is its."""
        return derived_name("bm_new_", self._source)

    @property
    def old(self) -> str:
        """The original table after the swap, kept until contract (or swapped back)."""
        return derived_name("bm_old_", self._source)

    def index(self, position: int, side: str) -> str:
        """The name of the shadow's (``side="new"``) or the old table's (``"old"``) ``position``-th
        index or constraint while it does not carry the original's name."""
        return derived_name(f"bm_{side}{position}_", self._source, readable_chars=20)

    @property
    def capture_trigger(self) -> str:
        """The trigger on the table that logs each changed key (same name both ways)."""
        return derived_name("bm_capture_", self._source, readable_chars=30)

    def mirror_trigger(self, event: str) -> str:
        """The statement trigger on the rewritten table that also writes each ``event``
        (``INSERT``, ``UPDATE``, ``DELETE``) to the old table, when the swap back is instant."""
        return derived_name(f"bm_mirror_{event[0].lower()}_", self._source, readable_chars=30)

    # -- in the history schema ------------------------------------------------------------------

    @property
    def forward_log(self) -> str:
        """Keys changed on the original since the copy began (replayed into the shadow)."""
        return derived_name("rewrite_log_", self._source)

    @property
    def reverse_log(self) -> str:
        """Keys changed on the new table since the swap (replayed into the old one to swap back)."""
        return derived_name("rewrite_back_", self._source)

    @property
    def forward_function(self) -> str:
        return derived_name("rewrite_fn_", self._source)

    @property
    def reverse_function(self) -> str:
        return derived_name("rewrite_back_fn_", self._source)

    # -- qualified ------------------------------------------------------------------------------

    def in_table_schema(self, name: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(name)}"

    def in_history_schema(self, name: str) -> str:
        return f"{quote_ident(self.history_schema)}.{quote_ident(name)}"

    @property
    def qualified_table(self) -> str:
        return self.in_table_schema(self.table)
