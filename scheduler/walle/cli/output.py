"""Output helpers shared by the CLI commands: aligned tables for people."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def print_table(rows: Iterable[Mapping], columns: Sequence[str], file=None) -> None:
    file = file or sys.stdout  # looked up per call: a default bound at import goes stale
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
          file=file)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=file)


def printable(text: str) -> str:
    """Text from Consul (keys, reasons, messages) on one line, control characters shown
    escaped, never sent to the terminal."""
    one_line = " ".join(text.split())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in one_line)
