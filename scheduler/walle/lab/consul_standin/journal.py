"""Change tracking for the write-ahead log: which (table, key) pairs a write touched.

The store's tables are `TrackedDict`s. Their records are replaced, never mutated in place (see
kv.py), so knowing the keys that were set or removed is enough to log a write as the new value
of each touched key (or its removal). A key marked by a write that was then rolled back (a
failed transaction) is logged with its unchanged value: harmless.
"""

from __future__ import annotations

import bisect
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



class SortedTrackedDict(TrackedDict):
    """A TrackedDict that also keeps its keys sorted (`sorted_keys`), so that a prefix read
    costs the keys under the prefix (a bisect), not a sort of the whole table, like the
    radix tree of Consul's state store. Inserting or removing a key is a bisect plus a list
    move; replacing a value (the common write) costs nothing extra."""

    __slots__ = ("sorted_keys",)

    def __init__(self, journal: Journal, table: str, data=()):
        super().__init__(journal, table, data)
        self.sorted_keys: list = sorted(dict.keys(self))

    def _insert_key(self, key) -> None:
        at = bisect.bisect_left(self.sorted_keys, key)
        if at == len(self.sorted_keys) or self.sorted_keys[at] != key:
            self.sorted_keys.insert(at, key)

    def _remove_key(self, key) -> None:
        at = bisect.bisect_left(self.sorted_keys, key)
        if at < len(self.sorted_keys) and self.sorted_keys[at] == key:
            del self.sorted_keys[at]

    def keys_from(self, prefix: str):
        """The keys starting with `prefix`, in order."""
        keys = self.sorted_keys
        for at in range(bisect.bisect_left(keys, prefix), len(keys)):
            if not keys[at].startswith(prefix):
                return
            yield keys[at]

    def __setitem__(self, key, value) -> None:
        if key not in self:
            self._insert_key(key)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        if key in self:
            self._remove_key(key)
        super().__delitem__(key)

    def pop(self, key, *default):
        if key in self:
            self._remove_key(key)
        return super().pop(key, *default)

    def popitem(self):
        key, value = super().popitem()
        self._remove_key(key)
        return key, value

    def setdefault(self, key, default=None):
        if key not in self:
            self._insert_key(key)
        return super().setdefault(key, default)

    def clear(self) -> None:
        super().clear()
        self.sorted_keys = []

    def rollback(self) -> None:
        undone = list(self.undo or ())
        super().rollback()
        for key in undone:  # put the key list back as the rollback left the dict
            if key in self:
                self._insert_key(key)
            else:
                self._remove_key(key)
