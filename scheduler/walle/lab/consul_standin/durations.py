"""Go-style durations ("1m30s", "500ms", "15s") as Consul reads and writes them."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | int | float | None, field: str = "duration") -> float:
    """Seconds in a Go duration string; a bare number is taken as nanoseconds like Go's JSON."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, int | float):
        return float(text) / 1e9
    s = str(text).strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f'{field}: invalid duration "{s}" (use Go syntax such as "10s", "1m30s")')
    return total


def format_duration(seconds: float) -> str:
    """Compact Go-like rendering: 10s, 1m30s, 500ms."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    return out + f"{s}s"
