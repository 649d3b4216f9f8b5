"""The base class of MEMORY_STRUCTURE migrations: a declared reshaping of a JSONB column."""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

from .._errors import MigrationValidationError
from .data import DataMigration
from .items import DataSource
from .metadata import MigrationType
from .migration import MigrationKind
from .structure import Operation, check_operations, irreversible, needs_images

#: The memories of a Second Brain store, by key; a structure migration reads no column into Python.
MEMORIES_BY_KEY = DataSource(table="memories", key="id")


class MemoryStructureMigration(DataMigration):
    """Reshape a JSONB column of every memory: rename, nest, wrap, convert keys, on the server.

    Override :meth:`operations` with a list of :mod:`brainmigrate.structure` operations. The list
    compiles to one SQL expression over :attr:`column`, applied to :attr:`source` in key ranges by
    the data engine (checkpoints, resume, leases, progress), writing only memories whose value
    changes. Rollback applies the inverted operations in reverse order; operations that drop data
    (``remove``) keep the before-images of the changed memories instead, so rollback is exact.
    """

    kind: ClassVar[MigrationKind] = MigrationKind.STRUCTURE
    migration_types: ClassVar[frozenset[MigrationType]] = frozenset({MigrationType.MEMORY_STRUCTURE})

    source: ClassVar[DataSource | None] = MEMORIES_BY_KEY
    #: The JSONB column of :attr:`source` to reshape.
    column: ClassVar[str] = "metadata"
    #: The shape every memory must have afterwards: a key path (dotted, or a tuple) to a JSON type
    #: (``object``, ``array``, ``string``, ``number``, ``boolean``, ``null``; ``|`` between
    #: alternatives; a trailing ``?`` when the key may be absent). Checked on the server before the
    #: run is recorded as applied.
    expected: ClassVar[Mapping[str | tuple[str, ...], str] | None] = None
    #: Keep the before-images of every changed memory, so rollback is exact whatever the data held.
    #: Needed for an operation that cannot be inverted (a ``convert`` table that is not one to one),
    #: and it lets a run go on where an operation's condition does not hold on the data.
    keep_before_images: ClassVar[bool] = False

    @abc.abstractmethod
    def operations(self) -> Sequence[Operation]:
        """The operations, in the order they apply to each memory."""

    def checked_operations(self) -> tuple[Operation, ...]:
        """:meth:`operations`, checked: MigrationValidationError for a list that could not run right."""
        cached: tuple[Operation, ...] | None = self.__dict__.get("_checked_operations")
        if cached is not None:
            return cached
        meta = self.metadata
        where = f"structure migration {meta.id!r}"
        try:
            declared = self.operations()
        except MigrationValidationError as exc:
            raise MigrationValidationError(f"{where}: {exc}", migration_id=meta.id) from exc
        if not isinstance(declared, list | tuple):
            raise MigrationValidationError(
                f"{where}: operations() must return a list of brainmigrate.structure operations, "
                f"got {type(declared).__name__}",
                migration_id=meta.id,
            )
        operations = tuple(declared)
        check_operations(operations, meta.id)
        if not self.keep_before_images:
            refused = irreversible(operations)
            if refused:
                raise MigrationValidationError(
                    f"{where}: {', '.join(str(op) for op in refused)} cannot be inverted (a convert "
                    "table that maps two values to one), so a rollback could not restore the old "
                    "values. Make the table one to one, or set keep_before_images = True on the "
                    "migration to keep the old value of every changed memory",
                    migration_id=meta.id,
                )
        if not isinstance(self.column, str) or not self.column:
            raise MigrationValidationError(
                f"{where}: column must be the name of a JSONB column, got {self.column!r}",
                migration_id=meta.id,
            )
        self.__dict__["_checked_operations"] = operations
        return operations

    @property
    def keeps_images(self) -> bool:
        """Whether a run keeps before-images: declared, needed by a lossy operation, or because the
        source has a filter (which may stop matching the memories once they are reshaped, while
        the inverted operations would run over the whole table)."""
        filtered = self.source is not None and self.source.where is not None
        return self.keep_before_images or filtered or needs_images(self.checked_operations())

    def _check_definition(self) -> None:
        super()._check_definition()
        self.checked_operations()

    async def checksum_material(self) -> str:
        """The source, the column, the operations and the expected shape."""
        expected = {str(path): kind for path, kind in (self.expected or {}).items()}
        return "\n".join(
            [
                repr(type(self).source),
                self.column,
                *(str(op) for op in self.checked_operations()),
                json.dumps(expected, sort_keys=True),
            ]
        )
