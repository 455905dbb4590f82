"""Regular expressions that come from jobs (constraint `regex` values), compiled with RE2.

A job spec is untrusted input and the leader matches its patterns against every candidate
node in each reconcile: Python's backtracking `re` can take exponential time on patterns
such as `(.*)(.*)...X`, which stalls scheduling for every job. RE2 matches in time linear
in the input and refuses what needs backtracking (backreferences, lookaround). The parser
and the placement core both compile through here, so what validates is what runs.
"""

from __future__ import annotations

import re2

MAX_PATTERN = 256  # characters; node attributes are short, a longer pattern is a mistake
_OPTIONS = re2.Options()
_OPTIONS.max_mem = 1 << 20  # bytes RE2 may use for one compiled pattern
_OPTIONS.log_errors = False  # errors come back as exceptions, not lines on stderr


def compile_pattern(text: str) -> re2._Regexp:
    """The compiled pattern (use `.search`), or ValueError saying what to change."""
    if len(text) > MAX_PATTERN:
        raise ValueError(f"the regular expression is {len(text)} characters long; at most "
                         f"{MAX_PATTERN} are allowed")
    try:
        return re2.compile(text, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a valid regular expression for RE2 ({reason}); RE2 matches in "
                         "linear time and has no backreferences or lookaround") from None
