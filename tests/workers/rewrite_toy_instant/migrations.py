"""The rewrite of ``rewrite_toy`` with an instant swap back, for the fault tests of that mode.

The same migration (id, transform, checksum) with ``rewrite_swap_back = "instant"``: from the swap
on, statement triggers write each statement on the rewritten table to the original as well.
"""

from __future__ import annotations

from typing import Any, ClassVar

from workers.rewrite_toy.migrations import LabelSentiment


class LabelSentimentSwappingBackInstantly(LabelSentiment):
    rewrite_swap_back: ClassVar[Any] = "instant"
