"""The command's exit codes (``main``'s docstring says when each is returned)."""

OK = 0
FAILED = 1
USAGE = 2
UNAVAILABLE = 3
NOT_READY = 4
INTERRUPTED = 130
