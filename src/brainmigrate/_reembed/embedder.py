"""Calling a re-embedding's ``embed``: one vector per text, of the model's dimensions, finite.

A model that answers otherwise is refused before anything of the batch is written, with a message
that names what was wrong: a column of mixed or broken vectors is the failure this prevents.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import repeat
from typing import Any

from .._errors import MigrationValidationError

Embed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]


def text_md5(text: str) -> uuid.UUID:
    """The MD5 of ``text`` as PostgreSQL's ``md5(text)::uuid`` computes it (UTF-8)."""
    return uuid.UUID(bytes=hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest())


def _refused(migration_id: str, text: str) -> MigrationValidationError:
    return MigrationValidationError(
        f"re-embedding {migration_id!r}: embed() {text}; nothing of this batch was written. Fix the "
        "model call (or the model declared), then run again",
        migration_id=migration_id,
    )


async def embed_checked(
    embed: Embed, texts: list[str], dimensions: int, migration_id: str
) -> list[list[float]]:
    """``embed(texts)``, checked: one list of ``dimensions`` finite floats per text, in order."""
    vectors: Any = await embed(texts)
    if not isinstance(vectors, Sequence) or isinstance(vectors, str | bytes):
        raise _refused(migration_id, f"returned {type(vectors).__name__}, not a list of vectors")
    if len(vectors) != len(texts):
        raise _refused(
            migration_id,
            f"returned {len(vectors)} vectors for {len(texts)} texts; it must return one vector per "
            "text, in the order of the texts",
        )
    checked: list[list[float]] = []
    for position, vector in enumerate(vectors):
        # A text ("0.1,0.2") or bytes would iterate into "numbers" too: only real numbers count.
        if isinstance(vector, str | bytes) or not isinstance(vector, Iterable):
            raise _refused(
                migration_id,
                f"returned a vector that is not a list of numbers at position {position} "
                f"({type(vector).__name__})",
            )
        items = list(vector)
        if len(items) == dimensions and all(map(isinstance, items, repeat(float))):
            # Floats, as most models return: the checks below, made in C (a sum is finite unless
            # an element is not, or the sum overflows: then each is looked at).
            values = items
            if not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
                raise _refused(
                    migration_id, f"returned a vector holding NaN or infinity at position {position}"
                )
            checked.append(values)
            continue
        wrong = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if wrong:
            raise _refused(
                migration_id,
                f"returned a vector that is not a list of numbers at position {position} "
                f"(it holds {wrong[0]!r})",
            )
        values = [float(value) for value in items]
        if len(values) != dimensions:
            raise _refused(
                migration_id,
                f"returned a vector of {len(values)} dimensions at position {position}; the model "
                f"declared has {dimensions}",
            )
        if not all(math.isfinite(value) for value in values):
            raise _refused(migration_id, f"returned a vector holding NaN or infinity at position {position}")
        checked.append(values)
    return checked
