"""What the catalog says about a table to be rewritten: everything a faithful copy of it needs
(columns, indexes, constraints, sequences, grants, comments, options), and everything that would
make rewriting it unsafe (:mod:`..refusals` says why). ``table`` holds the table's definition and
its reading, with the queries of ``sql``; ``objects`` what the table holds and what refers to it.

Expressions and definitions are read with an empty search path, so that every name in them is
schema-qualified and they mean the same on any connection.
"""

from .objects import ColumnDefinition, IndexDefinition, SequenceDefinition
from .table import TableDefinition, read_definition

__all__ = ["ColumnDefinition", "IndexDefinition", "SequenceDefinition", "TableDefinition", "read_definition"]
