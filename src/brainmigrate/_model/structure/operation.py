"""What every operation is: the :class:`Operation` base class, its :class:`Invertibility`, and the
inverse of a list of operations."""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable

import attrs

from .paths import Path


class Invertibility(enum.StrEnum):
    """How far an operation's inverse restores the memories it changed."""

    #: The inverse restores every memory exactly.
    INVERTIBLE = "invertible"
    #: The inverse restores every memory exactly if a condition holds on the data (``condition``).
    CONDITIONAL = "conditional"
    #: It drops data: before-images are kept automatically, so a rollback is still exact.
    LOSSY = "lossy"
    #: It cannot be inverted at all (such as a ``convert`` table that is not a bijection): refused
    #: unless the migration opts into keeping before-images.
    IRREVERSIBLE = "irreversible"


_RANK = {
    Invertibility.INVERTIBLE: 0,
    Invertibility.CONDITIONAL: 1,
    Invertibility.LOSSY: 2,
    Invertibility.IRREVERSIBLE: 3,
}


@attrs.frozen(repr=False)
class Operation(abc.ABC):
    """One step of a structure migration: a value, printed as the call that builds it."""

    @abc.abstractmethod
    def inverse(self) -> Operation:
        """The operation that undoes this one (exactly, within the limits of ``invertibility``)."""

    @property
    @abc.abstractmethod
    def invertibility(self) -> Invertibility:
        """How far :meth:`inverse` can be trusted."""

    @property
    @abc.abstractmethod
    def paths(self) -> tuple[Path, ...]:
        """The paths it reads or writes."""

    @property
    def condition(self) -> str | None:
        """For a CONDITIONAL operation, what must hold on the data for the inverse to be exact."""
        return self.condition_at(())

    def condition_at(self, root: Path) -> str | None:
        """``condition`` for this operation applied inside the object at ``root``."""
        return None

    @abc.abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return str(self)


def inverse_of(operations: Iterable[Operation]) -> tuple[Operation, ...]:
    """The inverses of ``operations``, last first: the list that undoes them."""
    return tuple(op.inverse() for op in reversed(list(operations)))
