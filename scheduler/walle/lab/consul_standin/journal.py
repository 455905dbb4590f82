"""Change tracking for the write-ahead log: which (table, key) pairs a write touched.

The store's tables are `TrackedDict`s. Their records are replaced, never mutated in place (see
kv.py), so knowing the keys that were set or removed is enough to log a write as the new value
of each touched key (or its removal). A key marked by a write that was then rolled back (a
failed transaction works on a clone) is logged with its unchanged value: harmless.
"""

from __future__ import annotations

from collections.abc import Hashable

# Tables whose keys are (node, id) tuples; JSON turns them into lists.
TUPLE_KEYED = frozenset({"services", "checks", "check_defs", "critical_since"})


class Journal:
    """The (table, key) pairs changed since the last commit, in first-change order."""

    def __init__(self) -> None:
        self.changed: dict[tuple[str, Hashable], None] = {}

    def mark(self, table: str, key: Hashable) -> None:
        self.changed[(table, key)] = None

    def take(self) -> list[tuple[str, Hashable]]:
        out, self.changed = list(self.changed), {}
        return out


class TrackedDict(dict):
    """A dict that marks every key it sets or removes in a journal under its table name."""

    __slots__ = ("journal", "table")

    def __init__(self, journal: Journal, table: str, data=()):
        super().__init__(data)
        self.journal = journal
        self.table = table

    def clone(self) -> TrackedDict:
        return TrackedDict(self.journal, self.table, self)

    def __setitem__(self, key, value) -> None:
        self.journal.mark(self.table, key)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.journal.mark(self.table, key)

    def pop(self, key, *default):
        if key in self:
            self.journal.mark(self.table, key)
        return super().pop(key, *default)

    def popitem(self):
        key, value = super().popitem()
        self.journal.mark(self.table, key)
        return key, value

    def setdefault(self, key, default=None):
        if key not in self:
            self.journal.mark(self.table, key)
        return super().setdefault(key, default)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        for key in self:
            self.journal.mark(self.table, key)
        super().clear()

    def __ior__(self, other):
        self.update(other)
        return self


def copy_table(table: dict) -> dict:
    """A copy that keeps tracking (transactions work on copies of the KV tables)."""
    return table.clone() if isinstance(table, TrackedDict) else dict(table)
