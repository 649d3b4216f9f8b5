"""The memory this process uses, for progress reports and metrics, with no dependency.

On Linux it is the current resident set size, from ``/proc/self/statm``. Elsewhere it falls back to
``resource.getrusage``, which gives the peak resident set size since the process started (never
less than the current one); where neither exists (Windows) it is unknown.
"""

from __future__ import annotations

import os
import sys

_STATM = "/proc/self/statm"
_STATUS = "/proc/self/status"


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 4096


_PAGE_SIZE = _page_size()


def rss_bytes() -> int | None:
    """Bytes of memory this process holds in RAM: current on Linux, the peak elsewhere; None if unknown."""
    try:
        with open(_STATM, "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int | None:
    """The most bytes this process has held in RAM since it started; None where that is unknown.

    On Linux it is ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` there is
    carried over from the process that forked this one, so a small process started by a big
    one would report the big one's peak.
    """
    try:
        with open(_STATUS, "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, IndexError, ValueError):
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kibibytes on Linux and the BSDs, in bytes on macOS.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
