"""Change tracking for the write-ahead log: which (table, key) pairs a write touched.

The store's tables are `TrackedDict`s. Their records are replaced, never mutated in place (see
kv.py), so knowing the keys that were set or removed is enough to log a write as the new value
of each touched key (or its removal). A key marked by a write that was then rolled back (a
failed transaction) is logged with its unchanged value: harmless.
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


_MISSING = object()


class TrackedDict(dict):
    """A dict that marks every key it sets or removes in a journal under its table name, and
    can roll back to a savepoint (a failed transaction undoes only the keys it touched)."""

    __slots__ = ("journal", "table", "undo")

    def __init__(self, journal: Journal, table: str, data=()):
        super().__init__(data)
        self.journal = journal
        self.table = table
        self.undo: dict | None = None

    # --- savepoints ----------------------------------------------------------------------
    def savepoint(self) -> None:
        self.undo = {}

    def release(self) -> None:
        self.undo = None

    def rollback(self) -> None:
        for key, old in (self.undo or {}).items():
            if old is _MISSING:
                super().pop(key, None)
            else:
                super().__setitem__(key, old)
        self.undo = None

    def _changing(self, key) -> None:
        self.journal.mark(self.table, key)
        if self.undo is not None and key not in self.undo:
            self.undo[key] = super().get(key, _MISSING)

    # --- every mutation goes through _changing ---------------------------------------------
    def __setitem__(self, key, value) -> None:
        self._changing(key)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        if key in self:
            self._changing(key)
        super().__delitem__(key)

    def pop(self, key, *default):
        if key in self:
            self._changing(key)
        return super().pop(key, *default)

    def popitem(self):
        key, value = super().popitem()
        self.journal.mark(self.table, key)
        if self.undo is not None:
            self.undo.setdefault(key, value)
        return key, value

    def setdefault(self, key, default=None):
        if key not in self:
            self._changing(key)
        return super().setdefault(key, default)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        for key in list(self):
            self._changing(key)
        super().clear()

    def __ior__(self, other):
        self.update(other)
        return self

