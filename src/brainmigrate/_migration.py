"""The base classes users subclass to write migrations."""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
from typing import ClassVar

from ._errors import MigrationValidationError
from ._metadata import MigrationMetadata
from ._types import Connection, Pool


class Migration(abc.ABC):
    """One change to a database, identified by the metadata its ``_get_metadata()`` returns.

    Subclass :class:`DatabaseSchemaMigration` for SQL statements. Subclass this class directly for a
    change written in Python: override :meth:`up` (and :meth:`down` when ``reversible``); both run
    inside the migration's transaction on the connection they are given.
    """

    #: Whether the migration runs inside one transaction. Set to False for statements PostgreSQL
    #: refuses inside a transaction, such as ``CREATE INDEX CONCURRENTLY``.
    transactional: ClassVar[bool] = True

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool
        self._metadata: MigrationMetadata | None = None

    @abc.abstractmethod
    def _get_metadata(self) -> MigrationMetadata:
        """Describe this migration: its id, version, type, dependencies and reversibility."""

    @property
    def metadata(self) -> MigrationMetadata:
        """The validated metadata, read once from ``_get_metadata()``."""
        if self._metadata is None:
            where = f"{type(self).__module__}.{type(self).__qualname__}"
            try:
                metadata = self._get_metadata()
            except (TypeError, ValueError) as exc:
                raise MigrationValidationError(f"{where}._get_metadata() failed: {exc}") from exc
            if not isinstance(metadata, MigrationMetadata):
                raise MigrationValidationError(
                    f"{where}._get_metadata() must return MigrationMetadata, got {type(metadata).__name__}"
                )
            self._metadata = metadata
        return self._metadata

    @property
    def id(self) -> str:
        """The migration's id."""
        return self.metadata.id

    async def validate_preconditions(self, conn: Connection) -> bool:
        """Gate before executing: return False (or raise) to refuse the migration."""
        return True

    async def validate_postconditions(self, conn: Connection) -> bool:
        """Gate before committing, inside the migration's transaction: False (or raising) undoes it."""
        return True

    async def up(self, conn: Connection) -> None:
        """Apply the change (Python migrations override this)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement up()")

    async def down(self, conn: Connection) -> None:
        """Reverse the change (Python migrations override this when reversible)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement down()")

    async def checksum_material(self) -> str:
        """The content whose change counts as drift. By default, the source code of :meth:`up`."""
        try:
            return inspect.getsource(type(self).up)
        except (OSError, TypeError):
            return f"{type(self).__module__}.{type(self).__qualname__}"

    async def checksum(self) -> str:
        """A SHA-256 of what the migration does to the database.

        Only the forward change counts: editing metadata such as ``created_at``, the declared
        checksum or the rollback does not make an applied migration drift.
        """
        meta = self.metadata
        digest = hashlib.sha256(f"{meta.id}\0{meta.migration_type.value}\0".encode())
        digest.update((await self.checksum_material()).encode())
        return digest.hexdigest()


def _normalise(statement: str) -> str:
    """Indentation and blank lines do not change what a statement does."""
    return "\n".join(line.strip() for line in statement.strip().splitlines() if line.strip())


class DatabaseSchemaMigration(Migration):
    """A migration made of SQL statements (DDL), run in order in its own transaction."""

    @abc.abstractmethod
    async def get_forward_statements(self) -> list[str]:
        """The statements that apply the change, in order."""

    async def get_rollback_statements(self) -> list[str]:
        """The statements that reverse the change, in order (needed when ``reversible``)."""
        return []

    async def checksum_material(self) -> str:
        return json.dumps([_normalise(s) for s in await self.get_forward_statements()])
