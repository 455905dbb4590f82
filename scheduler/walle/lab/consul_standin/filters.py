"""A small subset of Consul's ?filter= language (api-docs/features/filtering.mdx).

Supported: clauses joined by `and`, each one of `Sel == "v"`, `Sel != "v"`, `Sel contains "v"`,
`Sel not contains "v"`, `"v" in Sel`, `"v" not in Sel`, `Sel is empty`, `Sel is not empty`,
where Sel is a dotted path such as `Service.Tags` or `Node.Meta.zone`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import bad_request

_VALUE = r'"((?:[^"\\]|\\.)*)"|`([^`]*)`'
_CLAUSES = [
    (re.compile(rf"^([\w.\-]+)\s*(==|!=)\s*(?:{_VALUE})$"), "cmp"),
    (re.compile(rf"^([\w.\-]+)\s+(not contains|contains)\s+(?:{_VALUE})$"), "contains"),
    (re.compile(rf"^(?:{_VALUE})\s+(not in|in)\s+([\w.\-]+)$"), "in"),
    (re.compile(r"^([\w.\-]+)\s+is\s+(not empty|empty)$"), "empty"),
]


def _lookup(obj: object, path: str) -> object:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _clause(text: str) -> Callable[[dict], bool]:
    for pattern, kind in _CLAUSES:
        m = pattern.match(text.strip())
        if not m:
            continue
        if kind == "cmp":
            sel, op, value = m.group(1), m.group(2), m.group(3) or m.group(4) or ""
            return lambda o: (str(_lookup(o, sel) or "") == value) == (op == "==")
        if kind == "contains":
            sel, op, value = m.group(1), m.group(2), m.group(3) or m.group(4) or ""
            return lambda o: (value in (_lookup(o, sel) or ())) == (op == "contains")
        if kind == "in":
            value, op, sel = m.group(1) or m.group(2) or "", m.group(3), m.group(4)
            return lambda o: (value in (_lookup(o, sel) or ())) == (op == "in")
        sel, op = m.group(1), m.group(2)
        return lambda o: (not _lookup(o, sel)) == (op == "empty")
    raise bad_request(f'filter: unsupported expression "{text}" (the stand-in supports ==, !=, '
                      '[not] contains, [not] in, is [not] empty, joined by "and")')


def compile_filter(expr: str) -> Callable[[dict], bool]:
    clauses = [_clause(part) for part in re.split(r"\s+and\s+", expr.strip()) if part]
    return lambda obj: all(c(obj) for c in clauses)
