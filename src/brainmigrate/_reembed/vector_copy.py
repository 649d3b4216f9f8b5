"""Writing a backfill's vectors in binary: a ``COPY ... (FORMAT binary)`` of each batch into a
temporary table, then one UPDATE of the memories from it.

Formatting a vector's floats as text costs the client about 200 µs a vector of 384 (and the server
parses them again); packing them as pgvector's binary input costs a few. The binary input of
``vector`` is its dimensions (int16), a reserved int16 (0), then each element as a big-endian
float4; of ``halfvec`` the same with float2 elements. pgvector checks it as it checks text
(dimensions against the column's, no NaN or infinity); the values are checked here first, so
that a bad vector is refused with the model's name on it, before anything is sent.

The temporary table is created in the transaction of the batch's write and dropped when it
commits (``ON COMMIT DROP``): nothing is left on the connection, and the write is rolled back
with the checkpoint it belongs to, as the UPDATE it replaces is. Keys of other types than uuid,
integers and text, and roles that may not create temporary tables, fall back to the engine's
text UPDATE.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs

from .._errors import MigrationValidationError
from .._model.sqltext import quote_ident
from .._model.types import Connection

if TYPE_CHECKING:
    from .._engine.entries import Entry
    from .._engine.table import TableShape

#: The signature, flags and header extension of a binary COPY, and its end.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
#: A tuple of three fields (key, vector, hash); a field's length prefix for NULL and for a uuid.
THREE_FIELDS = struct.pack(">h", 3)
NULL_FIELD = struct.pack(">i", -1)
UUID_FIELD = struct.pack(">i", 16)

#: Element formats of pgvector's binary input, by column type.
ELEMENTS = {"vector": ("f", 4), "halfvec": ("e", 2)}
#: The largest magnitude each element type holds (what a larger value is refused with).
LIMITS = {"vector": "3.4e38", "halfvec": "65,504"}


class VectorField(bytes):
    """A vector already packed as a COPY field (its length, then pgvector's binary input)."""


@attrs.frozen(kw_only=True)
class VectorCodec:
    """Packs vectors of ``dimensions`` floats for a ``kind`` column (``vector`` or ``halfvec``)."""

    kind: str = attrs.field(validator=attrs.validators.in_(ELEMENTS))
    dimensions: int = attrs.field(validator=attrs.validators.ge(1))
    _struct: struct.Struct = attrs.field(init=False)

    @_struct.default
    def _compiled(self) -> struct.Struct:
        element, _ = ELEMENTS[self.kind]
        return struct.Struct(f">ihh{self.dimensions}{element}")

    @property
    def length(self) -> int:
        """The bytes of a vector's binary input (its field's length)."""
        return self._struct.size - 4

    def field(self, values: Sequence[float]) -> VectorField:
        """``values`` as a COPY field; ValueError saying what is wrong with them."""
        if len(values) != self.dimensions:
            raise ValueError(f"has {len(values)} dimensions, not {self.dimensions}")
        try:
            total = sum(values)  # NaN or infinity anywhere makes the sum so: one pass in C
            if not math.isfinite(total) and not all(map(math.isfinite, values)):
                raise ValueError("holds NaN or infinity")
            return VectorField(self._struct.pack(self.length, self.dimensions, 0, *values))
        except (OverflowError, struct.error):
            raise ValueError(f"holds a value beyond what {self.kind} stores (±{LIMITS[self.kind]})") from None
        except TypeError as exc:
            raise ValueError(f"holds something other than numbers: {exc}") from None


def copy_payload(rows: Sequence[bytes]) -> bytes:
    """A whole binary COPY of ``rows`` (each a tuple, packed)."""
    return b"".join((COPY_HEADER, *rows, COPY_TRAILER))


def _packer(fmt: str, size: int) -> Callable[[Any], bytes]:
    compiled = struct.Struct(f">i{fmt}")
    return lambda key: compiled.pack(size, key)


def _uuid_field(key: Any) -> bytes:
    value = key if isinstance(key, uuid.UUID) else uuid.UUID(str(key))
    return UUID_FIELD + value.bytes


def _text_field(key: Any) -> bytes:
    data = str(key).encode("utf-8", "surrogatepass")
    return struct.pack(">i", len(data)) + data


#: How a key of each type is packed as a COPY field.
KEY_FIELDS: dict[str, Callable[[Any], bytes]] = {
    "uuid": _uuid_field,
    "int8": _packer("q", 8),
    "int4": _packer("i", 4),
    "int2": _packer("h", 2),
    "text": _text_field,
    "varchar": _text_field,
}


def hash_field(value: Any) -> bytes:
    """A text hash (a uuid, or None) as a COPY field."""
    if value is None:
        return NULL_FIELD
    return _uuid_field(value)


@attrs.frozen(kw_only=True)
class VectorCopyWriter:
    """Writes a backfill's batches (the new vector and its text hash, by key) through binary COPY.

    A :class:`~brainmigrate._engine.writers.BatchWriter` of the data engine.
    """

    migration_id: str
    table: str
    key: str
    key_type: str
    vector_column: str
    hash_column: str
    codec: VectorCodec
    key_field: Callable[[Any], bytes]

    @classmethod
    def of(
        cls, migration_id: str, shape: TableShape, vector_column: str, hash_column: str
    ) -> VectorCopyWriter | None:
        """The writer for ``shape``'s columns, or None when their types are not ones it packs
        (the engine then writes the batch UPDATE with text)."""
        vector = shape.columns.get(vector_column)
        hashed = shape.columns.get(hash_column)
        key_field = KEY_FIELDS.get(shape.key.type_name)
        if vector is None or hashed is None or hashed.type_name != "uuid" or key_field is None:
            return None
        dimensions = _dimensions(vector.sql_type)
        if vector.type_name not in ELEMENTS or dimensions is None:
            return None
        return cls(
            migration_id=migration_id,
            table=shape.qualified,
            key=shape.key.name,
            key_type=shape.key.sql_type,
            vector_column=vector_column,
            hash_column=hash_column,
            codec=VectorCodec(kind=vector.type_name, dimensions=dimensions),
            key_field=key_field,
        )

    # -- the engine's BatchWriter ----------------------------------------------------------------

    def handles(self, fields: tuple[str, ...]) -> bool:
        return len(fields) == 2 and set(fields) == {self.vector_column, self.hash_column}

    def encode(self, entries: list[Entry]) -> None:
        """Pack each entry's new vector now (a vector that cannot be packed is refused by
        :meth:`write`)."""
        name, field = self.vector_column, self.codec.field
        for entry in entries:
            changes = entry.changes
            if not changes:
                continue
            value = changes.get(name)
            if value is not None and not isinstance(value, VectorField):
                with contextlib.suppress(ValueError):
                    changes[name] = field(value)

    async def write(self, conn: Connection, entries: Sequence[Entry]) -> int:
        """COPY the entries' vectors and hashes into the batch's temporary table, then UPDATE the
        memories from it (emptying it); the number of memories updated."""
        payload = copy_payload([self._row(entry) for entry in entries])
        if not conn.is_in_transaction():
            async with conn.transaction():
                return await self._send(conn, payload)
        return await self._send(conn, payload)

    # -- inside --------------------------------------------------------------------------------

    @property
    def staging(self) -> str:
        """The temporary table's name: one per key and vector type."""
        digest = hashlib.sha256(f"{self.key_type}\0{self.codec.kind}\0{self.codec.dimensions}".encode())
        return f"brainmigrate_vectors_{digest.hexdigest()[:16]}"

    def _row(self, entry: Entry) -> bytes:
        changes = entry.changes
        assert changes is not None
        value = changes.get(self.vector_column)
        if value is None:
            vector: bytes = NULL_FIELD
        elif isinstance(value, VectorField):
            vector = value
        else:
            try:
                vector = self.codec.field(value)
            except ValueError as exc:
                raise MigrationValidationError(
                    f"re-embedding {self.migration_id!r}: the new vector of memory {entry.key} {exc}; "
                    "nothing of this batch was written. Fix the model call (or the model declared), "
                    "then run again",
                    migration_id=self.migration_id,
                ) from None
        try:
            key = self.key_field(entry.key)
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise MigrationValidationError(
                f"re-embedding {self.migration_id!r}: memory key {entry.key!r} is not a {self.key_type} "
                f"({exc}); the backfill writes the keys it read",
                migration_id=self.migration_id,
            ) from None
        return THREE_FIELDS + key + vector + hash_field(changes.get(self.hash_column))

    async def _send(self, conn: Connection, payload: bytes) -> int:
        staging = quote_ident(self.staging)
        await conn.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} (k {self.key_type}, "
            f"v {self.codec.kind}({self.codec.dimensions}), h uuid) ON COMMIT DROP"
        )
        await conn.copy_to_table(
            self.staging,
            # A buffer, which asyncpg documents (its type hints leave it out); bytes would be
            # taken for a file's path.
            source=cast(Any, memoryview(payload)),
            schema_name="pg_temp",
            columns=["k", "v", "h"],
            format="binary",
        )
        status: str = await conn.execute(
            f"WITH s AS (DELETE FROM pg_temp.{staging} RETURNING k, v, h) "
            f"UPDATE {self.table} AS m SET {quote_ident(self.vector_column)} = s.v, "
            f"{quote_ident(self.hash_column)} = s.h FROM s WHERE m.{quote_ident(self.key)} = s.k"
        )
        return int(status.split()[-1])


def _dimensions(sql_type: str) -> int | None:
    """The dimensions of ``vector(384)`` (from the catalog's type), or None without them."""
    _, _, rest = sql_type.partition("(")
    digits = rest.rstrip(")")
    return int(digits) if digits.isdigit() and int(digits) > 0 else None
