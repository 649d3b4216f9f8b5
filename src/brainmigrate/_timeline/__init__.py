"""The visual migration timeline: its data (`timeline_snapshot`) and its page (`timeline_page`)."""

from .page import timeline_page
from .snapshot import timeline_snapshot

__all__ = ["timeline_page", "timeline_snapshot"]
